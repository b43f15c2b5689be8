"""Adapters from a diffusers pipeline to (grid, denoiser, initial latents, decoder).

Each adapter reuses the pipeline's own pieces (``encode_prompt``,
``prepare_latents``, the scheduler's arrays, the VAE and image processor) and
never copies its ``__call__``. ``prepare`` validates the call's arguments and
returns everything the engine needs, before any network call.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch

from hasten.errors import HastenError
from hasten.grid import Grid
from hasten.integrations.denoisers import PipelineDenoiser
from hasten.integrations.schedulers import SchedulerPlan, plan_scheduler
from hasten.steps import Step, make_step

log = logging.getLogger("hasten")


@dataclass
class Prepared:
    """What the engine needs for one pipeline call.

    ``latents`` and ``decode`` speak the pipeline's own latent convention;
    :func:`hasten.integrations.model.prepare_call` converts them to hasten's
    state with ``pipeline_scale`` (VE schedulers keep ``x / alpha``).
    """

    grid: Grid
    solver: str
    denoiser: Any
    latents: torch.Tensor
    noise: torch.Tensor | None
    decode: Callable[[torch.Tensor], Any]  # final latents -> the pipeline's usual output
    clip: float | None = None
    clip_eps: bool = False
    pipeline_scale: torch.Tensor | None = None  # x_pipeline = pipeline_scale[i] * x_hasten at grid point i
    scheduler: str = ""  # the scheduler sampled with, for notices and reports
    callback: Any = None  # a StepCallback, set by prepare_call

    @classmethod
    def from_plan(cls, plan: SchedulerPlan, denoiser, latents: torch.Tensor, noise: torch.Tensor | None,
                  decode: Callable) -> "Prepared":
        return cls(plan.grid, plan.solver, denoiser, latents, noise, decode, plan.clip, plan.clip_eps,
                   plan.pipeline_scale, plan.describe())

    def step(self) -> Step:
        """The hasten step of this call's scheduler."""
        return make_step(self.grid, self.solver, self.noise, self.clip, self.clip_eps)


