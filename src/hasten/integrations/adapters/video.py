"""Video pipelines: CogVideoX, HunyuanVideo and Wan 2.1."""

from __future__ import annotations

import logging
import math

import torch

from hasten.errors import HastenError
from hasten.integrations.adapters.base import (Adapter, Decoding, Prepared, _batch_size, _divide_scaling,
                                               _refuse_other_schedulers, _refuse_unknown, _refuse_unscaled_ve,
                                               _true_cfg)
from hasten.integrations.denoisers import PipelineDenoiser
from hasten.integrations.schedulers import SchedulerPlan, is_flow, plan_scheduler

log = logging.getLogger("hasten")


def _videos_per_prompt(num_videos_per_prompt: int, num_images_per_prompt: int | None) -> int:
    """``num_images_per_prompt`` (the image pipelines' name, which hasten's CLI passes) wins where given."""
    return num_videos_per_prompt if num_images_per_prompt is None else num_images_per_prompt


def _wan_unscale(pipe, z: torch.Tensor) -> torch.Tensor:
    """Wan's VAE input: per-channel ``latents_mean`` / ``latents_std`` undone, as the pipeline computes it."""
    config = pipe.vae.config
    mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(z)
    inv_std = 1.0 / torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1).to(z)
    return z / inv_std + mean


def _video_decoding(output: str, **kwargs) -> Decoding:
    """A video pipeline's decoding: frames through the video processor, latents returned as sampled."""
    return Decoding(output, field="frames", postprocess="video", cast_latents=False, **kwargs)


def _cogvideox_scale(guidance_scale: float, use_dynamic_cfg: bool, steps: int):
    """The guidance scale, or with ``use_dynamic_cfg`` the pipeline's function of the timestep value."""
    if not use_dynamic_cfg:
        return guidance_scale

    def scale(t: torch.Tensor) -> torch.Tensor:
        return 1 + guidance_scale * (1 - torch.cos(math.pi * ((steps - t.double()) / steps) ** 5.0)) / 2

    return scale


class CogVideoXAdapter(Adapter):
    """``CogVideoXPipeline``: video latents (B, F, C, H, W), v-prediction DDIM, batched and dynamic CFG."""

    count_argument = "num_videos_per_prompt"
    decoding = _video_decoding("diffusers.pipelines.cogvideo.pipeline_output:CogVideoXPipelineOutput",
                               vae_decode=lambda pipe, z: pipe.decode_latents(z))

    def prepare(self, prompt=None, negative_prompt=None, height=None, width=None, num_frames=None,
                num_inference_steps: int = 50, guidance_scale: float = 6.0, use_dynamic_cfg: bool = False,
                num_videos_per_prompt: int = 1, generator=None, latents=None, prompt_embeds=None,
                negative_prompt_embeds=None, output_type: str = "pil", return_dict: bool = True,
                max_sequence_length: int | None = None, num_images_per_prompt: int | None = None,
                **extra) -> Prepared:
        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        num_videos_per_prompt = _videos_per_prompt(num_videos_per_prompt, num_images_per_prompt)
        if num_videos_per_prompt != 1:  # CogVideoXPipeline.__call__ sets num_videos_per_prompt = 1
            log.warning("hasten: CogVideoXPipeline makes one video per prompt whatever num_videos_per_prompt "
                        "says, and so does hasten; pass a list of prompts for more videos")
            num_videos_per_prompt = 1
        transformer = pipe.transformer
        height = height or transformer.config.sample_height * pipe.vae_scale_factor_spatial
        width = width or transformer.config.sample_width * pipe.vae_scale_factor_spatial
        num_frames = num_frames or transformer.config.sample_frames
        # the transformer's own text length (226 on the released models, the pipeline's default)
        max_sequence_length = max_sequence_length or transformer.config.max_text_seq_length
        pipe.check_inputs(prompt, height, width, negative_prompt, None, prompt_embeds, negative_prompt_embeds)
        pipe._guidance_scale, pipe._attention_kwargs, pipe._interrupt = guidance_scale, None, False
        if transformer.config.patch_size_t is not None:
            raise HastenError("CogVideoX 1.5 (temporal patches) is not supported yet; supported: CogVideoX 1.0")
        device = pipe._execution_device
        cfg = guidance_scale > 1
        cond, uncond = self.encode(pipe.encode_prompt, prompt, negative_prompt, cfg,
                                   num_videos_per_prompt=num_videos_per_prompt, prompt_embeds=prompt_embeds,
                                   negative_prompt_embeds=negative_prompt_embeds,
                                   max_sequence_length=max_sequence_length, device=device)
        plan = plan_scheduler(pipe.scheduler, num_inference_steps, device)
        x = pipe.prepare_latents(_batch_size(prompt, prompt_embeds) * num_videos_per_prompt,
                                 transformer.config.in_channels, num_frames, height, width, cond.dtype, device,
                                 generator, latents)
        rotary = None
        if transformer.config.use_rotary_positional_embeddings:
            rotary = pipe._prepare_rotary_positional_embeddings(height, width, x.size(1), device)
        noise = plan.draw_noise(x.shape, generator, device, transformer.dtype)
        denoiser = PipelineDenoiser(
            lambda xm, t, c: transformer(hidden_states=xm, encoder_hidden_states=c["text"], timestep=t,
                                         image_rotary_emb=rotary, return_dict=False)[0],
            plan.grid, {"text": cond}, {"text": uncond} if cfg else None,
            _cogvideox_scale(guidance_scale, use_dynamic_cfg, num_inference_steps), dtype=transformer.dtype,
            device=device)
        return Prepared.from_plan(plan, denoiser, x.float(), noise, self.decoder(output_type, return_dict))


