"""Flow-matching image transformers: Flux and Stable Diffusion 3."""

from __future__ import annotations

from typing import Any, Callable

import torch

from hasten.integrations.adapters.base import (Adapter, Decoding, Prepared, _batch_size, _refuse_other_schedulers,
                                               _refuse_unknown, _scale_and_shift, _true_cfg,
                                               shifted_flow_plan)
from hasten.integrations.denoisers import PipelineDenoiser
from hasten.integrations.schedulers import SchedulerPlan, plan_scheduler


def _flux_unscale(pipe, z: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Flux's VAE input: the packed 2x2 patches unpacked to the image's latent size, then scaled and shifted."""
    return _scale_and_shift(pipe, pipe._unpack_latents(z, height, width, pipe.vae_scale_factor))


class FluxAdapter(Adapter):
    """``FluxPipeline``: flow matching with the pipeline's shifted sigmas, guidance embedding and true CFG."""

    decoding = Decoding("diffusers.pipelines.flux.pipeline_output:FluxPipelineOutput", unscale=_flux_unscale)

    def normalize_call(self, call: dict[str, Any]) -> dict[str, Any]:
        """With a negative prompt, Flux guides by true CFG: ``true_cfg_scale`` takes ``guidance_scale`` (default 4)."""
        call = dict(call)
        if "negative_prompt" in call:
            call.setdefault("true_cfg_scale", call.pop("guidance_scale", 4.0))
        return call

    def prepare(self, prompt=None, prompt_2=None, negative_prompt=None, negative_prompt_2=None,
                true_cfg_scale: float = 1.0, height=None, width=None, num_inference_steps: int = 28,
                guidance_scale: float = 3.5, num_images_per_prompt: int = 1, generator=None, latents=None,
                prompt_embeds=None, pooled_prompt_embeds=None, negative_prompt_embeds=None,
                negative_pooled_prompt_embeds=None, output_type: str = "pil", return_dict: bool = True,
                max_sequence_length: int = 512, **extra) -> Prepared:
        pipe = self.pipe
        height, width = self._size(extra, height, width)
        pipe.check_inputs(prompt, prompt_2, height, width, negative_prompt=negative_prompt,
                          negative_prompt_2=negative_prompt_2, prompt_embeds=prompt_embeds,
                          negative_prompt_embeds=negative_prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
                          negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                          max_sequence_length=max_sequence_length)
        cond, uncond, text_ids, plan, n = self._start(
            prompt, prompt_2, negative_prompt, negative_prompt_2, true_cfg_scale, height, width, num_inference_steps,
            guidance_scale, num_images_per_prompt, prompt_embeds, pooled_prompt_embeds, negative_prompt_embeds,
            negative_pooled_prompt_embeds, max_sequence_length)
        device = pipe._execution_device
        x, image_ids = pipe.prepare_latents(n, pipe.transformer.config.in_channels // 4, height, width,
                                            cond["text"].dtype, device, generator, latents)
        denoiser = self._denoiser(plan, cond, uncond, true_cfg_scale if uncond is not None else 1.0, guidance_scale,
                                  text_ids, image_ids, device)
        return Prepared.from_plan(plan, denoiser, x.float(), plan.draw_noise(x.shape, generator, device, x.dtype),
                                  self.decoder(output_type, return_dict, height=height, width=width))

    def _plan(self, steps: int, image_seq_len: int, device) -> SchedulerPlan:
        """The pipeline's sigmas, shifted by ``mu`` for the image's sequence length.

        A scheduler config with ``use_flow_sigmas`` set (one built from a UniPC or DPM-Solver config keeps
        it) makes FluxPipeline drop its own sigmas and leave them to the scheduler, and so does hasten; its
        image-input siblings (img2img, inpaint, Kontext, Fill, ControlNet) keep theirs.
        """
        own = not (type(self.pipe).__name__ == "FluxPipeline" and self.pipe.scheduler.config.get("use_flow_sigmas"))
        return shifted_flow_plan(self.pipe, steps, image_seq_len, device, own_sigmas=own)

    def _start(self, prompt, prompt_2, negative_prompt, negative_prompt_2, true_cfg_scale: float, height, width,
               num_inference_steps: int, guidance_scale: float, num_images_per_prompt: int, prompt_embeds,
               pooled_prompt_embeds, negative_prompt_embeds, negative_pooled_prompt_embeds,
               max_sequence_length: int) -> tuple[dict, dict | None, Any, SchedulerPlan, int]:
        """(cond, uncond, text ids, plan, samples): the call's prompt and the plan for its size, before any latents."""
        pipe = self.pipe
        pipe._guidance_scale, pipe._joint_attention_kwargs, pipe._interrupt = guidance_scale, {}, False
        device = pipe._execution_device
        cond, uncond, text_ids = self._encode_text(prompt, prompt_2, negative_prompt, negative_prompt_2, true_cfg_scale,
                                                   num_images_per_prompt, prompt_embeds, pooled_prompt_embeds,
                                                   negative_prompt_embeds, negative_pooled_prompt_embeds,
                                                   max_sequence_length)
        image_seq_len = (int(height) // pipe.vae_scale_factor // 2) * (int(width) // pipe.vae_scale_factor // 2)
        plan = self._plan(num_inference_steps, image_seq_len, device)
        return cond, uncond, text_ids, plan, _batch_size(prompt, prompt_embeds) * num_images_per_prompt

    def _size(self, extra: dict, height, width) -> tuple[int, int]:
        """Refuse what this adapter does not take, then the call's size (the pipeline's default where not given)."""
        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        _refuse_other_schedulers(pipe)
        return (height or pipe.default_sample_size * pipe.vae_scale_factor,
                width or pipe.default_sample_size * pipe.vae_scale_factor)

    def _encode_text(self, prompt, prompt_2, negative_prompt, negative_prompt_2, true_cfg_scale: float,
                     num_images_per_prompt: int, prompt_embeds, pooled_prompt_embeds, negative_prompt_embeds,
                     negative_pooled_prompt_embeds, max_sequence_length: int) -> tuple[dict, dict | None, Any]:
        """(cond, uncond, text ids): the prompt's embeddings, and the negative prompt's where true CFG guides."""
        pipe = self.pipe
        guided = _true_cfg(true_cfg_scale, negative_prompt, negative_prompt_embeds, negative_pooled_prompt_embeds)
        per_prompt = dict(device=pipe._execution_device, num_images_per_prompt=num_images_per_prompt,
                          max_sequence_length=max_sequence_length)
        embeds, pooled, text_ids = self.encode(pipe.encode_prompt, prompt=prompt, prompt_2=prompt_2,
                                               prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
                                               **per_prompt)
        uncond = None
        if guided:
            neg, neg_pooled, _ = self.encode(pipe.encode_prompt, prompt=negative_prompt, prompt_2=negative_prompt_2,
                                             prompt_embeds=negative_prompt_embeds,
                                             pooled_prompt_embeds=negative_pooled_prompt_embeds, **per_prompt)
            uncond = {"text": neg, "pooled": neg_pooled}
        return {"text": embeds, "pooled": pooled}, uncond, text_ids

    def _denoiser(self, plan: SchedulerPlan, cond: dict, uncond: dict | None, scale: float, guidance_scale: float,
                  text_ids, image_ids, device, residuals: Callable | None = None,
                  by_index: dict | None = None) -> PipelineDenoiser:
        """The transformer with its guidance embedding (where it has one) and true CFG between calls."""
        transformer = self.pipe.transformer
        call = flux_call(transformer, guidance_scale, text_ids, image_ids, device, residuals)
        return PipelineDenoiser(call, plan.grid, cond, uncond, scale, dtype=transformer.dtype, device=device,
                                by_index=by_index)


def flux_call(transformer, guidance_scale: float, text_ids, image_ids, device,
              residuals: Callable | None = None) -> Callable:
    """``call(x, t, cond)`` of a Flux transformer as the Flux pipelines run it.

    ``cond`` holds ``text`` and ``pooled``, and where the pipeline has them
    ``reference`` (Kontext: the reference image's tokens after the latents'
    ones, ``image_ids`` covering both; the output is cut back to the latents'
    tokens) or ``masked`` (Fill: masked image latents and mask as extra
    channels). ``residuals(x, timestep, cond) -> dict`` adds a ControlNet's
    block residuals (the transformer's ``controlnet_*`` arguments).
    """
    guidance = None
    if transformer.config.guidance_embeds:
        guidance = torch.full([1], guidance_scale, device=device, dtype=torch.float32)

    def call(xm, t, c):
        g = None if guidance is None else guidance.expand(xm.shape[0])
        timestep = (t / 1000).to(xm.dtype)
        hidden = xm
        if "reference" in c:
            hidden = torch.cat([xm, c["reference"]], dim=1)
        if "masked" in c:
            hidden = torch.cat([xm, c["masked"]], dim=2)
        control = {} if residuals is None else residuals(xm, timestep, c)
        out = transformer(hidden_states=hidden, timestep=timestep, guidance=g, pooled_projections=c["pooled"],
                          encoder_hidden_states=c["text"], txt_ids=text_ids, img_ids=image_ids, return_dict=False,
                          **control)[0]
        return out[:, :xm.shape[1]]

    return call


class SD3Adapter(Adapter):
    """``StableDiffusion3Pipeline``: flow matching, three text encoders, batched CFG, optional dynamic shift."""

    decoding = Decoding("diffusers.pipelines.stable_diffusion_3.pipeline_output:StableDiffusion3PipelineOutput",
                        unscale=_scale_and_shift)

    def prepare(self, prompt=None, prompt_2=None, prompt_3=None, height=None, width=None,
                num_inference_steps: int = 28, guidance_scale: float = 7.0, negative_prompt=None,
                negative_prompt_2=None, negative_prompt_3=None, num_images_per_prompt: int = 1, generator=None,
                latents=None, prompt_embeds=None, negative_prompt_embeds=None, pooled_prompt_embeds=None,
                negative_pooled_prompt_embeds=None, output_type: str = "pil", return_dict: bool = True,
                clip_skip=None, max_sequence_length: int = 256, mu: float | None = None, **extra) -> Prepared:
        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        _refuse_other_schedulers(pipe, multistep=True)
        height = height or pipe.default_sample_size * pipe.vae_scale_factor
        width = width or pipe.default_sample_size * pipe.vae_scale_factor
        pipe.check_inputs(prompt, prompt_2, prompt_3, height, width, negative_prompt=negative_prompt,
                          negative_prompt_2=negative_prompt_2, negative_prompt_3=negative_prompt_3,
                          prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                          pooled_prompt_embeds=pooled_prompt_embeds,
                          negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                          max_sequence_length=max_sequence_length)
        pipe._guidance_scale, pipe._clip_skip, pipe._joint_attention_kwargs = guidance_scale, clip_skip, None
        pipe._interrupt = False
        device = pipe._execution_device
        cfg = guidance_scale > 1
        embeds, neg, pooled, neg_pooled = self.encode(
            pipe.encode_prompt, prompt=prompt, prompt_2=prompt_2, prompt_3=prompt_3, negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2, negative_prompt_3=negative_prompt_3,
            do_classifier_free_guidance=cfg, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds, negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            device=device, clip_skip=clip_skip, num_images_per_prompt=num_images_per_prompt,
            max_sequence_length=max_sequence_length)
        transformer = pipe.transformer
        x = pipe.prepare_latents(_batch_size(prompt, prompt_embeds) * num_images_per_prompt,
                                 transformer.config.in_channels, height, width, embeds.dtype, device, generator, latents)
        plan = self._plan(num_inference_steps, x, mu, device)
        denoiser = PipelineDenoiser(
            lambda xm, t, c: transformer(hidden_states=xm, timestep=t, encoder_hidden_states=c["text"],
                                         pooled_projections=c["pooled"], return_dict=False)[0],
            plan.grid, {"text": embeds, "pooled": pooled}, {"text": neg, "pooled": neg_pooled} if cfg else None,
            guidance_scale, dtype=transformer.dtype, device=device)
        return Prepared.from_plan(plan, denoiser, x.float(), plan.draw_noise(x.shape, generator, device, x.dtype),
                                  self.decoder(output_type, return_dict))

    def _plan(self, steps: int, x: torch.Tensor, mu: float | None, device) -> SchedulerPlan:
        """The scheduler's sigmas, with the dynamic shift ``mu`` for the image's sequence length where it uses one."""
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift, retrieve_timesteps

        scheduler, patch = self.pipe.scheduler, self.pipe.transformer.config.patch_size
        cfg = scheduler.config
        if cfg.get("use_dynamic_shifting", None) and mu is None:
            seq = (x.shape[2] // patch) * (x.shape[3] // patch)
            mu = calculate_shift(seq, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                                 cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.16))
        retrieve_timesteps(scheduler, steps, device, **({} if mu is None else {"mu": mu}))
        return plan_scheduler(scheduler)
