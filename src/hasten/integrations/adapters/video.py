"""Video pipelines: CogVideoX, HunyuanVideo, LTX-Video and Wan."""

from __future__ import annotations

import logging
import math

import torch

from hasten.errors import HastenError
from hasten.integrations.adapters.base import (Adapter, Decoding, Prepared, _batch_size, _divide_scaling,
                                               _per_channel_unscale,
                                               _refuse_other_schedulers, _refuse_unknown, _refuse_unscaled_ve,
                                               _true_cfg, shifted_flow_plan)
from hasten.integrations.denoisers import PipelineDenoiser, switch_at
from hasten.integrations.schedulers import SchedulerPlan, is_flow, plan_scheduler

log = logging.getLogger("hasten")


def _videos_per_prompt(num_videos_per_prompt: int, num_images_per_prompt: int | None) -> int:
    """``num_images_per_prompt`` (the image pipelines' name, which hasten's CLI passes) wins where given."""
    return num_videos_per_prompt if num_images_per_prompt is None else num_images_per_prompt


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


def _wan_call(network, token_mask: torch.Tensor | None, first_frame_mask: torch.Tensor | None):
    """``call(x, t, cond)`` of one Wan transformer, with the model input its pipeline builds.

    With a ``condition`` entry (image-to-video) the input is the latents and
    the condition stacked on channels, or (``first_frame_mask``, Wan 2.2 TI2V)
    the condition's first frame pasted over the latents. ``token_mask``
    (``expand_timesteps``) gives every token its own timestep, the mask times t.
    """

    def call(xm, t, c):
        hidden = xm
        if "condition" in c:
            hidden = (torch.cat([xm, c["condition"]], dim=1) if first_frame_mask is None
                      else (1 - first_frame_mask) * c["condition"] + first_frame_mask * xm)
        timestep = t if token_mask is None else token_mask[None] * t.float()[:, None]
        image = c.get("image")
        return network(hidden_states=hidden.to(xm.dtype), timestep=timestep, encoder_hidden_states=c["text"],
                       encoder_hidden_states_image=None if image is None else image.flatten(0, 1),
                       return_dict=False)[0]

    return call


def _wan_denoiser(pipe, plan: SchedulerPlan, cond: dict, uncond: dict | None, guidance_scale: float,
                  guidance_scale_2: float | None, device, token_mask: torch.Tensor | None = None,
                  first_frame_mask: torch.Tensor | None = None) -> PipelineDenoiser:
    """The Wan denoiser: one transformer, or Wan 2.2's two experts switched at ``boundary_ratio``.

    ``transformer`` serves model times at or above ``boundary_ratio *
    num_train_timesteps`` with ``guidance_scale``, ``transformer_2`` the times
    below with ``guidance_scale_2``; the choice follows each row's grid point,
    so every method evaluates every point on its own expert.
    """
    boundary = pipe.config.get("boundary_ratio")
    high, low = pipe.transformer, getattr(pipe, "transformer_2", None)
    dtype = pipe.transformer.dtype
    if boundary is None:
        return PipelineDenoiser(_wan_call(high, token_mask, first_frame_mask), plan.grid, cond, uncond,
                                guidance_scale, dtype=dtype, device=device)
    boundary = boundary * pipe.scheduler.config.num_train_timesteps
    if low is None:
        raise HastenError(f"{type(pipe).__name__} with boundary_ratio={pipe.config.boundary_ratio} needs its second "
                          "expert, transformer_2, which is missing (Wan 2.2 A14B ships both)")
    call = switch_at(boundary, _wan_call(high, token_mask, first_frame_mask),
                     _wan_call(low, token_mask, first_frame_mask))
    scale = guidance_scale
    if guidance_scale_2 != guidance_scale:
        def scale(t: torch.Tensor) -> torch.Tensor:
            return torch.where(t.float() >= boundary, guidance_scale, guidance_scale_2)
    return PipelineDenoiser(call, plan.grid, cond, uncond, scale, dtype=dtype, device=device)


