"""Video pipelines: CogVideoX, HunyuanVideo and LTX-Video (Wan: :mod:`.wan`)."""

from __future__ import annotations

import inspect
import logging
import math
from typing import Callable

import torch

from hasten.errors import HastenError
from hasten.integrations.adapters.base import Adapter, Call
from hasten.integrations.adapters.output import Decoding, divide_scaling
from hasten.integrations.schedulers import SchedulerPlan, pipeline_plan, shifted_flow_plan

log = logging.getLogger("hasten")


def video_decoding(output: str, **kwargs) -> Decoding:
    """A video pipeline's decoding: frames through the video processor, latents returned as sampled."""
    return Decoding(output, field="frames", postprocess="video", cast_latents=False, **kwargs)


class VideoAdapter(Adapter):
    """What the video pipelines share: samples counted per prompt by ``num_videos_per_prompt``, float32 latents."""

    count_argument = "num_videos_per_prompt"
    latent_dtype = torch.float32


class CogVideoXAdapter(VideoAdapter):
    """``CogVideoXPipeline``: video latents (B, F, C, H, W), v-prediction DDIM, batched and dynamic CFG."""

    decoding = video_decoding("diffusers.pipelines.cogvideo.pipeline_output:CogVideoXPipelineOutput",
                              vae_decode=lambda pipe, z: pipe.decode_latents(z))
    latent_dtype = None

    def settle(self, c: Call) -> None:
        """The transformer's sample size, frames and text length (226 on the released models) where not given."""
        pipe, args = self.pipe, c.args
        config = pipe.transformer.config
        args["height"] = args["height"] or config.sample_height * pipe.vae_scale_factor_spatial
        args["width"] = args["width"] or config.sample_width * pipe.vae_scale_factor_spatial
        args["num_frames"] = args["num_frames"] or config.sample_frames
        args["max_sequence_length"] = args["max_sequence_length"] or config.max_text_seq_length
        if args["num_videos_per_prompt"] != 1:  # CogVideoXPipeline.__call__ sets num_videos_per_prompt = 1
            log.warning("hasten: CogVideoXPipeline makes one video per prompt whatever num_videos_per_prompt "
                        "says, and so does hasten; pass a list of prompts for more videos")
            args["num_videos_per_prompt"] = 1

    def validate(self, c: Call) -> None:
        if self.pipe.transformer.config.patch_size_t is not None:
            raise HastenError("CogVideoX 1.5 (temporal patches) is not supported yet; supported: CogVideoX 1.0")

    def guidance_scale(self, c: Call):
        """The guidance scale, or with ``use_dynamic_cfg`` the pipeline's function of the timestep value."""
        scale, steps = c.args["guidance_scale"], c.args["num_inference_steps"]
        if not c.args["use_dynamic_cfg"]:
            return scale
        return lambda t: 1 + scale * (1 - torch.cos(math.pi * ((steps - t.double()) / steps) ** 5.0)) / 2

    def network_call(self, c: Call) -> Callable:
        pipe, args = self.pipe, c.args
        transformer, rotary = pipe.transformer, None
        if transformer.config.use_rotary_positional_embeddings:
            rotary = pipe._prepare_rotary_positional_embeddings(args["height"], args["width"], c.latents.size(1),
                                                                c.device)
        return lambda xm, t, cond: transformer(hidden_states=xm, encoder_hidden_states=cond["text"], timestep=t,
                                               image_rotary_emb=rotary, return_dict=False)[0]

    def noise_dtype(self, c: Call) -> torch.dtype:
        return self.pipe.transformer.dtype


class HunyuanVideoAdapter(VideoAdapter):
    """``HunyuanVideoPipeline``: flow-matching video, Llama + CLIP text, guidance embedding, true CFG."""

    decoding = video_decoding("diffusers.pipelines.hunyuan_video.pipeline_output:HunyuanVideoPipelineOutput",
                              unscale=divide_scaling)
    flow_only = True
    guidance, scale_argument = "true", "true_cfg_scale"
    encoded = ("text", "pooled", "mask")

    def settle(self, c: Call) -> None:
        if c.args["prompt_template"] is None:
            c.args["prompt_template"] = inspect.signature(self.pipe.encode_prompt).parameters["prompt_template"].default

    def condition(self, c: Call) -> None:
        dtype = self.pipe.transformer.dtype
        for side in c.sides:
            side.update({k: v.to(dtype) for k, v in side.items()})

    def plan(self, c: Call) -> SchedulerPlan:
        """The pipeline's sigmas: ``linspace(1, 0, steps + 1)`` without the final 0."""
        import numpy as np

        steps = c.args["num_inference_steps"]
        return pipeline_plan(self.pipe, steps, c.device, sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])

    def network_call(self, c: Call) -> Callable:
        """The transformer with its guidance embedding (``guidance_scale`` x 1000)."""
        transformer, guidance_scale = self.pipe.transformer, c.args["guidance_scale"]

        def call(xm, t, cond):
            guidance = torch.full((xm.shape[0],), guidance_scale, dtype=transformer.dtype, device=xm.device) * 1000.0
            return transformer(hidden_states=xm, timestep=t.float(), encoder_hidden_states=cond["text"],
                               encoder_attention_mask=cond["mask"], pooled_projections=cond["pooled"],
                               guidance=guidance, return_dict=False)[0]

        return call


