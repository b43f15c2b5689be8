"""Further text-to-image diffusion transformers: Qwen-Image, Chroma, AuraFlow, CogView4, Lumina 2, HiDream.

Each adapter here is its pipeline's conditioning (what ``encode_prompt``
returns, the network call) and decoding, as data and small hooks; the steps
every family shares are :meth:`~hasten.integrations.adapters.base.Adapter.prepare`.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from hasten.errors import HastenError
from hasten.integrations.adapters.base import Adapter, Call, sample_size
from hasten.integrations.adapters.flux import flux_unscale
from hasten.integrations.adapters.output import Decoding, divide_scaling, per_channel_unscale, scale_and_shift
from hasten.integrations.schedulers import (SchedulerPlan, pipeline_module, pipeline_plan, plan_scheduler,
                                            refuse_other_schedulers, shifted_flow_plan)


class PackedFlowAdapter(Adapter):
    """A flow transformer on packed 2x2 latent tokens, shifted by their count (``latents.shape[1]``)."""

    flow_only = True
    plan_first = False

    def latent_channels(self) -> int:
        return self.pipe.transformer.config.in_channels // 4

    def plan(self, c: Call) -> SchedulerPlan:
        return shifted_flow_plan(self.pipe, c.args["num_inference_steps"], c.latents.shape[1], c.device,
                                 c.args.get("sigmas"))

    def condition(self, c: Call) -> None:
        c.shape = {"height": c.args["height"], "width": c.args["width"]}


def qwen_decode(pipe, z: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Qwen-Image's VAE decoding: tokens unpacked, per-channel statistics undone, the one frame of its video VAE."""
    z = pipe._unpack_latents(z, height, width, pipe.vae_scale_factor)
    return pipe.vae.decode(per_channel_unscale(pipe, z), return_dict=False)[0][:, :, 0]