def _wan_text(adapter: Adapter, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, cfg: bool,
              n_videos: int, max_sequence_length: int, dtype, device) -> tuple[dict, dict | None]:
    """The prompt and negative prompt embeddings of a Wan pipeline, in the transformer's dtype."""
    cond, uncond = adapter.encode(adapter.pipe.encode_prompt, prompt=prompt, negative_prompt=negative_prompt,
                                  do_classifier_free_guidance=cfg, num_videos_per_prompt=n_videos,
                                  prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                                  max_sequence_length=max_sequence_length, device=device)
    return {"text": cond.to(dtype)}, ({"text": uncond.to(dtype)} if cfg else None)


def _wan_guidance(pipe, guidance_scale: float, guidance_scale_2: float | None) -> float | None:
    """The low-noise expert's scale (the call's, or ``guidance_scale`` where a boundary is set and none is given),
    with the pipeline's call state set as its ``__call__`` sets it."""
    if pipe.config.get("boundary_ratio") is not None and guidance_scale_2 is None:
        guidance_scale_2 = guidance_scale
    pipe._guidance_scale, pipe._guidance_scale_2 = guidance_scale, guidance_scale_2
    pipe._attention_kwargs, pipe._interrupt = None, False
    return guidance_scale_2


class WanAdapter(Adapter):
    """``WanPipeline``: Wan 2.1 and 2.2 text-to-video, flow matching over video latents, CFG.

    Wan 2.2 A14B's two experts are switched at ``boundary_ratio`` (see
    :func:`_wan_denoiser`); Wan 2.2 TI2V-5B's ``expand_timesteps`` gives each
    token its timestep.
    """

    count_argument = "num_videos_per_prompt"
    decoding = _video_decoding("diffusers.pipelines.wan.pipeline_output:WanPipelineOutput",
                               unscale=_per_channel_unscale)

    def prepare(self, prompt=None, negative_prompt=None, height: int = 480, width: int = 832, num_frames: int = 81,
                num_inference_steps: int = 50, guidance_scale: float = 5.0, guidance_scale_2: float | None = None,
                num_videos_per_prompt: int = 1, generator=None, latents=None, prompt_embeds=None,
                negative_prompt_embeds=None, output_type: str = "np", return_dict: bool = True,
                max_sequence_length: int = 512, num_images_per_prompt: int | None = None, **extra) -> Prepared:
        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        _refuse_non_flow_wan(pipe)
        num_videos_per_prompt = _videos_per_prompt(num_videos_per_prompt, num_images_per_prompt)
        pipe.check_inputs(prompt, negative_prompt, height, width, prompt_embeds, negative_prompt_embeds, None,
                          guidance_scale_2)
        num_frames, height, width = _wan_sizes(pipe, num_frames, height, width)
        guidance_scale_2 = _wan_guidance(pipe, guidance_scale, guidance_scale_2)
        device = pipe._execution_device
        network = pipe.transformer
        cfg = guidance_scale > 1
        cond, uncond = _wan_text(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, cfg,
                                 num_videos_per_prompt, max_sequence_length, network.dtype, device)
        plan = plan_scheduler(pipe.scheduler, num_inference_steps, device)
        x = pipe.prepare_latents(_batch_size(prompt, prompt_embeds) * num_videos_per_prompt,
                                 network.config.in_channels, height, width, num_frames, torch.float32, device,
                                 generator, latents)
        token_mask = torch.ones(x.shape[2:], device=device)[:, ::2, ::2].flatten() \
            if pipe.config.get("expand_timesteps") else None
        denoiser = _wan_denoiser(pipe, plan, cond, uncond, guidance_scale, guidance_scale_2, device, token_mask)
        return Prepared.from_plan(plan, denoiser, x.float(), plan.draw_noise(x.shape, generator, device, x.dtype),
                                  self.decoder(output_type, return_dict))