class HunyuanVideoAdapter(Adapter):
    """``HunyuanVideoPipeline``: flow-matching video, Llama + CLIP text, guidance embedding, true CFG."""

    count_argument = "num_videos_per_prompt"
    decoding = _video_decoding("diffusers.pipelines.hunyuan_video.pipeline_output:HunyuanVideoPipelineOutput",
                               unscale=_divide_scaling)

    def prepare(self, prompt=None, prompt_2=None, negative_prompt=None, negative_prompt_2=None, height: int = 720,
                width: int = 1280, num_frames: int = 129, num_inference_steps: int = 50, true_cfg_scale: float = 1.0,
                guidance_scale: float = 6.0, num_videos_per_prompt: int = 1, generator=None, latents=None,
                prompt_embeds=None, pooled_prompt_embeds=None, prompt_attention_mask=None,
                negative_prompt_embeds=None, negative_pooled_prompt_embeds=None,
                negative_prompt_attention_mask=None, output_type: str = "pil", return_dict: bool = True,
                prompt_template=None, max_sequence_length: int = 256, num_images_per_prompt: int | None = None,
                **extra) -> Prepared:
        import inspect

        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        num_videos_per_prompt = _videos_per_prompt(num_videos_per_prompt, num_images_per_prompt)
        if prompt_template is None:
            prompt_template = inspect.signature(pipe.encode_prompt).parameters["prompt_template"].default
        pipe.check_inputs(prompt, prompt_2, height, width, prompt_embeds, None, prompt_template)
        pipe._guidance_scale, pipe._attention_kwargs, pipe._interrupt = guidance_scale, None, False
        device = pipe._execution_device
        guided = _true_cfg(true_cfg_scale, negative_prompt, negative_prompt_embeds, negative_pooled_prompt_embeds)
        transformer = pipe.transformer

        def encode(p, p2, e, pe, m) -> dict:
            text, pooled, mask = self.encode(pipe.encode_prompt, prompt=p, prompt_2=p2,
                                             prompt_template=prompt_template,
                                             num_videos_per_prompt=num_videos_per_prompt, prompt_embeds=e,
                                             pooled_prompt_embeds=pe, prompt_attention_mask=m, device=device,
                                             max_sequence_length=max_sequence_length)
            return {"text": text.to(transformer.dtype), "pooled": pooled.to(transformer.dtype),
                    "mask": mask.to(transformer.dtype)}

        cond = encode(prompt, prompt_2, prompt_embeds, pooled_prompt_embeds, prompt_attention_mask)
        uncond = encode(negative_prompt, negative_prompt_2, negative_prompt_embeds, negative_pooled_prompt_embeds,
                        negative_prompt_attention_mask) if guided else None
        _refuse_other_schedulers(pipe)
        plan = self._plan(num_inference_steps, device)
        x = pipe.prepare_latents(_batch_size(prompt, prompt_embeds) * num_videos_per_prompt,
                                 transformer.config.in_channels, height, width, num_frames, torch.float32, device,
                                 generator, latents)
        denoiser = self._denoiser(plan, cond, uncond, true_cfg_scale if guided else 1.0, guidance_scale, device)
        return Prepared.from_plan(plan, denoiser, x.float(), plan.draw_noise(x.shape, generator, device, x.dtype),
                                  self.decoder(output_type, return_dict))

    def _plan(self, steps: int, device) -> SchedulerPlan:
        """The pipeline's sigmas: ``linspace(1, 0, steps + 1)`` without the final 0."""
        import numpy as np
        from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import retrieve_timesteps

        retrieve_timesteps(self.pipe.scheduler, steps, device, sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])
        return plan_scheduler(self.pipe.scheduler)

    def _denoiser(self, plan: SchedulerPlan, cond: dict, uncond: dict | None, scale: float, guidance_scale: float,
                  device) -> PipelineDenoiser:
        """The transformer with its guidance embedding (``guidance_scale`` x 1000) and true CFG between calls."""
        transformer = self.pipe.transformer
        dtype = transformer.dtype

        def call(xm, t, c):
            guidance = torch.full((xm.shape[0],), guidance_scale, dtype=dtype, device=xm.device) * 1000.0
            return transformer(hidden_states=xm, timestep=t.float(), encoder_hidden_states=c["text"],
                               encoder_attention_mask=c["mask"], pooled_projections=c["pooled"], guidance=guidance,
                               return_dict=False)[0]

        return PipelineDenoiser(call, plan.grid, cond, uncond, scale, dtype=dtype, device=device)