class Adapter:
    """Base of the adapters: holds the pipeline; subclasses implement ``prepare(**call) -> Prepared``.

    Every prompt encoding goes through :meth:`encode`. With ``broadcast_conditioning``
    set (the distributed executor), rank 0 alone runs the text encoders and sends
    the embeddings to the other ranks once: only the denoiser works on every rank.
    """

    def __init__(self, pipe):
        self.pipe = pipe
        self.broadcast_conditioning = False

    def encode(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` (a pipeline's ``encode_prompt``), run once on rank 0 when broadcasting."""
        if not self.broadcast_conditioning:
            return fn(*args, **kwargs)
        import torch.distributed as dist

        box = [fn(*args, **kwargs) if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(box, src=0)
        device = self.pipe._execution_device

        def to_device(value):
            if isinstance(value, torch.Tensor):
                return value.to(device)
            if isinstance(value, (tuple, list)):
                return type(value)(to_device(v) for v in value)
            return value

        return to_device(box[0])


def _batch_size(prompt, prompt_embeds) -> int:
    """Prompts in the call: from the prompt (string or list) or, without one, from its embeddings."""
    if prompt is not None:
        return 1 if isinstance(prompt, str) else len(prompt)
    return prompt_embeds.shape[0]


def _unet_latents(pipe, plan: SchedulerPlan, n: int, height: int, width: int, dtype, device, generator,
                  latents) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Initial latents (the pipeline's ``prepare_latents``) and step noise for a UNet text-to-image pipeline."""
    x = pipe.prepare_latents(n, pipe.unet.config.in_channels, height, width, dtype, device, generator, latents)
    return x, plan.draw_noise(x.shape, generator, device, pipe.unet.dtype)


def _refuse_guidance_embedding(unet) -> None:
    if unet.config.time_cond_proj_dim is not None:
        raise HastenError("UNets with a guidance embedding (time_cond_proj_dim, LCM) are not supported yet")


def _refuse_unknown(extra: dict, prepare, pipe) -> None:
    """Refuse call arguments an adapter's ``prepare`` does not take, listing those it does.

    An argument the pipeline's ``__call__`` takes, given at its default value
    (``eta=0.0``, ``cross_attention_kwargs=None``, ...), changes nothing and is accepted.
    """
    defaults = {k: p.default for k, p in inspect.signature(pipe.__call__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    refused = sorted(k for k, v in extra.items() if not (k in defaults and _same_default(v, defaults[k])))
    if refused:
        allowed = sorted(set(inspect.signature(prepare).parameters) - {"self", "extra"})
        at_default = [f"{k}={defaults[k]!r}" for k in refused if k in defaults]
        hint = f" (hasten takes {', '.join(at_default)}, the pipeline's default, only)" if at_default else ""
        raise HastenError(f"{type(pipe).__name__} call arguments not supported by hasten: "
                          f"{', '.join(refused)}{hint}; supported: {', '.join(allowed)}")


def _same_default(value, default) -> bool:
    """Whether a call argument is the pipeline's own default (None, a number, a string, a list of them)."""
    if value is default:
        return True
    simple = (type(None), bool, int, float, str, list, tuple)
    return isinstance(value, simple) and isinstance(default, simple) and value == default


def _refuse_other_schedulers(pipe) -> None:
    """Pipelines whose adapter sets the flow sigmas itself take FlowMatchEulerDiscreteScheduler only."""
    if type(pipe.scheduler).__name__ != "FlowMatchEulerDiscreteScheduler":
        raise HastenError(f"{type(pipe).__name__} with {type(pipe.scheduler).__name__} is not supported; "
                          "supported: FlowMatchEulerDiscreteScheduler (with or without stochastic_sampling)")


class UnconditionalAdapter(Adapter):
    """``DDPMPipeline`` and ``DDIMPipeline``: an unconditional ``UNet2DModel``."""


    def prepare(self, batch_size: int = 1, generator=None, num_inference_steps: int | None = None,
                output_type: str = "pil", return_dict: bool = True, eta: float = 0.0, **extra) -> Prepared:
        from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
        from diffusers.utils.torch_utils import randn_tensor

        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        if eta != 0.0:
            raise HastenError(f"eta={eta} is not supported; hasten's DDIM is eta = 0 (use the DDPM scheduler for "
                              "stochastic sampling)")
        if num_inference_steps is None:
            num_inference_steps = 1000 if type(pipe).__name__ == "DDPMPipeline" else 50
        unet = pipe.unet
        if float(pipe.scheduler.init_noise_sigma) != 1.0:  # the pipeline itself neither scales noise nor input
            raise HastenError(f"{type(pipe).__name__} with {type(pipe.scheduler).__name__} is not supported: the "
                              "pipeline neither scales its noise nor its model input for this VE scheduler; "
                              "supported: DDPM, DDIM and other VP schedulers (init_noise_sigma = 1)")
        device = pipe._execution_device
        size = unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, unet.config.in_channels, *size)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=unet.dtype).float()
        plan = plan_scheduler(pipe.scheduler, num_inference_steps, device)
        noise = plan.draw_noise(shape, generator, device, unet.dtype)
        denoiser = PipelineDenoiser(lambda x, t, cond: unet(x, t).sample, plan.grid, {}, dtype=unet.dtype,
                                    device=device)

        def decode(x: torch.Tensor):
            image = (x / 2 + 0.5).clamp(0, 1).cpu()
            if output_type != "pt":
                image = image.permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                image = pipe.numpy_to_pil(image)
            return ImagePipelineOutput(images=image) if return_dict else (image,)

        return Prepared.from_plan(plan, denoiser, latents, noise, decode)


class StableDiffusionAdapter(Adapter):
    """``StableDiffusionPipeline`` (1.x / 2.x; eps or v prediction), batched classifier-free guidance."""


    def prepare(self, prompt=None, height=None, width=None, num_inference_steps: int = 50, guidance_scale: float = 7.5,
                negative_prompt=None, num_images_per_prompt: int = 1, generator=None, latents=None,
                prompt_embeds=None, negative_prompt_embeds=None, output_type: str = "pil", return_dict: bool = True,
                guidance_rescale: float = 0.0, clip_skip=None, **extra) -> Prepared:
        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        unet = pipe.unet
        height = height or unet.config.sample_size * pipe.vae_scale_factor
        width = width or unet.config.sample_size * pipe.vae_scale_factor
        pipe._guidance_scale, pipe._guidance_rescale, pipe._clip_skip = guidance_scale, guidance_rescale, clip_skip
        pipe._cross_attention_kwargs, pipe._interrupt = None, False
        pipe.check_inputs(prompt, height, width, None, negative_prompt, prompt_embeds, negative_prompt_embeds)
        batch_size = _batch_size(prompt, prompt_embeds)
        _refuse_guidance_embedding(unet)
        cfg = guidance_scale > 1
        device = pipe._execution_device
        cond, uncond = self.encode(pipe.encode_prompt, prompt, device, num_images_per_prompt, cfg, negative_prompt,
                                   prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                                   clip_skip=clip_skip)
        plan = plan_scheduler(pipe.scheduler, num_inference_steps, device)
        x, noise = _unet_latents(pipe, plan, batch_size * num_images_per_prompt, height, width,
                                 cond.dtype, device, generator, latents)
        denoiser = PipelineDenoiser(
            lambda xm, t, c: unet(xm, t, encoder_hidden_states=c["text"]).sample, plan.grid,
            {"text": cond}, {"text": uncond} if cfg else None, guidance_scale, guidance_rescale,
            dtype=unet.dtype, device=device,
        )

        def decode(latents_out: torch.Tensor):
            from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput

            z = latents_out.to(device, pipe.vae.dtype)
            if output_type == "latent":
                image = z
            else:
                with torch.no_grad():
                    image = pipe.vae.decode(z / pipe.vae.config.scaling_factor, return_dict=False)[0]
                image = pipe.image_processor.postprocess(image, output_type=output_type)
            return StableDiffusionPipelineOutput(images=image, nsfw_content_detected=None) if return_dict else (image, None)

        return Prepared.from_plan(plan, denoiser, x.float(), noise, decode)


class FluxAdapter(Adapter):
    """``FluxPipeline``: flow matching with the pipeline's shifted sigmas, guidance embedding and true CFG."""


    def prepare(self, prompt=None, prompt_2=None, negative_prompt=None, negative_prompt_2=None,
                true_cfg_scale: float = 1.0, height=None, width=None, num_inference_steps: int = 28,
                guidance_scale: float = 3.5, num_images_per_prompt: int = 1, generator=None, latents=None,
                prompt_embeds=None, pooled_prompt_embeds=None, negative_prompt_embeds=None,
                negative_pooled_prompt_embeds=None, output_type: str = "pil", return_dict: bool = True,
                max_sequence_length: int = 512, **extra) -> Prepared:
        import numpy as np
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps
        from diffusers.pipelines.flux.pipeline_output import FluxPipelineOutput

        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        _refuse_other_schedulers(pipe)
        height = height or pipe.default_sample_size * pipe.vae_scale_factor
        width = width or pipe.default_sample_size * pipe.vae_scale_factor
        pipe.check_inputs(prompt, prompt_2, height, width, negative_prompt=negative_prompt,
                          negative_prompt_2=negative_prompt_2, prompt_embeds=prompt_embeds,
                          negative_prompt_embeds=negative_prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
                          negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                          max_sequence_length=max_sequence_length)
        pipe._guidance_scale, pipe._joint_attention_kwargs, pipe._interrupt = guidance_scale, {}, False
        device = pipe._execution_device
        batch_size = _batch_size(prompt, prompt_embeds)
        has_neg = negative_prompt is not None or (negative_prompt_embeds is not None
                                                  and negative_pooled_prompt_embeds is not None)
        true_cfg = true_cfg_scale > 1 and has_neg
        embeds, pooled, text_ids = self.encode(
            pipe.encode_prompt, prompt=prompt, prompt_2=prompt_2, prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
            device=device, num_images_per_prompt=num_images_per_prompt, max_sequence_length=max_sequence_length)
        uncond = None
        if true_cfg:
            neg, neg_pooled, _ = self.encode(
                pipe.encode_prompt, prompt=negative_prompt, prompt_2=negative_prompt_2, prompt_embeds=negative_prompt_embeds,
                pooled_prompt_embeds=negative_pooled_prompt_embeds, device=device,
                num_images_per_prompt=num_images_per_prompt, max_sequence_length=max_sequence_length)
            uncond = {"text": neg, "pooled": neg_pooled}
        transformer = pipe.transformer
        n = batch_size * num_images_per_prompt
        x, image_ids = pipe.prepare_latents(n, transformer.config.in_channels // 4, height, width, embeds.dtype,
                                            device, generator, latents)
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        cfg = pipe.scheduler.config
        mu = calculate_shift(x.shape[1], cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        retrieve_timesteps(pipe.scheduler, num_inference_steps, device, sigmas=sigmas, mu=mu)
        plan = plan_scheduler(pipe.scheduler)
        grid = plan.grid
        guidance = None
        if transformer.config.guidance_embeds:
            guidance = torch.full([1], guidance_scale, device=device, dtype=torch.float32)

        def call(xm, t, c):
            g = None if guidance is None else guidance.expand(xm.shape[0])
            return transformer(hidden_states=xm, timestep=(t / 1000).to(xm.dtype), guidance=g,
                               pooled_projections=c["pooled"], encoder_hidden_states=c["text"], txt_ids=text_ids,
                               img_ids=image_ids, return_dict=False)[0]

        denoiser = PipelineDenoiser(call, grid, {"text": embeds, "pooled": pooled}, uncond,
                                    true_cfg_scale if true_cfg else 1.0, dtype=transformer.dtype, device=device)

        def decode(z: torch.Tensor):
            z = z.to(device, pipe.vae.dtype)
            if output_type == "latent":
                image = z
            else:
                z = pipe._unpack_latents(z, height, width, pipe.vae_scale_factor)
                z = z / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
                with torch.no_grad():
                    image = pipe.vae.decode(z, return_dict=False)[0]
                image = pipe.image_processor.postprocess(image, output_type=output_type)
            return FluxPipelineOutput(images=image) if return_dict else (image,)

        return Prepared.from_plan(plan, denoiser, x.float(), plan.draw_noise(x.shape, generator, device, x.dtype),
                                  decode)


class SDXLAdapter(Adapter):
    """``StableDiffusionXLPipeline``: two text encoders, pooled embeddings and size/crop time ids, batched CFG."""

    def prepare(self, prompt=None, prompt_2=None, height=None, width=None, num_inference_steps: int = 50,
                guidance_scale: float = 5.0, negative_prompt=None, negative_prompt_2=None,
                num_images_per_prompt: int = 1, generator=None, latents=None, prompt_embeds=None,
                negative_prompt_embeds=None, pooled_prompt_embeds=None, negative_pooled_prompt_embeds=None,
                output_type: str = "pil", return_dict: bool = True, guidance_rescale: float = 0.0,
                original_size=None, crops_coords_top_left=(0, 0), target_size=None, clip_skip=None,
                **extra) -> Prepared:
        from diffusers.pipelines.stable_diffusion_xl.pipeline_output import StableDiffusionXLPipelineOutput

        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        unet = pipe.unet
        height = height or pipe.default_sample_size * pipe.vae_scale_factor
        width = width or pipe.default_sample_size * pipe.vae_scale_factor
        original_size, target_size = original_size or (height, width), target_size or (height, width)
        pipe.check_inputs(prompt, prompt_2, height, width, None, negative_prompt, negative_prompt_2, prompt_embeds,
                          negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds)
        pipe._guidance_scale, pipe._guidance_rescale, pipe._clip_skip = guidance_scale, guidance_rescale, clip_skip
        pipe._cross_attention_kwargs, pipe._denoising_end, pipe._interrupt = None, None, False
        _refuse_guidance_embedding(unet)
        device = pipe._execution_device
        batch_size = _batch_size(prompt, prompt_embeds)
        cfg = guidance_scale > 1
        embeds, neg, pooled, neg_pooled = self.encode(
            pipe.encode_prompt, prompt=prompt, prompt_2=prompt_2, device=device,
            num_images_per_prompt=num_images_per_prompt, do_classifier_free_guidance=cfg, negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds, negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            clip_skip=clip_skip)
        plan = plan_scheduler(pipe.scheduler, num_inference_steps, device)
        grid = plan.grid
        n = batch_size * num_images_per_prompt
        x, noise = _unet_latents(pipe, plan, n, height, width, embeds.dtype, device, generator, latents)
        projection = (int(pooled.shape[-1]) if pipe.text_encoder_2 is None
                      else pipe.text_encoder_2.config.projection_dim)
        time_ids = pipe._get_add_time_ids(original_size, crops_coords_top_left, target_size, dtype=embeds.dtype,
                                          text_encoder_projection_dim=projection).to(device).repeat(n, 1)

        def call(xm, t, c):
            return unet(xm, t, encoder_hidden_states=c["text"],
                        added_cond_kwargs={"text_embeds": c["pooled"], "time_ids": c["time_ids"]}).sample

        denoiser = PipelineDenoiser(call, grid, {"text": embeds, "pooled": pooled, "time_ids": time_ids},
                                    {"text": neg, "pooled": neg_pooled, "time_ids": time_ids} if cfg else None,
                                    guidance_scale, guidance_rescale, dtype=unet.dtype, device=device)

        def decode(z: torch.Tensor):
            vae = pipe.vae
            z = z.to(device, vae.dtype)
            if output_type == "latent":
                image = z
            else:
                mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
                if mean is not None and std is not None:
                    shape = (1, len(mean), 1, 1)
                    z = z * torch.tensor(std).view(shape).to(z) / vae.config.scaling_factor \
                        + torch.tensor(mean).view(shape).to(z)
                else:
                    z = z / vae.config.scaling_factor
                with torch.no_grad():
                    image = vae.decode(z, return_dict=False)[0]
                if pipe.watermark is not None:
                    image = pipe.watermark.apply_watermark(image)
                image = pipe.image_processor.postprocess(image, output_type=output_type)
            return StableDiffusionXLPipelineOutput(images=image) if return_dict else (image,)

        return Prepared.from_plan(plan, denoiser, x.float(), noise, decode)


class CogVideoXAdapter(Adapter):
    """``CogVideoXPipeline``: video latents (B, F, C, H, W), v-prediction DDIM, batched and dynamic CFG."""

    def prepare(self, prompt=None, negative_prompt=None, height=None, width=None, num_frames=None,
                num_inference_steps: int = 50, guidance_scale: float = 6.0, use_dynamic_cfg: bool = False,
                num_videos_per_prompt: int = 1, generator=None, latents=None, prompt_embeds=None,
                negative_prompt_embeds=None, output_type: str = "pil", return_dict: bool = True,
                max_sequence_length: int | None = None, num_images_per_prompt: int | None = None,
                **extra) -> Prepared:
        import math

        from diffusers.pipelines.cogvideo.pipeline_output import CogVideoXPipelineOutput

        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        if num_images_per_prompt is not None:
            num_videos_per_prompt = num_images_per_prompt
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
        batch_size = _batch_size(prompt, prompt_embeds)
        cfg = guidance_scale > 1
        cond, uncond = self.encode(pipe.encode_prompt, prompt, negative_prompt, cfg,
                                   num_videos_per_prompt=num_videos_per_prompt, prompt_embeds=prompt_embeds,
                                   negative_prompt_embeds=negative_prompt_embeds,
                                   max_sequence_length=max_sequence_length, device=device)
        plan = plan_scheduler(pipe.scheduler, num_inference_steps, device)
        grid = plan.grid
        n = batch_size * num_videos_per_prompt
        x = pipe.prepare_latents(n, transformer.config.in_channels, num_frames, height, width, cond.dtype, device,
                                 generator, latents)
        rotary = None
        if transformer.config.use_rotary_positional_embeddings:
            rotary = pipe._prepare_rotary_positional_embeddings(height, width, x.size(1), device)
        noise = plan.draw_noise(x.shape, generator, device, transformer.dtype)
        scale = guidance_scale
        if use_dynamic_cfg:  # as the pipeline: a function of the timestep value
            def scale(t: torch.Tensor) -> torch.Tensor:
                steps = num_inference_steps
                return 1 + guidance_scale * (1 - torch.cos(math.pi * ((steps - t.double()) / steps) ** 5.0)) / 2

        denoiser = PipelineDenoiser(
            lambda xm, t, c: transformer(hidden_states=xm, encoder_hidden_states=c["text"], timestep=t,
                                         image_rotary_emb=rotary, return_dict=False)[0],
            grid, {"text": cond}, {"text": uncond} if cfg else None, scale, dtype=transformer.dtype, device=device)

        def decode(z: torch.Tensor):
            if output_type == "latent":
                video = z
            else:
                with torch.no_grad():
                    video = pipe.decode_latents(z.to(device, pipe.vae.dtype))
                video = pipe.video_processor.postprocess_video(video=video, output_type=output_type)
            return CogVideoXPipelineOutput(frames=video) if return_dict else (video,)

        return Prepared.from_plan(plan, denoiser, x.float(), noise, decode)


class SD3Adapter(Adapter):
    """``StableDiffusion3Pipeline``: flow matching, three text encoders, batched CFG, optional dynamic shift."""

    def prepare(self, prompt=None, prompt_2=None, prompt_3=None, height=None, width=None,
                num_inference_steps: int = 28, guidance_scale: float = 7.0, negative_prompt=None,
                negative_prompt_2=None, negative_prompt_3=None, num_images_per_prompt: int = 1, generator=None,
                latents=None, prompt_embeds=None, negative_prompt_embeds=None, pooled_prompt_embeds=None,
                negative_pooled_prompt_embeds=None, output_type: str = "pil", return_dict: bool = True,
                clip_skip=None, max_sequence_length: int = 256, mu: float | None = None, **extra) -> Prepared:
        from diffusers.pipelines.stable_diffusion_3.pipeline_output import StableDiffusion3PipelineOutput
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift, retrieve_timesteps

        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        _refuse_other_schedulers(pipe)
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
        batch_size = _batch_size(prompt, prompt_embeds)
        cfg = guidance_scale > 1
        embeds, neg, pooled, neg_pooled = self.encode(
            pipe.encode_prompt, prompt=prompt, prompt_2=prompt_2, prompt_3=prompt_3, negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2, negative_prompt_3=negative_prompt_3,
            do_classifier_free_guidance=cfg, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds, negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            device=device, clip_skip=clip_skip, num_images_per_prompt=num_images_per_prompt,
            max_sequence_length=max_sequence_length)
        transformer = pipe.transformer
        x = pipe.prepare_latents(batch_size * num_images_per_prompt, transformer.config.in_channels, height, width,
                                 embeds.dtype, device, generator, latents)
        cfg_s = pipe.scheduler.config
        kwargs = {}
        if cfg_s.get("use_dynamic_shifting", None) and mu is None:
            seq = (x.shape[2] // transformer.config.patch_size) * (x.shape[3] // transformer.config.patch_size)
            mu = calculate_shift(seq, cfg_s.get("base_image_seq_len", 256), cfg_s.get("max_image_seq_len", 4096),
                                 cfg_s.get("base_shift", 0.5), cfg_s.get("max_shift", 1.16))
        if mu is not None:
            kwargs["mu"] = mu
        retrieve_timesteps(pipe.scheduler, num_inference_steps, device, **kwargs)
        plan = plan_scheduler(pipe.scheduler)
        grid = plan.grid
        denoiser = PipelineDenoiser(
            lambda xm, t, c: transformer(hidden_states=xm, timestep=t, encoder_hidden_states=c["text"],
                                         pooled_projections=c["pooled"], return_dict=False)[0],
            grid, {"text": embeds, "pooled": pooled}, {"text": neg, "pooled": neg_pooled} if cfg else None,
            guidance_scale, dtype=transformer.dtype, device=device)

        def decode(z: torch.Tensor):
            z = z.to(device, pipe.vae.dtype)
            if output_type == "latent":
                image = z
            else:
                with torch.no_grad():
                    image = pipe.vae.decode(z / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor,
                                            return_dict=False)[0]
                image = pipe.image_processor.postprocess(image, output_type=output_type)
            return StableDiffusion3PipelineOutput(images=image) if return_dict else (image,)

        return Prepared.from_plan(plan, denoiser, x.float(), plan.draw_noise(x.shape, generator, device, x.dtype),
                                  decode)


class HunyuanVideoAdapter(Adapter):
    """``HunyuanVideoPipeline``: flow-matching video, Llama + CLIP text, guidance embedding, true CFG."""

    def prepare(self, prompt=None, prompt_2=None, negative_prompt=None, negative_prompt_2=None, height: int = 720,
                width: int = 1280, num_frames: int = 129, num_inference_steps: int = 50, true_cfg_scale: float = 1.0,
                guidance_scale: float = 6.0, num_videos_per_prompt: int = 1, generator=None, latents=None,
                prompt_embeds=None, pooled_prompt_embeds=None, prompt_attention_mask=None,
                negative_prompt_embeds=None, negative_pooled_prompt_embeds=None,
                negative_prompt_attention_mask=None, output_type: str = "pil", return_dict: bool = True,
                prompt_template=None, max_sequence_length: int = 256, num_images_per_prompt: int | None = None,
                **extra) -> Prepared:
        import inspect as _inspect

        import numpy as np
        from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import retrieve_timesteps
        from diffusers.pipelines.hunyuan_video.pipeline_output import HunyuanVideoPipelineOutput

        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        if num_images_per_prompt is not None:
            num_videos_per_prompt = num_images_per_prompt
        if prompt_template is None:
            prompt_template = _inspect.signature(pipe.encode_prompt).parameters["prompt_template"].default
        pipe.check_inputs(prompt, prompt_2, height, width, prompt_embeds, None, prompt_template)
        pipe._guidance_scale, pipe._attention_kwargs, pipe._interrupt = guidance_scale, None, False
        device = pipe._execution_device
        batch_size = _batch_size(prompt, prompt_embeds)
        has_neg = negative_prompt is not None or (negative_prompt_embeds is not None
                                                  and negative_pooled_prompt_embeds is not None)
        true_cfg = true_cfg_scale > 1 and has_neg
        transformer = pipe.transformer
        dtype = transformer.dtype

        def encode(p, p2, e, pe, m):
            text, pooled, mask = self.encode(pipe.encode_prompt, prompt=p, prompt_2=p2,
                                             prompt_template=prompt_template,
                                             num_videos_per_prompt=num_videos_per_prompt, prompt_embeds=e,
                                             pooled_prompt_embeds=pe, prompt_attention_mask=m, device=device,
                                             max_sequence_length=max_sequence_length)
            return {"text": text.to(dtype), "pooled": pooled.to(dtype), "mask": mask.to(dtype)}

        cond = encode(prompt, prompt_2, prompt_embeds, pooled_prompt_embeds, prompt_attention_mask)
        uncond = encode(negative_prompt, negative_prompt_2, negative_prompt_embeds, negative_pooled_prompt_embeds,
                        negative_prompt_attention_mask) if true_cfg else None
        _refuse_other_schedulers(pipe)
        retrieve_timesteps(pipe.scheduler, num_inference_steps, device,
                           sigmas=np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1])
        plan = plan_scheduler(pipe.scheduler)
        grid = plan.grid
        x = pipe.prepare_latents(batch_size * num_videos_per_prompt, transformer.config.in_channels, height, width,
                                 num_frames, torch.float32, device, generator, latents)

        def call(xm, t, c):
            guidance = torch.full((xm.shape[0],), guidance_scale, dtype=dtype, device=xm.device) * 1000.0
            return transformer(hidden_states=xm, timestep=t.float(), encoder_hidden_states=c["text"],
                               encoder_attention_mask=c["mask"], pooled_projections=c["pooled"], guidance=guidance,
                               return_dict=False)[0]

        denoiser = PipelineDenoiser(call, grid, cond, uncond, true_cfg_scale if true_cfg else 1.0, dtype=dtype,
                                    device=device)

        def decode(z: torch.Tensor):
            if output_type == "latent":
                video = z
            else:
                with torch.no_grad():
                    video = pipe.vae.decode(z.to(device, pipe.vae.dtype) / pipe.vae.config.scaling_factor,
                                            return_dict=False)[0]
                video = pipe.video_processor.postprocess_video(video, output_type=output_type)
            return HunyuanVideoPipelineOutput(frames=video) if return_dict else (video,)

        return Prepared.from_plan(plan, denoiser, x.float(), plan.draw_noise(x.shape, generator, device, x.dtype),
                                  decode)


class WanAdapter(Adapter):
    """``WanPipeline`` (Wan 2.1 text-to-video): flow matching over video latents (frames > 1), batched CFG."""

    def prepare(self, prompt=None, negative_prompt=None, height: int = 480, width: int = 832, num_frames: int = 81,
                num_inference_steps: int = 50, guidance_scale: float = 5.0, num_videos_per_prompt: int = 1,
                generator=None, latents=None, prompt_embeds=None, negative_prompt_embeds=None,
                output_type: str = "np", return_dict: bool = True, max_sequence_length: int = 512,
                num_images_per_prompt: int | None = None, **extra) -> Prepared:
        from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput

        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        if getattr(pipe, "transformer_2", None) is not None or pipe.config.get("boundary_ratio") is not None \
                or pipe.config.get("expand_timesteps"):
            raise HastenError("Wan 2.2 (two transformers, boundary_ratio, expand_timesteps) is not supported yet; "
                              "supported: Wan 2.1 text-to-video")
        if num_images_per_prompt is not None:  # the CLI's name for the per-prompt count
            num_videos_per_prompt = num_images_per_prompt
        pipe.check_inputs(prompt, negative_prompt, height, width, prompt_embeds, negative_prompt_embeds)
        pipe._guidance_scale, pipe._attention_kwargs, pipe._interrupt = guidance_scale, None, False
        device = pipe._execution_device
        batch_size = _batch_size(prompt, prompt_embeds)
        cfg = guidance_scale > 1
        cond, uncond = self.encode(pipe.encode_prompt, prompt=prompt, negative_prompt=negative_prompt,
                                   do_classifier_free_guidance=cfg, num_videos_per_prompt=num_videos_per_prompt,
                                   prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                                   max_sequence_length=max_sequence_length, device=device)
        transformer = pipe.transformer
        plan = plan_scheduler(pipe.scheduler, num_inference_steps, device)
        grid = plan.grid
        x = pipe.prepare_latents(batch_size * num_videos_per_prompt, transformer.config.in_channels, height, width,
                                 num_frames, torch.float32, device, generator, latents)
        denoiser = PipelineDenoiser(
            lambda xm, t, c: transformer(hidden_states=xm, timestep=t, encoder_hidden_states=c["text"],
                                         return_dict=False)[0],
            grid, {"text": cond.to(transformer.dtype)}, {"text": uncond.to(transformer.dtype)} if cfg else None,
            guidance_scale, dtype=transformer.dtype, device=device)

        def decode(z: torch.Tensor):
            vae = pipe.vae
            if output_type == "latent":
                video = z
            else:
                z = z.to(device, vae.dtype)
                mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(z)
                inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(z)
                with torch.no_grad():
                    video = vae.decode(z / inv_std + mean, return_dict=False)[0]
                video = pipe.video_processor.postprocess_video(video, output_type=output_type)
            return WanPipelineOutput(frames=video) if return_dict else (video,)

        return Prepared.from_plan(plan, denoiser, x.float(), plan.draw_noise(x.shape, generator, device, x.dtype),
                                  decode)


ADAPTERS: dict[str, type] = {
    "FluxPipeline": FluxAdapter,
    "WanPipeline": WanAdapter,
    "StableDiffusion3Pipeline": SD3Adapter,
    "StableDiffusionXLPipeline": SDXLAdapter,
    "CogVideoXPipeline": CogVideoXAdapter,
    "HunyuanVideoPipeline": HunyuanVideoAdapter,
    "DDPMPipeline": UnconditionalAdapter,
    "DDIMPipeline": UnconditionalAdapter,
    "StableDiffusionPipeline": StableDiffusionAdapter,
}


def adapter_for(pipe):
    """The adapter for ``pipe``'s class, or a clear error naming what is supported."""
    name = type(pipe).__name__
    if name not in ADAPTERS:
        raise HastenError(f"pipeline {name} is not supported yet; supported: {', '.join(sorted(ADAPTERS))}")
    network = "unet" if "transformer" not in pipe.components else "transformer"
    for component in (network, "scheduler"):
        if getattr(pipe, component, None) is None:
            raise HastenError(f"{name} is missing its {component!r} component")
    return ADAPTERS[name](pipe)

