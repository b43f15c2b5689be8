"""What an adapter hands the engine (:class:`Prepared`) and how a pipeline's final latents decode (:class:`Decoding`,
:func:`decode_latents`, the one decoder, and the VAE inputs the families share)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import torch

from hasten.grid import Grid
from hasten.inpaint import KnownRegion, KnownRegionStep
from hasten.integrations.schedulers import SchedulerPlan
from hasten.steps import Step, make_step


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
    known: KnownRegion | None = None  # an inpainting's known region, blended back after every step
    schedule: Any = None  # a multistep solver's per-point orders (hasten.multistep.MultistepSchedule)

    @classmethod
    def from_plan(cls, plan: SchedulerPlan, denoiser, latents: torch.Tensor, noise: torch.Tensor | None,
                  decode: Callable) -> "Prepared":
        return cls(plan.grid, plan.solver, denoiser, latents, noise, decode, plan.clip, plan.clip_eps,
                   plan.pipeline_scale, plan.describe(), schedule=plan.schedule)

    def step(self) -> Step:
        """The hasten step of this call's scheduler (keeping an inpainting's known region where there is one)."""
        step = make_step(self.grid, self.solver, self.noise, self.clip, self.clip_eps, self.schedule)
        return step if self.known is None else KnownRegionStep(step, self.known)


@dataclass(frozen=True)
class Decoding:
    """How a pipeline turns its final latents into its usual output, as its own ``__call__`` does.

    ``output`` names the output class (``"module:Class"``, imported when
    decoding); ``field`` is its ``images`` or ``frames``. ``unscale(pipe, z,
    **shape)`` turns latents into the VAE's input; ``vae_decode(pipe, z)``
    replaces unscale plus ``vae.decode`` where the pipeline has its own.
    ``postprocess``: ``image`` (the image processor), ``video`` (the video
    processor) or ``pixels`` (no VAE: ``(x / 2 + 0.5).clamp(0, 1)``).
    ``cast_latents``: ``output_type="latent"`` returns the latents on the VAE's
    device and dtype (the image pipelines) rather than as sampled (the video
    ones). ``watermark``: apply ``pipe.watermark`` where set (SDXL).
    ``extras``: further fields of the output, also appended to the tuple.
    """

    output: str
    unscale: Callable[..., torch.Tensor] | None = None
    vae_decode: Callable[..., torch.Tensor] | None = None
    field: str = "images"
    postprocess: str = "image"
    cast_latents: bool = True
    watermark: bool = False
    extras: tuple[tuple[str, Any], ...] = ()


def decode_latents(pipe, decoding: Decoding, z: torch.Tensor, output_type: str = "pil", return_dict: bool = True,
                   **shape) -> Any:
    """``z`` (final latents, the pipeline's convention) as the pipeline's output for ``output_type``.

    ``shape`` holds what an unscale or vae_decode needs besides the latents (Flux: height, width).
    """
    if decoding.postprocess == "pixels":
        out = _pixels(pipe, z, output_type)
    else:
        out = _through_vae(pipe, decoding, z, output_type, shape)
    extras = dict(decoding.extras)
    if not return_dict:
        return (out, *extras.values())
    module, name = decoding.output.split(":")
    return getattr(importlib.import_module(module), name)(**{decoding.field: out}, **extras)


def _through_vae(pipe, decoding: Decoding, z: torch.Tensor, output_type: str, shape: dict) -> Any:
    """The VAE's decoding of ``z`` and the pipeline's postprocessing (or ``z`` for ``output_type="latent"``)."""
    vae, device = pipe.vae, pipe._execution_device
    if decoding.cast_latents:
        z = z.to(device, vae.dtype)
    if output_type == "latent":
        return z
    z = z.to(device, vae.dtype)
    with torch.no_grad():
        if decoding.vae_decode is not None:
            pixels = decoding.vae_decode(pipe, z, **shape)
        else:
            pixels = vae.decode(decoding.unscale(pipe, z, **shape), return_dict=False)[0]
    if decoding.watermark and pipe.watermark is not None:
        pixels = pipe.watermark.apply_watermark(pixels)
    if decoding.postprocess == "video":
        return pipe.video_processor.postprocess_video(video=pixels, output_type=output_type)
    return pipe.image_processor.postprocess(pixels, output_type=output_type)


def _pixels(pipe, x: torch.Tensor, output_type: str) -> Any:
    """Pixel-space samples in [-1, 1] as the unconditional pipelines return them (pt, numpy or PIL)."""
    image = (x / 2 + 0.5).clamp(0, 1).cpu()
    if output_type != "pt":
        image = image.permute(0, 2, 3, 1).numpy()
    if output_type == "pil":
        image = pipe.numpy_to_pil(image)
    return image


def divide_scaling(pipe, z: torch.Tensor, **_) -> torch.Tensor:
    """The VAE's input of most pipelines: ``z / scaling_factor``."""
    return z / pipe.vae.config.scaling_factor


def scale_and_shift(pipe, z: torch.Tensor, **_) -> torch.Tensor:
    """The VAE's input of the flow image pipelines (SD3, Flux): ``z / scaling_factor + shift_factor``."""
    return z / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor


def per_channel_unscale(pipe, z: torch.Tensor) -> torch.Tensor:
    """The VAE input of the Wan-VAE pipelines (Wan, Qwen-Image): per-channel ``latents_mean`` / ``latents_std``
    undone."""
    config = pipe.vae.config
    mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(z)
    inv_std = 1.0 / torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1).to(z)
    return z / inv_std + mean