class WanAdapter(Adapter):
    """``WanPipeline`` (Wan 2.1 text-to-video): flow matching over video latents (frames > 1), batched CFG."""

    count_argument = "num_videos_per_prompt"
    decoding = _video_decoding("diffusers.pipelines.wan.pipeline_output:WanPipelineOutput", unscale=_wan_unscale)

    def prepare(self, prompt=None, negative_prompt=None, height: int = 480, width: int = 832, num_frames: int = 81,
                num_inference_steps: int = 50, guidance_scale: float = 5.0, num_videos_per_prompt: int = 1,
                generator=None, latents=None, prompt_embeds=None, negative_prompt_embeds=None,
                output_type: str = "np", return_dict: bool = True, max_sequence_length: int = 512,
                num_images_per_prompt: int | None = None, **extra) -> Prepared:
        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        if getattr(pipe, "transformer_2", None) is not None or pipe.config.get("boundary_ratio") is not None \
                or pipe.config.get("expand_timesteps"):
            raise HastenError("Wan 2.2 (two transformers, boundary_ratio, expand_timesteps) is not supported yet; "
                              "supported: Wan 2.1 text-to-video")
        num_videos_per_prompt = _videos_per_prompt(num_videos_per_prompt, num_images_per_prompt)
        works = "FlowMatchEulerDiscrete, or UniPC / DPM-Solver with use_flow_sigmas"
        _refuse_unscaled_ve(pipe, works)
        if not is_flow(pipe.scheduler):  # DDIM, DDPM, CogVideoX's: the pipeline itself fails on them
            raise HastenError(f"WanPipeline with {type(pipe.scheduler).__name__} is not supported: Wan is a "
                              "flow-matching model and this is not a flow scheduler (no use_flow_sigmas, no "
                              f"flow_prediction); supported: {works}")
        pipe.check_inputs(prompt, negative_prompt, height, width, prompt_embeds, negative_prompt_embeds)
        num_frames, height, width = self._round_size(num_frames, height, width)
        pipe._guidance_scale, pipe._attention_kwargs, pipe._interrupt = guidance_scale, None, False
        device = pipe._execution_device
        cfg = guidance_scale > 1
        cond, uncond = self.encode(pipe.encode_prompt, prompt=prompt, negative_prompt=negative_prompt,
                                   do_classifier_free_guidance=cfg, num_videos_per_prompt=num_videos_per_prompt,
                                   prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                                   max_sequence_length=max_sequence_length, device=device)
        transformer = pipe.transformer
        plan = plan_scheduler(pipe.scheduler, num_inference_steps, device)
        x = pipe.prepare_latents(_batch_size(prompt, prompt_embeds) * num_videos_per_prompt,
                                 transformer.config.in_channels, height, width, num_frames, torch.float32, device,
                                 generator, latents)
        denoiser = PipelineDenoiser(
            lambda xm, t, c: transformer(hidden_states=xm, timestep=t, encoder_hidden_states=c["text"],
                                         return_dict=False)[0],
            plan.grid, {"text": cond.to(transformer.dtype)}, {"text": uncond.to(transformer.dtype)} if cfg else None,
            guidance_scale, dtype=transformer.dtype, device=device)
        return Prepared.from_plan(plan, denoiser, x.float(), plan.draw_noise(x.shape, generator, device, x.dtype),
                                  self.decoder(output_type, return_dict))

    def _round_size(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """The size WanPipeline samples: ``num_frames`` of the form 4k + 1, height and width multiples of a patch.

        The pipeline rounds them (with a warning) before preparing latents, and so does hasten.
        """
        pipe = self.pipe
        temporal = pipe.vae_scale_factor_temporal
        if num_frames % temporal != 1:
            rounded = num_frames // temporal * temporal + 1
            log.warning("hasten: WanPipeline needs num_frames - 1 divisible by %d; rounding %d to %d, as the "
                        "pipeline does", temporal, num_frames, rounded)
            num_frames = rounded
        patch = pipe.transformer.config.patch_size
        h_multiple, w_multiple = pipe.vae_scale_factor_spatial * patch[1], pipe.vae_scale_factor_spatial * patch[2]
        rounded_h, rounded_w = height // h_multiple * h_multiple, width // w_multiple * w_multiple
        if (rounded_h, rounded_w) != (height, width):
            log.warning("hasten: WanPipeline needs height and width in multiples of (%d, %d); adjusting (%d, %d) to "
                        "(%d, %d), as the pipeline does", h_multiple, w_multiple, height, width, rounded_h, rounded_w)
        return max(num_frames, 1), rounded_h, rounded_w
