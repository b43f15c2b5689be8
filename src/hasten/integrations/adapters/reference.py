"""Flux pipelines that read an image through the transformer's input: Kontext and Fill.

* **Kontext** appends the reference image's latent tokens after the noisy
  latents' tokens (with their own position ids) and keeps the output of the
  latents' tokens only; sampling is text-to-image otherwise.
* **Fill** concatenates the masked image latents and the packed mask to the
  latents' channels; it starts from its image noised to ``strength`` (1 by
  default: pure noise), as image-to-image does.

Both are conditioning, in the denoiser (:func:`~hasten.integrations.adapters.flow.flux_call`),
the same for every evaluation, so every method sees them alike.
"""

from __future__ import annotations

import torch

from hasten.errors import HastenError
from hasten.integrations.adapters.base import Prepared, _batch_size
from hasten.integrations.adapters.flow import FluxAdapter
from hasten.integrations.adapters.image import start_from_image


class FluxKontextAdapter(FluxAdapter):
    """``FluxKontextPipeline``: text-to-image with the reference image's tokens beside the latents'."""

    def prepare(self, image=None, prompt=None, prompt_2=None, negative_prompt=None, negative_prompt_2=None,
                true_cfg_scale: float = 1.0, height=None, width=None, num_inference_steps: int = 28,
                guidance_scale: float = 3.5, num_images_per_prompt: int = 1, generator=None, latents=None,
                prompt_embeds=None, pooled_prompt_embeds=None, negative_prompt_embeds=None,
                negative_pooled_prompt_embeds=None, output_type: str = "pil", return_dict: bool = True,
                max_sequence_length: int = 512, max_area: int = 1024**2, _auto_resize: bool = True,
                **extra) -> Prepared:
        pipe = self.pipe
        height, width = self._at_area(*self._size(extra, height, width), max_area)
        pipe.check_inputs(prompt, prompt_2, height, width, negative_prompt=negative_prompt,
                          negative_prompt_2=negative_prompt_2, prompt_embeds=prompt_embeds,
                          negative_prompt_embeds=negative_prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
                          negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                          max_sequence_length=max_sequence_length)
        if (prompt_embeds is not None and negative_prompt_embeds is not None
                and prompt_embeds.shape != negative_prompt_embeds.shape):
            raise HastenError(f"FluxKontextPipeline: prompt_embeds {tuple(prompt_embeds.shape)} and "
                              f"negative_prompt_embeds {tuple(negative_prompt_embeds.shape)} must have the same shape")
        pipe._current_timestep = None
        cond, uncond, text_ids, plan, n = self._start(
            prompt, prompt_2, negative_prompt, negative_prompt_2, true_cfg_scale, height, width, num_inference_steps,
            guidance_scale, num_images_per_prompt, prompt_embeds, pooled_prompt_embeds, negative_prompt_embeds,
            negative_pooled_prompt_embeds, max_sequence_length)
        device = pipe._execution_device
        image = self._reference(image, _auto_resize)
        x, reference, ids, reference_ids = pipe.prepare_latents(image, n, pipe.transformer.config.in_channels // 4,
                                                                height, width, cond["text"].dtype, device,
                                                                generator, latents)
        if reference is not None:
            ids = torch.cat([ids, reference_ids], dim=0)  # dim 0 is the token dimension
            for conditioning in (cond, uncond) if uncond is not None else (cond,):
                conditioning["reference"] = reference
        denoiser = self._denoiser(plan, cond, uncond, true_cfg_scale if uncond is not None else 1.0, guidance_scale,
                                  text_ids, ids, device)
        return Prepared.from_plan(plan, denoiser, x.float(), plan.draw_noise(x.shape, generator, device, x.dtype),
                                  self.decoder(output_type, return_dict, height=height, width=width))

    def _at_area(self, height: int, width: int, max_area: int) -> tuple[int, int]:
        """The output size Kontext samples: the requested aspect ratio at ``max_area`` pixels, on its latent grid."""
        pipe = self.pipe
        aspect, multiple = width / height, pipe.vae_scale_factor * 2
        width, height = round((max_area * aspect) ** 0.5), round((max_area / aspect) ** 0.5)
        return height // multiple * multiple, width // multiple * multiple

    def _reference(self, image, auto_resize: bool):
        """The reference image as the pipeline preprocesses it (a preferred resolution unless ``_auto_resize=False``)."""
        from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

        pipe = self.pipe
        if image is None or (isinstance(image, torch.Tensor) and image.size(1) == pipe.latent_channels):
            return image
        processor, multiple = pipe.image_processor, pipe.vae_scale_factor * 2
        height, width = processor.get_default_height_width(image[0] if isinstance(image, list) else image)
        if auto_resize:
            aspect = width / height
            _, width, height = min((abs(aspect - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
        height, width = height // multiple * multiple, width // multiple * multiple
        return processor.preprocess(processor.resize(image, height, width), height, width)


class FluxFillAdapter(FluxAdapter):
    """``FluxFillPipeline``: masked image latents and the mask as extra transformer channels."""

    def prepare(self, prompt=None, prompt_2=None, image=None, mask_image=None, masked_image_latents=None,
                height=None, width=None, strength: float = 1.0, num_inference_steps: int = 50,
                guidance_scale: float = 30.0, num_images_per_prompt: int = 1, generator=None, latents=None,
                prompt_embeds=None, pooled_prompt_embeds=None, output_type: str = "pil", return_dict: bool = True,
                max_sequence_length: int = 512, **extra) -> Prepared:
        pipe = self.pipe
        height, width = self._size(extra, height, width)
        pipe.check_inputs(prompt, prompt_2, strength, height, width, prompt_embeds=prompt_embeds,
                          pooled_prompt_embeds=pooled_prompt_embeds, max_sequence_length=max_sequence_length,
                          image=image, mask_image=mask_image, masked_image_latents=masked_image_latents)
        init_image = pipe.image_processor.preprocess(image, height=height, width=width).to(torch.float32)
        cond, _, text_ids, plan, n = self._start(
            prompt, prompt_2, None, None, 1.0, height, width, num_inference_steps, guidance_scale,
            num_images_per_prompt, prompt_embeds, pooled_prompt_embeds, None, None, max_sequence_length)
        device, dtype = pipe._execution_device, cond["text"].dtype
        channels = pipe.vae.config.latent_channels
        (x, image_ids), plan = start_from_image(
            pipe, plan, num_inference_steps, strength, device,
            lambda view, t: view.prepare_latents(init_image, t.repeat(n), n, channels, height, width, dtype, device,
                                                 generator, latents))
        if masked_image_latents is not None:
            masked = masked_image_latents.to(x.device)
        else:
            mask = pipe.mask_processor.preprocess(mask_image, height=height, width=width)
            masked_image = (init_image * (1 - mask)).to(device=device, dtype=dtype)
            height, width = init_image.shape[-2:]
            mask, masked = pipe.prepare_mask_latents(mask, masked_image, _batch_size(prompt, prompt_embeds), channels,
                                                     num_images_per_prompt, height, width, dtype, device, generator)
            masked = torch.cat((masked, mask), dim=-1)
        cond["masked"] = masked
        denoiser = self._denoiser(plan, cond, None, 1.0, guidance_scale, text_ids, image_ids, device)
        return Prepared.from_plan(plan, denoiser, x.float(), plan.draw_noise(x.shape, generator, device, x.dtype),
                                  self.decoder(output_type, return_dict, height=height, width=width))