class QwenImageAdapter(PackedFlowAdapter):
    """``QwenImagePipeline``: flow matching on packed tokens, true CFG renormalised to the conditional output's norm."""

    decoding = Decoding("diffusers.pipelines.qwenimage.pipeline_output:QwenImagePipelineOutput",
                        vae_decode=qwen_decode, cast_latents=False)
    takes = frozenset({"sigmas"})
    guidance, scale_argument, guidance_renorm = "true", "true_cfg_scale", True
    encoded = ("text", "mask")

    def normalize_call(self, call: dict[str, Any]) -> dict[str, Any]:
        """Without a guidance embedding, the CLI's ``guidance_scale`` is Qwen-Image's ``true_cfg_scale``."""
        call = dict(call)
        embedded = self.pipe.transformer.config.guidance_embeds
        if "guidance_scale" in call and "true_cfg_scale" not in call and not embedded:
            call["true_cfg_scale"] = call.pop("guidance_scale")
        return call

    def validate(self, c: Call) -> None:
        if self.pipe.transformer.config.guidance_embeds and c.args["guidance_scale"] is None:
            raise HastenError("QwenImagePipeline: guidance_scale is required for a guidance-distilled transformer")

    def network_call(self, c: Call) -> Callable:
        pipe, args = self.pipe, c.args
        transformer, guidance = pipe.transformer, None
        if transformer.config.guidance_embeds:
            guidance = torch.full([1], args["guidance_scale"], device=c.device, dtype=torch.float32)
        shape = (1, args["height"] // pipe.vae_scale_factor // 2, args["width"] // pipe.vae_scale_factor // 2)

        def call(xm, t, cond):
            return transformer(hidden_states=xm, timestep=t.to(xm.dtype) / 1000,
                               guidance=None if guidance is None else guidance.expand(xm.shape[0]),
                               encoder_hidden_states_mask=cond["mask"], encoder_hidden_states=cond["text"],
                               img_shapes=[[shape]] * xm.shape[0], return_dict=False)[0]

        return call


class ChromaAdapter(PackedFlowAdapter):
    """``ChromaPipeline``: Flux's packed latents and schedule, T5 text with its attention mask, CFG."""

    decoding = Decoding("diffusers.pipelines.chroma.pipeline_output:ChromaPipelineOutput", unscale=flux_unscale,
                        cast_latents=False)
    takes = frozenset({"sigmas"})
    encoded = ("text", "ids", "mask", "-text", "-ids", "-mask")

    def condition(self, c: Call) -> None:
        """The text positions (one (L, 3) table) ride along per row, so that cond and uncond keep their own."""
        super().condition(c)
        x = c.latents
        for side in c.sides:
            side["ids"] = side["ids"].expand(c.count, *side["ids"].shape)
            side["mask"] = self.pipe._prepare_attention_mask(c.count, x.shape[1], x.dtype, side["mask"])

    def network_call(self, c: Call) -> Callable:
        transformer, image_ids = self.pipe.transformer, c.extra["latent_ids"]
        return lambda xm, t, cond: transformer(
            hidden_states=xm, timestep=t.to(xm.dtype) / 1000, encoder_hidden_states=cond["text"],
            txt_ids=cond["ids"][0], img_ids=image_ids, attention_mask=cond["mask"], return_dict=False)[0]


class AuraFlowAdapter(Adapter):
    """``AuraFlowPipeline``: flow matching, UMT5 text (masked into the embeddings), batched CFG."""

    decoding = Decoding("diffusers.pipelines.pipeline_utils:ImagePipelineOutput", unscale=divide_scaling,
                        cast_latents=False)
    takes = frozenset({"sigmas"})
    flow_only = True
    encoded = ("text", None, "-text", None)

    def default_size(self) -> tuple[int, int]:
        return sample_size(self.pipe.transformer.config.sample_size, self.pipe.vae_scale_factor)

    def plan(self, c: Call) -> SchedulerPlan:
        return pipeline_plan(self.pipe, c.args["num_inference_steps"], c.device, sigmas=c.args["sigmas"])

    def network_call(self, c: Call) -> Callable:  # the pipeline divides its float32 timestep by 1000, then casts
        transformer = self.pipe.transformer
        return lambda xm, t, cond: transformer(xm, encoder_hidden_states=cond["text"],
                                               timestep=(t.float() / 1000).to(xm.dtype), return_dict=False)[0]


class CogView4Adapter(AuraFlowAdapter):
    """``CogView4Pipeline``: flow matching on integer timesteps with a linear shift, GLM text, size conditioning."""

    decoding = Decoding("diffusers.pipelines.cogview4.pipeline_output:CogView4PipelineOutput",
                        unscale=divide_scaling, cast_latents=False)
    takes = frozenset({"sigmas", "timesteps"})
    encoded = ("text", "-text")
    latent_dtype = torch.float32

    def plan(self, c: Call) -> SchedulerPlan:
        """The pipeline's schedule: integer timesteps ``linspace(T, 1, N)``, sigmas ``t / T``, shifted by ``mu``."""
        import numpy as np

        pipe, args = self.pipe, c.args
        steps, cfg = args["num_inference_steps"], pipe.scheduler.config
        train, patch = cfg.num_train_timesteps, pipe.transformer.config.patch_size
        seq = (args["height"] // pipe.vae_scale_factor) * (args["width"] // pipe.vae_scale_factor) // patch ** 2
        timesteps = np.linspace(train, 1.0, steps) if args["timesteps"] is None else np.array(args["timesteps"])
        timesteps = timesteps.astype(np.int64).astype(np.float32)
        sigmas = timesteps / train if args["sigmas"] is None else args["sigmas"]
        mu = pipeline_module(pipe, "calculate_shift").calculate_shift(
            seq, cfg.get("base_image_seq_len", 256), cfg.get("base_shift", 0.25), cfg.get("max_shift", 0.75))
        return pipeline_plan(pipe, steps, c.device, timesteps=timesteps, sigmas=sigmas, mu=mu)

    def condition(self, c: Call) -> None:
        args, dtype = c.args, c.cond["text"].dtype
        size = (args["height"], args["width"])
        sizes = {name: torch.tensor([value], dtype=dtype, device=c.device).repeat(c.count, 1)
                 for name, value in (("original_size", args["original_size"] or size), ("target_size", size),
                                     ("crop_coords", args["crops_coords_top_left"]))}
        for side in c.sides:
            side.update(sizes)

    def network_call(self, c: Call) -> Callable:
        transformer = self.pipe.transformer
        return lambda xm, t, cond: transformer(
            hidden_states=xm, encoder_hidden_states=cond["text"], timestep=t.float(),
            original_size=cond["original_size"], target_size=cond["target_size"], crop_coords=cond["crop_coords"],
            return_dict=False)[0]


class Lumina2Adapter(Adapter):
    """``Lumina2Pipeline``: flow matching with Lumina's reversed time (t = 1 at the data), Gemma text behind a system
    prompt, CFG renormalised (``cfg_normalization``) and switched off after ``cfg_trunc_ratio`` of the steps."""

    decoding = Decoding("diffusers.pipelines.pipeline_utils:ImagePipelineOutput", unscale=scale_and_shift,
                        cast_latents=False)
    takes = frozenset({"sigmas"})
    flow_only = True
    plan_first = False
    encoded = ("text", "mask", "-text", "-mask")
    plan = PackedFlowAdapter.plan

    def guidance_scale(self, c: Call):
        return truncated_guidance(c.plan.grid, c.args["guidance_scale"], c.args["cfg_trunc_ratio"])

    def denoiser(self, c: Call):
        denoiser = super().denoiser(c)
        denoiser.guidance_renorm = c.args["cfg_normalization"]
        return denoiser

    def network_call(self, c: Call) -> Callable:
        transformer, train = self.pipe.transformer, self.pipe.scheduler.config.num_train_timesteps

        def call(xm, t, cond):  # the pipeline negates the guided output before its step: so does the network here
            return -transformer(hidden_states=xm, timestep=1 - t.float() / train, encoder_hidden_states=cond["text"],
                                encoder_attention_mask=cond["mask"], return_dict=False)[0]

        return call


def truncated_guidance(grid, guidance_scale: float, ratio: float):
    """Lumina 2's ``cfg_trunc_ratio``: no guidance at steps i with ``(i + 1) / N > ratio`` (a scale of 1 there).

    The scale is a function of the rows' model times, which name their grid
    points; the unconditional half is still evaluated at truncated steps
    (the pipeline skips it), so their cost is counted in full.
    """
    n = grid.steps
    cut = [i for i in range(n) if (i + 1) / n > ratio]
    if not cut:
        return guidance_scale
    truncated = grid.timesteps[cut]

    def scale(t: torch.Tensor) -> torch.Tensor:
        off = torch.isin(t, truncated.to(t.device, t.dtype))
        return torch.where(off, 1.0, guidance_scale)

    return scale


class HiDreamImageAdapter(Adapter):
    """``HiDreamImagePipeline``: four text encoders (two CLIP pooled, T5, Llama layers), a mixture-of-experts
    flow transformer on a fixed pixel area, negated output, batched CFG."""

    decoding = Decoding("diffusers.pipelines.hidream_image.pipeline_output:HiDreamImagePipelineOutput",
                        unscale=scale_and_shift, cast_latents=False)
    takes = frozenset({"sigmas"})
    encoded = ("t5", "-t5", "llama", "-llama", "pooled", "-pooled")
    text_key = "pooled"

    def settle(self, c: Call) -> None:
        """The pipeline's size: the asked aspect ratio scaled to its fixed area, on a grid of 2 latent pixels."""
        super().settle(c)
        pipe, args = self.pipe, c.args
        height, width, division = args["height"], args["width"], pipe.vae_scale_factor * 2
        scale = math.sqrt((pipe.default_sample_size * pipe.vae_scale_factor) ** 2 / (width * height))
        args["height"] = int(height * scale // division * division)
        args["width"] = int(width * scale // division * division)

    def prompts(self, c: Call) -> int:  # the pipeline counts pooled rows
        prompt = c.args["prompt"]
        if prompt is not None:
            return 1 if isinstance(prompt, str) else len(prompt)
        return c.args["pooled_prompt_embeds"].shape[0]

    def condition(self, c: Call) -> None:
        for side in c.sides:  # Llama's layers stack before the batch: rows first here
            side["llama"] = side["llama"].transpose(0, 1)

    def plan(self, c: Call) -> SchedulerPlan:
        """Shifted by ``mu`` of the transformer's maximal sequence; UniPC set without one, as the pipeline does."""
        pipe, steps = self.pipe, c.args["num_inference_steps"]
        if type(pipe.scheduler).__name__ == "UniPCMultistepScheduler":
            return plan_scheduler(pipe.scheduler, steps, c.device)
        refuse_other_schedulers(pipe)
        mu = pipeline_module(pipe, "calculate_shift").calculate_shift(pipe.transformer.max_seq)
        return pipeline_plan(pipe, steps, c.device, sigmas=c.args["sigmas"], mu=mu)

    def network_call(self, c: Call) -> Callable:
        transformer = self.pipe.transformer
        return lambda xm, t, cond: -transformer(
            hidden_states=xm, timesteps=t.float(), encoder_hidden_states_t5=cond["t5"],
            encoder_hidden_states_llama3=cond["llama"].transpose(0, 1), pooled_embeds=cond["pooled"],
            return_dict=False)[0]
