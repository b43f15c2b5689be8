"""The PixArt line of DiTs: PixArt-Σ (VP, eps with learned sigma) and Sana (flow, linear attention).

Both sample at an aspect-ratio bin of the asked size (``use_resolution_binning``)
and resize the decoded image back, drop the learned-sigma half of the output,
and hand their generator to the scheduler's ``step``.
"""

from __future__ import annotations

import inspect

import torch

from hasten.errors import HastenError
from hasten.integrations.adapters.base import (Adapter, Decoding, Prepared, _batch_size, _image_size, _pipeline_module,
                                               _refuse_unknown)
from hasten.integrations.denoisers import PipelineDenoiser
from hasten.integrations.schedulers import SchedulerPlan, plan_scheduler

#: the aspect-ratio bins each pipeline picks by its transformer's sample_size (names in the pipeline's module)
BINS = {
    "PixArtSigmaPipeline": {256: "ASPECT_RATIO_2048_BIN", 128: "ASPECT_RATIO_1024_BIN", 64: "ASPECT_RATIO_512_BIN",
                            32: "ASPECT_RATIO_256_BIN"},
    "SanaPipeline": {128: "ASPECT_RATIO_4096_BIN", 64: "ASPECT_RATIO_2048_BIN", 32: "ASPECT_RATIO_1024_BIN",
                     16: "ASPECT_RATIO_512_BIN"},
}


def _binned_size(pipe, height: int, width: int) -> tuple[int, int]:
    """The bin the pipeline samples ``height x width`` at, from its own bin table and image processor."""
    bins = BINS[type(pipe).__name__]
    name = bins.get(pipe.transformer.config.sample_size)
    if name is None:
        raise HastenError(f"{type(pipe).__name__}: use_resolution_binning=True needs a transformer sample_size of "
                          f"{', '.join(map(str, sorted(bins)))}, this one has {pipe.transformer.config.sample_size}; "
                          "pass use_resolution_binning=False")
    ratios = getattr(_pipeline_module(pipe, name), name)
    return pipe.image_processor.classify_height_width_bin(height, width, ratios=ratios)


