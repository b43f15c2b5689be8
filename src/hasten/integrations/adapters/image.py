"""Image-to-image and inpainting: Stable Diffusion, SDXL and Flux.

These pipelines start mid-grid: ``get_timesteps(steps, strength)`` keeps
``timesteps[t_start:]`` and ``prepare_latents`` noises the encoded image to
the first of them. :func:`start_from_image` runs exactly those two pipeline
helpers and returns the plan of the steps actually run
(:meth:`~hasten.integrations.schedulers.SchedulerPlan.starting_at`), so every
method, cache and CHORDS initialisation sees the grid it really walks.

Inpainting, two ways, as the pipelines do it:

* a 9-channel UNet (the inpainting checkpoints) takes the mask and the masked
  image latents as extra input channels: conditioning, in the denoiser
  (:func:`~hasten.integrations.adapters.unet.unet_call`);
* a 4-channel UNet, and Flux's inpaint pipeline, paste the known region back
  after every step: that blend is part of hasten's step
  (:class:`~hasten.inpaint.KnownRegionStep`), a pure function of the step's
  result and its grid index, so every method applies it identically.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch

from hasten.errors import HastenError
from hasten.inpaint import KnownRegion
from hasten.integrations.adapters.base import Prepared, _batch_size, _refuse_unknown
from hasten.integrations.adapters.flow import FluxAdapter
from hasten.integrations.adapters.unet import (SDXLAdapter, StableDiffusionAdapter, _refuse_guidance_embedding,
                                               unet_denoiser)
from hasten.integrations.schedulers import SchedulerPlan, plan_scheduler


def with_scheduler(pipe, scheduler):
    """``pipe`` itself, or a shallow view of it holding ``scheduler`` (a first-order counterpart).

    With a counterpart, the pipeline's own helpers (``get_timesteps``,
    ``prepare_latents``' ``add_noise``) must read the counterpart's timesteps:
    the run is then the pipeline run with that counterpart, as the notice
    says. The view shares every other component; ``pipe`` is not changed.
    """
    if scheduler is pipe.scheduler:
        return pipe
    view = copy.copy(pipe)
    object.__setattr__(view, "scheduler", scheduler)  # bypasses the pipeline's config registration
    return view


def start_from_image(pipe, plan: SchedulerPlan, steps: int, strength: float, device,
                     prepare: Callable[[Any, torch.Tensor], Any]) -> tuple[Any, SchedulerPlan]:
    """The pipeline's start from its image, and the plan of the steps it runs from there.

    ``prepare(view, first_timestep)`` calls the pipeline's ``prepare_latents``
    (on ``view``, see :func:`with_scheduler`) and returns its result.
    """
    view = with_scheduler(pipe, plan.scheduler)
    timesteps, run = view.get_timesteps(steps, strength, device)
    if run < 1:
        raise HastenError(f"strength={strength} with num_inference_steps={steps} leaves no step to run; raise "
                          "strength or num_inference_steps")
    start = len(plan.scheduler.timesteps) - len(timesteps)
    return prepare(view, timesteps[:1]), plan.starting_at(start)


def _refuse_asymmetric_vae(pipe) -> None:
    if type(pipe.vae).__name__ == "AsymmetricAutoencoderKL":
        raise HastenError(f"{type(pipe).__name__} with AsymmetricAutoencoderKL is not supported (its decoder takes "
                          "the mask and image); supported: AutoencoderKL")


def _unet_inpaint_channels(pipe) -> int:
    channels = pipe.unet.config.in_channels
    if channels not in (4, 9):
        raise HastenError(f"{type(pipe).__name__}: the UNet takes {channels} input channels; supported: 4 (the known "
                          "region is blended back after every step) or 9 (mask and masked image as input)")
    return channels


class StableDiffusionImg2ImgAdapter(StableDiffusionAdapter):
    """``StableDiffusionImg2ImgPipeline``: the image noised to ``strength``, then the steps from there."""

    def prepare(self, prompt=None, image=None, strength: float = 0.8, num_inference_steps: int = 50,
                guidance_scale: float = 7.5, negative_prompt=None, num_images_per_prompt: int = 1, generator=None,
                prompt_embeds=None, negative_prompt_embeds=None, output_type: str = "pil", return_dict: bool = True,
                clip_skip=None, **extra) -> Prepared:
        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        pipe.check_inputs(prompt, strength, None, negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
                          negative_prompt_embeds=negative_prompt_embeds)
        pipe._guidance_scale, pipe._clip_skip, pipe._cross_attention_kwargs, pipe._interrupt = (
            guidance_scale, clip_skip, None, False)
        _refuse_guidance_embedding(pipe.unet)
        device = pipe._execution_device
        cond, uncond = self._encode_text(prompt, negative_prompt, num_images_per_prompt, guidance_scale, prompt_embeds,
                                         negative_prompt_embeds, clip_skip)
        image = pipe.image_processor.preprocess(image)
        plan = plan_scheduler(pipe.scheduler, num_inference_steps, device)
        prompts, dtype = _batch_size(prompt, prompt_embeds), cond["text"].dtype
        x, plan = start_from_image(
            pipe, plan, num_inference_steps, strength, device,
            lambda view, t: view.prepare_latents(image, t.repeat(prompts * num_images_per_prompt), prompts,
                                                 num_images_per_prompt, dtype, device, generator))
        denoiser = unet_denoiser(pipe.unet, plan.grid, cond, uncond, guidance_scale, device=device)
        return Prepared.from_plan(plan, denoiser, x.float(),
                                  plan.draw_noise(x.shape, generator, device, pipe.unet.dtype),
                                  self.decoder(output_type, return_dict))


class StableDiffusionInpaintAdapter(StableDiffusionAdapter):
    """``StableDiffusionInpaintPipeline``, with a 9-channel (inpainting) or a 4-channel UNet."""

    def prepare(self, prompt=None, image=None, mask_image=None, masked_image_latents=None, height=None, width=None,
                strength: float = 1.0, num_inference_steps: int = 50, guidance_scale: float = 7.5,
                negative_prompt=None, num_images_per_prompt: int = 1, generator=None, latents=None,
                prompt_embeds=None, negative_prompt_embeds=None, output_type: str = "pil", return_dict: bool = True,
                clip_skip=None, **extra) -> Prepared:
        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        unet = pipe.unet
        height = height or unet.config.sample_size * pipe.vae_scale_factor
        width = width or unet.config.sample_size * pipe.vae_scale_factor
        pipe.check_inputs(prompt, image, mask_image, height, width, strength, None, output_type, negative_prompt,
                          prompt_embeds, negative_prompt_embeds)
        pipe._guidance_scale, pipe._clip_skip, pipe._cross_attention_kwargs, pipe._interrupt = (
            guidance_scale, clip_skip, None, False)
        _refuse_guidance_embedding(unet)
        _refuse_asymmetric_vae(pipe)
        channels = _unet_inpaint_channels(pipe)
        device = pipe._execution_device
        cond, uncond = self._encode_text(prompt, negative_prompt, num_images_per_prompt, guidance_scale, prompt_embeds,
                                         negative_prompt_embeds, clip_skip)
        plan = plan_scheduler(pipe.scheduler, num_inference_steps, device)
        init_image = pipe.image_processor.preprocess(image, height=height, width=width).to(torch.float32)
        n, dtype = _batch_size(prompt, prompt_embeds) * num_images_per_prompt, cond["text"].dtype
        outputs, plan = start_from_image(
            pipe, plan, num_inference_steps, strength, device,
            lambda view, t: view.prepare_latents(n, pipe.vae.config.latent_channels, height, width, dtype, device,
                                                 generator, latents, image=init_image, timestep=t.repeat(n),
                                                 is_strength_max=strength == 1.0, return_noise=True,
                                                 return_image_latents=channels == 4))
        mask_condition = pipe.mask_processor.preprocess(mask_image, height=height, width=width)
        masked = init_image * (mask_condition < 0.5) if masked_image_latents is None else masked_image_latents
        mask, masked = pipe.prepare_mask_latents(mask_condition, masked, n, height, width, dtype, device, generator,
                                                 False)
        return _inpainting(self, plan, outputs, mask, masked, channels, cond, uncond, guidance_scale, 0.0, generator,
                           device, self.decoder(output_type, return_dict))


def _inpainting(adapter, plan: SchedulerPlan, outputs: tuple, mask: torch.Tensor, masked: torch.Tensor, channels: int,
                cond: dict, uncond: dict | None, guidance_scale: float, guidance_rescale: float, generator, device,
                decode: Callable) -> Prepared:
    """A UNet inpainting run: mask channels for a 9-channel UNet, the known-region step for a 4-channel one."""
    x, noise = outputs[0], outputs[1]
    if channels == 9:
        for conditioning in (cond, uncond) if uncond is not None else (cond,):
            conditioning.update(mask=mask, masked=masked)
    unet = adapter.pipe.unet
    denoiser = unet_denoiser(unet, plan.grid, cond, uncond, guidance_scale, guidance_rescale, device)
    prepared = Prepared.from_plan(plan, denoiser, x.float(), plan.draw_noise(x.shape, generator, device, unet.dtype),
                                  decode)
    if channels == 4:
        prepared.known = KnownRegion(mask.float(), outputs[2].float(), noise.float())
    return prepared


class _SDXLImageInput(SDXLAdapter):
    """What SDXL's image-input pipelines share: their size and aesthetic conditioning, both prompts' time ids."""

    def _conditioning(self, cond: dict, uncond: dict | None, height: int, width: int, n: int, original_size,
                      crops_coords_top_left, target_size, negative_original_size, negative_crops_coords_top_left,
                      negative_target_size, aesthetic_score: float, negative_aesthetic_score: float) -> None:
        """Add ``time_ids`` to ``cond`` and ``uncond`` (the pipelines' ``_get_add_time_ids``, negative ones apart)."""
        pipe = self.pipe
        original_size, target_size = original_size or (height, width), target_size or (height, width)
        pooled = cond["pooled"]
        projection = (int(pooled.shape[-1]) if pipe.text_encoder_2 is None
                      else pipe.text_encoder_2.config.projection_dim)
        ids, neg_ids = pipe._get_add_time_ids(original_size, crops_coords_top_left, target_size, aesthetic_score,
                                              negative_aesthetic_score, negative_original_size or original_size,
                                              negative_crops_coords_top_left, negative_target_size or target_size,
                                              dtype=cond["text"].dtype, text_encoder_projection_dim=projection)
        device = pipe._execution_device
        cond["time_ids"] = ids.to(device).repeat(n, 1)
        if uncond is not None:
            uncond["time_ids"] = neg_ids.to(device).repeat(n, 1)


class SDXLImg2ImgAdapter(_SDXLImageInput):
    """``StableDiffusionXLImg2ImgPipeline`` (also the refiner's aesthetic-score conditioning)."""

    def prepare(self, prompt=None, prompt_2=None, image=None, strength: float = 0.3, num_inference_steps: int = 50,
                guidance_scale: float = 5.0, negative_prompt=None, negative_prompt_2=None,
                num_images_per_prompt: int = 1, generator=None, prompt_embeds=None, negative_prompt_embeds=None,
                pooled_prompt_embeds=None, negative_pooled_prompt_embeds=None, output_type: str = "pil",
                return_dict: bool = True, guidance_rescale: float = 0.0, original_size=None,
                crops_coords_top_left=(0, 0), target_size=None, negative_original_size=None,
                negative_crops_coords_top_left=(0, 0), negative_target_size=None, aesthetic_score: float = 6.0,
                negative_aesthetic_score: float = 2.5, clip_skip=None, **extra) -> Prepared:
        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        pipe.check_inputs(prompt, prompt_2, strength, num_inference_steps, None, negative_prompt=negative_prompt,
                          negative_prompt_2=negative_prompt_2, prompt_embeds=prompt_embeds,
                          negative_prompt_embeds=negative_prompt_embeds)
        pipe._guidance_scale, pipe._guidance_rescale, pipe._clip_skip = guidance_scale, guidance_rescale, clip_skip
        pipe._cross_attention_kwargs, pipe._denoising_end, pipe._denoising_start = None, None, None
        pipe._interrupt = False
        _refuse_guidance_embedding(pipe.unet)
        device = pipe._execution_device
        cond, uncond = self._encode_text(prompt, prompt_2, negative_prompt, negative_prompt_2, num_images_per_prompt,
                                         guidance_scale, prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds,
                                         negative_pooled_prompt_embeds, clip_skip)
        image = pipe.image_processor.preprocess(image)
        plan = plan_scheduler(pipe.scheduler, num_inference_steps, device)
        prompts, dtype = _batch_size(prompt, prompt_embeds), cond["text"].dtype
        x, plan = start_from_image(
            pipe, plan, num_inference_steps, strength, device,
            lambda view, t: view.prepare_latents(image, t.repeat(prompts * num_images_per_prompt), prompts,
                                                 num_images_per_prompt, dtype, device, generator, True))
        height, width = (size * pipe.vae_scale_factor for size in x.shape[-2:])
        self._conditioning(cond, uncond, height, width, x.shape[0], original_size, crops_coords_top_left,
                           target_size, negative_original_size, negative_crops_coords_top_left, negative_target_size,
                           aesthetic_score, negative_aesthetic_score)
        denoiser = unet_denoiser(pipe.unet, plan.grid, cond, uncond, guidance_scale, guidance_rescale, device)
        return Prepared.from_plan(plan, denoiser, x.float(),
                                  plan.draw_noise(x.shape, generator, device, pipe.unet.dtype),
                                  self.decoder(output_type, return_dict))


class SDXLInpaintAdapter(_SDXLImageInput):
    """``StableDiffusionXLInpaintPipeline``, with a 9-channel (inpainting) or a 4-channel UNet."""

    def prepare(self, prompt=None, prompt_2=None, image=None, mask_image=None, masked_image_latents=None,
                height=None, width=None, strength: float = 0.9999, num_inference_steps: int = 50,
                guidance_scale: float = 7.5, negative_prompt=None, negative_prompt_2=None,
                num_images_per_prompt: int = 1, generator=None, latents=None, prompt_embeds=None,
                negative_prompt_embeds=None, pooled_prompt_embeds=None, negative_pooled_prompt_embeds=None,
                output_type: str = "pil", return_dict: bool = True, guidance_rescale: float = 0.0,
                original_size=None, crops_coords_top_left=(0, 0), target_size=None, negative_original_size=None,
                negative_crops_coords_top_left=(0, 0), negative_target_size=None, aesthetic_score: float = 6.0,
                negative_aesthetic_score: float = 2.5, clip_skip=None, **extra) -> Prepared:
        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        height = height or pipe.default_sample_size * pipe.vae_scale_factor
        width = width or pipe.default_sample_size * pipe.vae_scale_factor
        pipe.check_inputs(prompt, prompt_2, image, mask_image, height, width, strength, None, output_type,
                          negative_prompt, negative_prompt_2, prompt_embeds, negative_prompt_embeds)
        pipe._guidance_scale, pipe._guidance_rescale, pipe._clip_skip = guidance_scale, guidance_rescale, clip_skip
        pipe._cross_attention_kwargs, pipe._denoising_end, pipe._denoising_start = None, None, None
        pipe._interrupt = False
        _refuse_guidance_embedding(pipe.unet)
        _refuse_asymmetric_vae(pipe)
        channels = _unet_inpaint_channels(pipe)
        device = pipe._execution_device
        cond, uncond = self._encode_text(prompt, prompt_2, negative_prompt, negative_prompt_2, num_images_per_prompt,
                                         guidance_scale, prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds,
                                         negative_pooled_prompt_embeds, clip_skip)
        plan = plan_scheduler(pipe.scheduler, num_inference_steps, device)
        init_image = pipe.image_processor.preprocess(image, height=height, width=width).to(torch.float32)
        mask_condition = pipe.mask_processor.preprocess(mask_image, height=height, width=width)
        if masked_image_latents is not None:
            masked = masked_image_latents
        else:
            masked = None if init_image.shape[1] == 4 else init_image * (mask_condition < 0.5)
        n, dtype = _batch_size(prompt, prompt_embeds) * num_images_per_prompt, cond["text"].dtype
        outputs, plan = start_from_image(
            pipe, plan, num_inference_steps, strength, device,
            lambda view, t: view.prepare_latents(n, pipe.vae.config.latent_channels, height, width, dtype, device,
                                                 generator, latents, image=init_image, timestep=t.repeat(n),
                                                 is_strength_max=strength == 1.0, add_noise=True, return_noise=True,
                                                 return_image_latents=channels == 4))
        mask, masked = pipe.prepare_mask_latents(mask_condition, masked, n, height, width, dtype, device, generator,
                                                 False)
        height, width = (size * pipe.vae_scale_factor for size in outputs[0].shape[-2:])
        self._conditioning(cond, uncond, height, width, n, original_size, crops_coords_top_left, target_size,
                           negative_original_size, negative_crops_coords_top_left, negative_target_size,
                           aesthetic_score, negative_aesthetic_score)
        return _inpainting(self, plan, outputs, mask, masked, channels, cond, uncond, guidance_scale,
                           guidance_rescale, generator, device, self.decoder(output_type, return_dict))


class FluxImg2ImgAdapter(FluxAdapter):
    """``FluxImg2ImgPipeline``: the image noised to ``strength`` by ``scale_noise``, then the steps from there."""

    def prepare(self, prompt=None, prompt_2=None, negative_prompt=None, negative_prompt_2=None,
                true_cfg_scale: float = 1.0, image=None, height=None, width=None, strength: float = 0.6,
                num_inference_steps: int = 28, guidance_scale: float = 7.0, num_images_per_prompt: int = 1,
                generator=None, latents=None, prompt_embeds=None, pooled_prompt_embeds=None,
                negative_prompt_embeds=None, negative_pooled_prompt_embeds=None, output_type: str = "pil",
                return_dict: bool = True, max_sequence_length: int = 512, **extra) -> Prepared:
        pipe = self.pipe
        height, width = self._size(extra, height, width)
        pipe.check_inputs(prompt, prompt_2, strength, height, width, negative_prompt=negative_prompt,
                          negative_prompt_2=negative_prompt_2, prompt_embeds=prompt_embeds,
                          negative_prompt_embeds=negative_prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
                          negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                          max_sequence_length=max_sequence_length)
        init_image = pipe.image_processor.preprocess(image, height=height, width=width).to(torch.float32)
        cond, uncond, text_ids, plan, n = self._start(
            prompt, prompt_2, negative_prompt, negative_prompt_2, true_cfg_scale, height, width, num_inference_steps,
            guidance_scale, num_images_per_prompt, prompt_embeds, pooled_prompt_embeds, negative_prompt_embeds,
            negative_pooled_prompt_embeds, max_sequence_length)
        device, dtype = pipe._execution_device, cond["text"].dtype
        (x, image_ids), plan = start_from_image(
            pipe, plan, num_inference_steps, strength, device,
            lambda view, t: view.prepare_latents(init_image, t.repeat(n), n, pipe.transformer.config.in_channels // 4,
                                                 height, width, dtype, device, generator, latents))
        denoiser = self._denoiser(plan, cond, uncond, true_cfg_scale if uncond is not None else 1.0, guidance_scale,
                                  text_ids, image_ids, device)
        return Prepared.from_plan(plan, denoiser, x.float(), plan.draw_noise(x.shape, generator, device, x.dtype),
                                  self.decoder(output_type, return_dict, height=height, width=width))


class FluxInpaintAdapter(FluxAdapter):
    """``FluxInpaintPipeline``: image-to-image with the known region pasted back after every step."""

    def prepare(self, prompt=None, prompt_2=None, negative_prompt=None, negative_prompt_2=None,
                true_cfg_scale: float = 1.0, image=None, mask_image=None, masked_image_latents=None, height=None,
                width=None, strength: float = 0.6, num_inference_steps: int = 28, guidance_scale: float = 7.0,
                num_images_per_prompt: int = 1, generator=None, latents=None, prompt_embeds=None,
                pooled_prompt_embeds=None, negative_prompt_embeds=None, negative_pooled_prompt_embeds=None,
                output_type: str = "pil", return_dict: bool = True, max_sequence_length: int = 512,
                **extra) -> Prepared:
        pipe = self.pipe
        height, width = self._size(extra, height, width)
        pipe.check_inputs(prompt, prompt_2, image, mask_image, strength, height, width, output_type,
                          negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
                          prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                          pooled_prompt_embeds=pooled_prompt_embeds,
                          negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                          max_sequence_length=max_sequence_length)
        init_image = pipe.image_processor.preprocess(image, height=height, width=width).to(torch.float32)
        cond, uncond, text_ids, plan, n = self._start(
            prompt, prompt_2, negative_prompt, negative_prompt_2, true_cfg_scale, height, width, num_inference_steps,
            guidance_scale, num_images_per_prompt, prompt_embeds, pooled_prompt_embeds, negative_prompt_embeds,
            negative_pooled_prompt_embeds, max_sequence_length)
        device, dtype = pipe._execution_device, cond["text"].dtype
        channels = pipe.transformer.config.in_channels // 4
        (x, noise, image_latents, image_ids), plan = start_from_image(
            pipe, plan, num_inference_steps, strength, device,
            lambda view, t: view.prepare_latents(init_image, t.repeat(n), n, channels, height, width, dtype, device,
                                                 generator, latents))
        mask_condition = pipe.mask_processor.preprocess(mask_image, height=height, width=width)
        masked = init_image * (mask_condition < 0.5) if masked_image_latents is None else masked_image_latents
        mask, _ = pipe.prepare_mask_latents(mask_condition, masked, _batch_size(prompt, prompt_embeds), channels,
                                            num_images_per_prompt, height, width, dtype, device, generator)
        denoiser = self._denoiser(plan, cond, uncond, true_cfg_scale if uncond is not None else 1.0, guidance_scale,
                                  text_ids, image_ids, device)
        prepared = Prepared.from_plan(plan, denoiser, x.float(),
                                      plan.draw_noise(x.shape, generator, device, x.dtype),
                                      self.decoder(output_type, return_dict, height=height, width=width))
        prepared.known = KnownRegion(mask.float(), image_latents.float(), noise.float())
        return prepared