def ltx_decode(pipe, z: torch.Tensor, frames: int, height: int, width: int, timestep, noise_scale,
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


class LTXAdapter(VideoAdapter):
    """``LTXPipeline`` (LTX-Video): flow matching on packed video tokens, batched CFG, timestep-conditioned decoding."""

    decoding = video_decoding("diffusers.pipelines.ltx.pipeline_output:LTXPipelineOutput", vae_decode=ltx_decode)
    flow_only = True
    encoded = ("text", "mask", "-text", "-mask")

    def latent_grid(self, c: Call) -> tuple[int, int, int]:
        """(frames, height, width) of the latents."""
        pipe, args = self.pipe, c.args
        spatial = pipe.vae_spatial_compression_ratio
        return (args["num_frames"] - 1) // pipe.vae_temporal_compression_ratio + 1, args["height"] // spatial, \
            args["width"] // spatial

    def plan(self, c: Call) -> SchedulerPlan:
        return shifted_flow_plan(self.pipe, c.args["num_inference_steps"], math.prod(self.latent_grid(c)), c.device)

    def condition(self, c: Call) -> None:
        """The timestep-conditioned VAE's decode timestep, noise scale and noise, as the pipeline makes them (drawn
        from the generator before the steps' noise)."""
        from diffusers.utils.torch_utils import randn_tensor

        pipe, args, x = self.pipe, c.args, c.latents
        frames, h, w = self.latent_grid(c)
        c.shape = {"frames": frames, "height": h, "width": w, "timestep": None, "noise_scale": None, "noise": None}
        if args["output_type"] == "latent" or not pipe.vae.config.timestep_conditioning:
            return
        shape = pipe._unpack_latents(x, frames, h, w, pipe.transformer_spatial_patch_size,
                                     pipe.transformer_temporal_patch_size).shape
        dtype, prompts = c.cond["text"].dtype, self.prompts(c)
        noise = randn_tensor(shape, generator=args["generator"], device=c.device, dtype=dtype)
        timestep = args["decode_timestep"]
        timestep = timestep if isinstance(timestep, list) else [timestep] * prompts
        scale = timestep if args["decode_noise_scale"] is None else args["decode_noise_scale"]
        scale = scale if isinstance(scale, list) else [scale] * prompts
        if len(timestep) != x.shape[0] or len(scale) not in (1, x.shape[0]):  # as the VAE and the mixing take them
            raise HastenError(f"LTXPipeline's timestep-conditioned VAE needs one decode_timestep per video "
                              f"({x.shape[0]}) and one decode_noise_scale or one per video, got {len(timestep)} and "
                              f"{len(scale)} (one per prompt unless given as lists); pass lists, or "
                              "num_videos_per_prompt=1")
        c.shape.update(timestep=torch.tensor(timestep, device=c.device, dtype=dtype), noise=noise,
                       noise_scale=torch.tensor(scale, device=c.device, dtype=dtype)[:, None, None, None, None])

    def network_call(self, c: Call) -> Callable:
        pipe, transformer = self.pipe, self.pipe.transformer
        frames, h, w = self.latent_grid(c)
        rope_scale = (pipe.vae_temporal_compression_ratio / c.args["frame_rate"], pipe.vae_spatial_compression_ratio,
                      pipe.vae_spatial_compression_ratio)
        return lambda xm, t, cond: transformer(
            hidden_states=xm, encoder_hidden_states=cond["text"], timestep=t.float(),
            encoder_attention_mask=cond["mask"], num_frames=frames, height=h, width=w,
            rope_interpolation_scale=rope_scale, return_dict=False)[0]
