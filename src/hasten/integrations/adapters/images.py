"""What the image-input workflows share across families: a start from a noised image, inpainting, ControlNet weights.

* **Image-to-image** pipelines start mid-grid: ``get_timesteps(steps, strength)``
  keeps ``timesteps[t_start:]`` and ``prepare_latents`` noises the encoded image
  to the first of them. :func:`image_latents` runs exactly those two pipeline
  helpers and returns the plan of the steps actually run
  (:meth:`~hasten.integrations.schedulers.SchedulerPlan.starting_at`), so every
  method, cache and CHORDS initialisation sees the grid it really walks.
* **Inpainting**, two ways, as the pipelines do it: a 9-channel UNet (the
  inpainting checkpoints) takes the mask and the masked image latents as extra
  input channels (conditioning, in the denoiser); a 4-channel UNet, and Flux's
  inpaint pipeline, paste the known region back after every step: that blend is
  part of hasten's step (:class:`~hasten.inpaint.KnownRegionStep`), a pure
  function of the step's result and its grid index, so every method applies it
  identically.
* **ControlNet** runs on the same input as the network, every evaluation. Its
  weight at step i is ``controlnet_conditioning_scale * keep_i`` with ``keep_i = 0``
  outside the guidance window (``i / N < control_guidance_start`` or
  ``(i + 1) / N > control_guidance_end``), as the pipelines compute it. hasten
  keeps that weight as a function of the grid index (the denoiser's
  ``by_index`` conditioning), so a round that evaluates indices inside and
  outside the window at once (CHORDS' cores, a ParaDiGMS window) weighs each row
  as the sequential loop would at its index.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch

from hasten.errors import HastenError
from hasten.integrations.adapters.base import Call, call_with


def image_latents(c: Call, pipe, **given) -> Any:
    """The pipeline's ``prepare_latents`` (by name, ``given`` first) from its image at the first timestep
    ``strength`` runs (``get_timesteps``); ``c.plan`` becomes the plan of the steps run.

    With a first-order counterpart scheduler both helpers run on a shallow view
    of ``pipe`` holding it (the run is the pipeline run with that counterpart,
    as its notice says); ``pipe`` itself is not changed.
    """
    args, scheduler = c.args, c.plan.scheduler
    view = pipe
    if scheduler is not pipe.scheduler:
        view = copy.copy(pipe)
        object.__setattr__(view, "scheduler", scheduler)  # bypasses the pipeline's config registration
    steps, strength = args["num_inference_steps"], args["strength"]
    timesteps, run = view.get_timesteps(steps, strength, c.device)
    if run < 1:
        raise HastenError(f"strength={strength} with num_inference_steps={steps} leaves no step to run; raise "
                          "strength or num_inference_steps")
    c.plan = c.plan.starting_at(len(scheduler.timesteps) - len(timesteps))
    return call_with(view.prepare_latents, args, timestep=timesteps[:1].repeat(c.count), device=c.device, **given)


def refuse_asymmetric_vae(pipe) -> None:
    if type(pipe.vae).__name__ == "AsymmetricAutoencoderKL":
        raise HastenError(f"{type(pipe).__name__} with AsymmetricAutoencoderKL is not supported (its decoder takes "
                          "the mask and image); supported: AutoencoderKL")


def unet_inpaint_channels(pipe) -> int:
    """The inpainting UNet's input channels: 9 (mask and masked image as input) or 4 (the known region blended)."""
    channels = pipe.unet.config.in_channels
    if channels not in (4, 9):
        raise HastenError(f"{type(pipe).__name__}: the UNet takes {channels} input channels; supported: 4 (the known "
                          "region is blended back after every step) or 9 (mask and masked image as input)")
    return channels


def nets(controlnet) -> list:
    """The ControlNets of a pipeline: one, or the members of a Multi-ControlNet."""
    return list(controlnet.nets) if hasattr(controlnet, "nets") else [controlnet]


def control_window(count: int, start, end) -> tuple[list[float], list[float]]:
    """``control_guidance_start`` / ``end`` as one entry per ControlNet, broadcast as the pipelines do."""
    if not isinstance(start, list) and isinstance(end, list):
        start = len(end) * [start]
    elif not isinstance(end, list) and isinstance(start, list):
        end = len(start) * [end]
    elif not isinstance(start, list):
        start, end = count * [start], count * [end]
    return start, end


def control_scales(controlnet, scale, count: int) -> list[float]:
    """``controlnet_conditioning_scale`` per ControlNet: a float for all, or a list (one ControlNet takes its first)."""
    if hasattr(controlnet, "nets"):
        return [float(s) for s in scale] if isinstance(scale, (list, tuple)) else [float(scale)] * count
    return [float(scale[0] if isinstance(scale, (list, tuple)) else scale)]


def control_weights(steps: int, scales: Sequence[float], starts: Sequence[float], ends: Sequence[float],
                    device) -> torch.Tensor:
    """(N, nets): each ControlNet's residual weight at each grid index, ``scale * keep_i`` (the pipelines' rule)."""
    rows = [[scale * (1.0 - float(i / steps < s or (i + 1) / steps > e)) for scale, s, e in zip(scales, starts, ends)]
            for i in range(steps)]
    return torch.tensor(rows, dtype=torch.float32, device=device)


def control_by_index(controlnet, args: dict, steps: int, device) -> dict[str, torch.Tensor]:
    """The denoiser's ``by_index`` conditioning of the call's ControlNet(s): their weights per grid index."""
    count = len(nets(controlnet))
    starts, ends = control_window(count, args["control_guidance_start"], args["control_guidance_end"])
    scales = control_scales(controlnet, args["controlnet_conditioning_scale"], count)
    return {"control_weight": control_weights(steps, scales, starts, ends, device)}


def per_row(weights: torch.Tensor, ndim: int, dtype) -> torch.Tensor:
    """One ControlNet's per-row weights (rows,), shaped to scale residuals of ``ndim`` dimensions."""
    return weights.to(dtype).view(-1, *([1] * (ndim - 1)))