def _binned_decode(pipe, z: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """``vae.decode(z / scaling_factor)``, resized and cropped back to the asked ``size`` after binning."""
    pixels = pipe.vae.decode(z / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return pixels if size is None else pipe.image_processor.resize_and_crop_tensor(pixels, size[1], size[0])


def _generator_noise(plan: SchedulerPlan) -> SchedulerPlan:
    """These pipelines pass their generator to ``step``: a stochastic flow step draws from it, not the global RNG."""
    if plan.noise == "global":
        plan.noise = "every"
    return plan


def _dit_call(transformer, latent_channels: int, timestep_scale: float | None = None, **fixed):
    """The transformer on (x, t, text, mask) with the learned-sigma half of its output dropped, as the pipelines do.

    ``timestep_scale`` (Sana) multiplies the float32 timestep; PixArt passes the scheduler's timestep as it is.
    """
    learned_sigma = transformer.config.out_channels // 2 == latent_channels

    def call(xm, t, c):
        out = transformer(xm, encoder_hidden_states=c["text"], encoder_attention_mask=c["mask"],
                          timestep=t if timestep_scale is None else t.float() * timestep_scale, return_dict=False,
                          **fixed)[0]
        return out.chunk(2, dim=1)[0] if learned_sigma else out

    return call


class _BinnedDiT(Adapter):
    """What PixArt-Σ and Sana share once their sizes are binned and inputs checked."""

    def _binning(self, height: int, width: int, use_resolution_binning: bool):
        """(height, width) sampled, and the asked size to resize back to (None without binning)."""
        if not use_resolution_binning:
            return height, width, None
        return (*_binned_size(self.pipe, height, width), (height, width))

    def _sample(self, text: dict, guidance_scale: float, steps: int, n: int, height: int, width: int, size,
                latent_dtype, call, generator, latents, output_type: str, return_dict: bool) -> Prepared:
        """Encode ``text`` (``encode_prompt``'s keywords), plan, draw latents, and build the CFG denoiser."""
        pipe = self.pipe
        device, transformer = pipe._execution_device, pipe.transformer
        cfg = guidance_scale > 1
        embeds, mask, neg, neg_mask = self.encode(pipe.encode_prompt, do_classifier_free_guidance=cfg, device=device,
                                                  **text)
        plan = _generator_noise(plan_scheduler(pipe.scheduler, steps, device))
        x = pipe.prepare_latents(n, transformer.config.in_channels, height, width, latent_dtype or embeds.dtype,
                                 device, generator, latents)
        dtype = transformer.dtype
        denoiser = PipelineDenoiser(call, plan.grid, {"text": embeds.to(dtype), "mask": mask},
                                    {"text": neg.to(dtype), "mask": neg_mask} if cfg else None, guidance_scale,
                                    dtype=dtype, device=device)
        return self.prepared(plan, denoiser, x, generator, self.decoder(output_type, return_dict, size=size))


class PixArtSigmaAdapter(_BinnedDiT):
    """``PixArtSigmaPipeline``: VP DiT (eps, learned sigma) with T5 text and its mask, batched CFG, binned sizes."""

    decoding = Decoding("diffusers.pipelines.pipeline_utils:ImagePipelineOutput", vae_decode=_binned_decode,
                        cast_latents=False)

    def prepare(self, prompt=None, negative_prompt="", num_inference_steps: int = 20, guidance_scale: float = 4.5,
                num_images_per_prompt: int = 1, height=None, width=None, generator=None, latents=None,
                prompt_embeds=None, prompt_attention_mask=None, negative_prompt_embeds=None,
                negative_prompt_attention_mask=None, output_type: str = "pil", return_dict: bool = True,
                clean_caption: bool = True, use_resolution_binning: bool = True, max_sequence_length: int = 300,
                **extra) -> Prepared:
        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        transformer = pipe.transformer
        height, width, size = self._binning(*_image_size(pipe, height, width, transformer.config.sample_size),
                                            use_resolution_binning)
        pipe.check_inputs(prompt, height, width, negative_prompt, 1, prompt_embeds, negative_prompt_embeds,
                          prompt_attention_mask, negative_prompt_attention_mask)
        text = dict(prompt=prompt, negative_prompt=negative_prompt, num_images_per_prompt=num_images_per_prompt,
                    prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                    prompt_attention_mask=prompt_attention_mask,
                    negative_prompt_attention_mask=negative_prompt_attention_mask, clean_caption=clean_caption,
                    max_sequence_length=max_sequence_length)
        call = _dit_call(transformer, transformer.config.in_channels,
                         added_cond_kwargs={"resolution": None, "aspect_ratio": None})
        return self._sample(text, guidance_scale, num_inference_steps,
                            _batch_size(prompt, prompt_embeds) * num_images_per_prompt, height, width, size, None,
                            call, generator, latents, output_type, return_dict)


#: stands for Sana's own default ``complex_human_instruction`` (None is a value: no instruction)
_PIPELINE_DEFAULT = object()


class SanaAdapter(_BinnedDiT):
    """``SanaPipeline``: flow DiT with Gemma 2 text behind its instruction, batched CFG, binned sizes."""

    decoding = Decoding("diffusers.pipelines.sana.pipeline_output:SanaPipelineOutput", vae_decode=_binned_decode,
                        cast_latents=False)

    def prepare(self, prompt=None, negative_prompt="", num_inference_steps: int = 20, guidance_scale: float = 4.5,
                num_images_per_prompt: int = 1, height: int = 1024, width: int = 1024, generator=None,
                latents=None, prompt_embeds=None, prompt_attention_mask=None, negative_prompt_embeds=None,
                negative_prompt_attention_mask=None, output_type: str = "pil", return_dict: bool = True,
                clean_caption: bool = False, use_resolution_binning: bool = True, max_sequence_length: int = 300,
                complex_human_instruction=_PIPELINE_DEFAULT, **extra) -> Prepared:
        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        if complex_human_instruction is _PIPELINE_DEFAULT:
            complex_human_instruction = inspect.signature(pipe.__call__).parameters[
                "complex_human_instruction"].default
        height, width, size = self._binning(height, width, use_resolution_binning)
        pipe.check_inputs(prompt, height, width, None, negative_prompt, prompt_embeds, negative_prompt_embeds,
                          prompt_attention_mask, negative_prompt_attention_mask)
        pipe._guidance_scale, pipe._attention_kwargs, pipe._interrupt = guidance_scale, None, False
        text = dict(prompt=prompt, negative_prompt=negative_prompt, num_images_per_prompt=num_images_per_prompt,
                    prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                    prompt_attention_mask=prompt_attention_mask,
                    negative_prompt_attention_mask=negative_prompt_attention_mask, clean_caption=clean_caption,
                    max_sequence_length=max_sequence_length, complex_human_instruction=complex_human_instruction)
        transformer = pipe.transformer
        call = _dit_call(transformer, transformer.config.in_channels, transformer.config.timestep_scale)
        return self._sample(text, guidance_scale, num_inference_steps,
                            _batch_size(prompt, prompt_embeds) * num_images_per_prompt, height, width, size,
                            torch.float32, call, generator, latents, output_type, return_dict)