def _refuse_non_flow_wan(pipe) -> None:
    """The Wan pipelines neither scale their noise nor their model input, and need a flow scheduler.

    A VE scheduler (Euler, EulerAncestral, ...) would be sampled unscaled; DDIM,
    DDPM and CogVideoX's schedulers make the pipeline itself fail. Both are
    refused before any network call.
    """
    works = "FlowMatchEulerDiscrete, or UniPC / DPM-Solver with use_flow_sigmas"
    _refuse_unscaled_ve(pipe, works)
    if not is_flow(pipe.scheduler):
        raise HastenError(f"{type(pipe).__name__} with {type(pipe.scheduler).__name__} is not supported: Wan is a "
                          "flow-matching model and this is not a flow scheduler (no use_flow_sigmas, no "
                          f"flow_prediction); supported: {works}")


def _wan_sizes(pipe, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Frames rounded to ``4k + 1`` and the size to the patch grid, as the Wan pipelines round them (with a warning)."""
    temporal = pipe.vae_scale_factor_temporal
    if num_frames % temporal != 1:
        rounded = num_frames // temporal * temporal + 1
        log.warning("hasten: %s needs num_frames - 1 divisible by %d; rounding %d to %d, as the pipeline does",
                    type(pipe).__name__, temporal, num_frames, rounded)
        num_frames = rounded
    patch = pipe.transformer.config.patch_size
    h_multiple, w_multiple = pipe.vae_scale_factor_spatial * patch[1], pipe.vae_scale_factor_spatial * patch[2]
    rounded_h, rounded_w = height // h_multiple * h_multiple, width // w_multiple * w_multiple
    if (rounded_h, rounded_w) != (height, width):
        log.warning("hasten: %s needs height and width in multiples of (%d, %d); adjusting (%d, %d) to (%d, %d), as "
                    "the pipeline does", type(pipe).__name__, h_multiple, w_multiple, height, width, rounded_h,
                    rounded_w)
    return max(num_frames, 1), rounded_h, rounded_w


class WanImageToVideoAdapter(Adapter):
    """``WanImageToVideoPipeline``: Wan 2.1 I2V / FLF2V (CLIP image embeddings), Wan 2.2 I2V (two experts) and TI2V.

    The first (and last) frame's VAE latents condition every forward: stacked
    with a frame mask on channels, or (``expand_timesteps``) pasted over the
    latents' first frame with timestep 0 there, and over the final latents.
    """

    count_argument = "num_videos_per_prompt"
    decoding = WanAdapter.decoding

    def prepare(self, image=None, prompt=None, negative_prompt=None, height: int = 480, width: int = 832,
                num_frames: int = 81, num_inference_steps: int = 50, guidance_scale: float = 5.0,
                guidance_scale_2: float | None = None, num_videos_per_prompt: int = 1, generator=None, latents=None,
                prompt_embeds=None, negative_prompt_embeds=None, image_embeds=None, last_image=None,
                output_type: str = "np", return_dict: bool = True, max_sequence_length: int = 512,
                num_images_per_prompt: int | None = None, **extra) -> Prepared:
        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        _refuse_non_flow_wan(pipe)
        n_videos = _videos_per_prompt(num_videos_per_prompt, num_images_per_prompt)
        pipe.check_inputs(prompt, negative_prompt, image, height, width, prompt_embeds, negative_prompt_embeds,
                          image_embeds, None, guidance_scale_2)
        num_frames, height, width = _wan_sizes(pipe, num_frames, height, width)
        guidance_scale_2 = _wan_guidance(pipe, guidance_scale, guidance_scale_2)
        device = pipe._execution_device
        network = pipe.transformer
        cfg = guidance_scale > 1
        cond, uncond = _wan_text(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, cfg, n_videos,
                                 max_sequence_length, network.dtype, device)
        prompts = _batch_size(prompt, prompt_embeds)
        if pipe.transformer is not None and pipe.transformer.config.image_dim is not None:
            if n_videos != 1:  # the pipeline repeats the image embeddings per prompt, not per video
                raise HastenError("WanImageToVideoPipeline with an image encoder makes one video per prompt; pass "
                                  "num_videos_per_prompt=1 (or a list of prompts)")
            if image_embeds is None:
                image_embeds = self.encode(pipe.encode_image, image if last_image is None else [image, last_image],
                                           device)
            # one row per sample: the images of a prompt (first, and last for FLF2V) side by side
            images = image_embeds.repeat(prompts, 1, 1).to(network.dtype)
            images = images.view(prompts, -1, *images.shape[1:])
            cond["image"] = images
            if uncond is not None:
                uncond["image"] = images
        plan = plan_scheduler(pipe.scheduler, num_inference_steps, device)
        frames = [None if f is None else pipe.video_processor.preprocess(f, height=height, width=width).to(
            device, dtype=torch.float32) for f in (image, last_image)]
        out = pipe.prepare_latents(frames[0], prompts * n_videos, pipe.vae.config.z_dim, height, width, num_frames,
                                   torch.float32, device, generator, latents, frames[1])
        x, condition = out[0], out[1]
        first_frame_mask = out[2] if pipe.config.get("expand_timesteps") else None
        for side in (cond, uncond):
            if side is not None:
                side["condition"] = condition
        token_mask = None if first_frame_mask is None else first_frame_mask[0][0][:, ::2, ::2].flatten()
        denoiser = _wan_denoiser(pipe, plan, cond, uncond, guidance_scale, guidance_scale_2, device, token_mask,
                                 first_frame_mask)
        decode = self.decoder(output_type, return_dict)
        if first_frame_mask is not None:  # the pipeline pastes the condition's first frame over its final latents
            inner = decode

            def decode(z: torch.Tensor):
                return inner((1 - first_frame_mask) * condition + first_frame_mask * z)

        return self.prepared(plan, denoiser, x, generator, decode)


def _ltx_decode(pipe, z: torch.Tensor, frames: int, height: int, width: int, timestep, noise_scale,
                noise: torch.Tensor | None) -> torch.Tensor:
    """LTX-Video's VAE decoding: latents unpacked and denormalised, with the timestep-conditioned VAE's noise.

    ``timestep`` and ``noise_scale`` are the call's ``decode_timestep`` and
    ``decode_noise_scale`` as tensors, ``noise`` was drawn from the call's
    generator when the call was prepared (the pipeline draws it after its loop,
    and its loop draws nothing from the generator).
    """
    z = pipe._unpack_latents(z, frames, height, width, pipe.transformer_spatial_patch_size,
                             pipe.transformer_temporal_patch_size)
    z = pipe._denormalize_latents(z, pipe.vae.latents_mean, pipe.vae.latents_std, pipe.vae.config.scaling_factor)
    if noise is not None:
        z = (1 - noise_scale) * z + noise_scale * noise.to(z)
    return pipe.vae.decode(z.to(pipe.vae.dtype), timestep, return_dict=False)[0]


class LTXAdapter(Adapter):
    """``LTXPipeline`` (LTX-Video): flow matching on packed video tokens, batched CFG, timestep-conditioned decoding."""

    count_argument = "num_videos_per_prompt"
    decoding = _video_decoding("diffusers.pipelines.ltx.pipeline_output:LTXPipelineOutput", vae_decode=_ltx_decode)

    def prepare(self, prompt=None, negative_prompt=None, height: int = 512, width: int = 704, num_frames: int = 161,
                frame_rate: int = 25, num_inference_steps: int = 50, guidance_scale: float = 3.0,
                guidance_rescale: float = 0.0, num_videos_per_prompt: int = 1, generator=None, latents=None,
                prompt_embeds=None, prompt_attention_mask=None, negative_prompt_embeds=None,
                negative_prompt_attention_mask=None, decode_timestep=0.0, decode_noise_scale=None,
                output_type: str = "pil", return_dict: bool = True, max_sequence_length: int = 128,
                num_images_per_prompt: int | None = None, **extra) -> Prepared:
        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        _refuse_other_schedulers(pipe)
        n_videos = _videos_per_prompt(num_videos_per_prompt, num_images_per_prompt)
        pipe.check_inputs(prompt=prompt, height=height, width=width, prompt_embeds=prompt_embeds,
                          negative_prompt_embeds=negative_prompt_embeds, prompt_attention_mask=prompt_attention_mask,
                          negative_prompt_attention_mask=negative_prompt_attention_mask)
        pipe._guidance_scale, pipe._guidance_rescale, pipe._attention_kwargs = guidance_scale, guidance_rescale, None
        pipe._interrupt = False
        device, transformer = pipe._execution_device, pipe.transformer
        cfg = guidance_scale > 1
        embeds, mask, neg, neg_mask = self.encode(
            pipe.encode_prompt, prompt=prompt, negative_prompt=negative_prompt, do_classifier_free_guidance=cfg,
            num_videos_per_prompt=n_videos, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            prompt_attention_mask=prompt_attention_mask, negative_prompt_attention_mask=negative_prompt_attention_mask,
            max_sequence_length=max_sequence_length, device=device)
        prompts = _batch_size(prompt, prompt_embeds)
        x = pipe.prepare_latents(prompts * n_videos, transformer.config.in_channels, height, width, num_frames,
                                 torch.float32, device, generator, latents)
        frames = (num_frames - 1) // pipe.vae_temporal_compression_ratio + 1
        h, w = height // pipe.vae_spatial_compression_ratio, width // pipe.vae_spatial_compression_ratio
        plan = shifted_flow_plan(pipe, num_inference_steps, frames * h * w, device)
        rope_scale = (pipe.vae_temporal_compression_ratio / frame_rate, pipe.vae_spatial_compression_ratio,
                      pipe.vae_spatial_compression_ratio)

        def call(xm, t, c):
            return transformer(hidden_states=xm, encoder_hidden_states=c["text"], timestep=t.float(),
                               encoder_attention_mask=c["mask"], num_frames=frames, height=h, width=w,
                               rope_interpolation_scale=rope_scale, return_dict=False)[0]

        denoiser = PipelineDenoiser(call, plan.grid, {"text": embeds, "mask": mask},
                                    {"text": neg, "mask": neg_mask} if cfg else None, guidance_scale, guidance_rescale,
                                    dtype=embeds.dtype, device=device)
        decode = self.decoder(output_type, return_dict, frames=frames, height=h, width=w,
                              **self._decode_noise(x, frames, h, w, prompts, decode_timestep, decode_noise_scale,
                                                   output_type, embeds.dtype, generator, device))
        return self.prepared(plan, denoiser, x, generator, decode)

    def _decode_noise(self, x: torch.Tensor, frames: int, h: int, w: int, prompts: int, decode_timestep,
                      decode_noise_scale, output_type: str, dtype, generator, device) -> dict:
        """The timestep-conditioned VAE's decode timestep, noise scale and noise, as the pipeline makes them."""
        from diffusers.utils.torch_utils import randn_tensor

        pipe = self.pipe
        if output_type == "latent" or not pipe.vae.config.timestep_conditioning:
            return {"timestep": None, "noise_scale": None, "noise": None}
        shape = pipe._unpack_latents(x, frames, h, w, pipe.transformer_spatial_patch_size,
                                     pipe.transformer_temporal_patch_size).shape
        noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        timestep = decode_timestep if isinstance(decode_timestep, list) else [decode_timestep] * prompts
        scale = timestep if decode_noise_scale is None else decode_noise_scale
        scale = scale if isinstance(scale, list) else [scale] * prompts
        if len(timestep) != x.shape[0] or len(scale) not in (1, x.shape[0]):  # as the VAE and the mixing take them
            raise HastenError(f"LTXPipeline's timestep-conditioned VAE needs one decode_timestep per video "
                              f"({x.shape[0]}) and one decode_noise_scale or one per video, got {len(timestep)} and "
                              f"{len(scale)} (one per prompt unless given as lists); pass lists, or "
                              "num_videos_per_prompt=1")
        return {"timestep": torch.tensor(timestep, device=device, dtype=dtype),
                "noise_scale": torch.tensor(scale, device=device, dtype=dtype)[:, None, None, None, None],
                "noise": noise}
