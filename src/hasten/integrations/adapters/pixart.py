"""The PixArt line of DiTs: PixArt-Σ (VP, eps with learned sigma) and Sana (flow, linear attention).

Both sample at an aspect-ratio bin of the asked size (``use_resolution_binning``)
and resize the decoded image back, drop the learned-sigma half of the output,
and hand their generator to the scheduler's ``step``.
"""

from __future__ import annotations

from typing import Callable

import torch

from hasten.errors import HastenError
from hasten.integrations.adapters.base import Adapter, Call, sample_size
from hasten.integrations.adapters.output import Decoding
from hasten.integrations.schedulers import SchedulerPlan, pipeline_module, plan_scheduler

#: the aspect-ratio bins each pipeline picks by its transformer's sample_size (names in the pipeline's module)
BINS = {
    "PixArtSigmaPipeline": {256: "ASPECT_RATIO_2048_BIN", 128: "ASPECT_RATIO_1024_BIN", 64: "ASPECT_RATIO_512_BIN",
                            32: "ASPECT_RATIO_256_BIN"},
    "SanaPipeline": {128: "ASPECT_RATIO_4096_BIN", 64: "ASPECT_RATIO_2048_BIN", 32: "ASPECT_RATIO_1024_BIN",
                     16: "ASPECT_RATIO_512_BIN"},
}


def binned_size(pipe, height: int, width: int) -> tuple[int, int]:
    """The bin the pipeline samples ``height x width`` at, from its own bin table and image processor."""
    bins = BINS[type(pipe).__name__]
    name = bins.get(pipe.transformer.config.sample_size)
    if name is None:
        raise HastenError(f"{type(pipe).__name__}: use_resolution_binning=True needs a transformer sample_size of "
                          f"{', '.join(map(str, sorted(bins)))}, this one has {pipe.transformer.config.sample_size}; "
                          "pass use_resolution_binning=False")
    ratios = getattr(pipeline_module(pipe, name), name)
    return pipe.image_processor.classify_height_width_bin(height, width, ratios=ratios)


def binned_decode(pipe, z: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """``vae.decode(z / scaling_factor)``, resized and cropped back to the asked ``size`` after binning."""
    pixels = pipe.vae.decode(z / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return pixels if size is None else pipe.image_processor.resize_and_crop_tensor(pixels, size[1], size[0])


def generator_noise(plan: SchedulerPlan) -> SchedulerPlan:
    """These pipelines pass their generator to ``step``: a stochastic flow step draws from it, not the global RNG."""
    if plan.noise == "global":
        plan.noise = "every"
    return plan


def dit_call(transformer, latent_channels: int, timestep_scale: float | None = None, **fixed):
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


class BinnedDiT(Adapter):
    """What PixArt-Σ and Sana share: binned sizes, T5 / Gemma text and its mask, batched CFG."""

    encoded = ("text", "mask", "-text", "-mask")
    decoding = Decoding("diffusers.pipelines.pipeline_utils:ImagePipelineOutput", vae_decode=binned_decode,
                        cast_latents=False)

    def default_size(self) -> tuple[int, int]:
        return sample_size(self.pipe.transformer.config.sample_size, self.pipe.vae_scale_factor)

    def settle(self, c: Call) -> None:
        """The size sampled (the bin of the asked one), and the asked size to resize back to (None without binning)."""
        super().settle(c)
        args, size = c.args, None
        if args["use_resolution_binning"]:
            size = (args["height"], args["width"])
            args["height"], args["width"] = binned_size(self.pipe, *size)
        c.shape = {"size": size}

    def plan(self, c: Call) -> SchedulerPlan:
        return generator_noise(plan_scheduler(self.pipe.scheduler, c.args["num_inference_steps"], c.device))

    def condition(self, c: Call) -> None:
        for side in c.sides:
            side["text"] = side["text"].to(self.pipe.transformer.dtype)


class PixArtSigmaAdapter(BinnedDiT):
    """``PixArtSigmaPipeline``: VP DiT (eps, learned sigma) with T5 text and its mask, batched CFG, binned sizes."""

    def checked(self, c: Call) -> dict:
        return {"callback_steps": 1}

    def network_call(self, c: Call) -> Callable:
        transformer = self.pipe.transformer
        return dit_call(transformer, transformer.config.in_channels,
                        added_cond_kwargs={"resolution": None, "aspect_ratio": None})


class SanaAdapter(BinnedDiT):
    """``SanaPipeline``: flow DiT with Gemma 2 text behind its instruction, batched CFG, binned sizes."""

    decoding = Decoding("diffusers.pipelines.sana.pipeline_output:SanaPipelineOutput", vae_decode=binned_decode,
                        cast_latents=False)
    latent_dtype = torch.float32

    def network_call(self, c: Call) -> Callable:
        transformer = self.pipe.transformer
        return dit_call(transformer, transformer.config.in_channels, transformer.config.timestep_scale)
