"""One home for parameterisation conversions: network output <-> (x0, eps).

A latent at scales (alpha, sigma) is ``x = alpha x0 + sigma eps``. A network
predicts one of ``epsilon``, ``v_prediction`` (``v = alpha eps - sigma x0``),
``sample`` (x0) or flow velocity (``v = eps - x0``, with ``alpha = 1 - sigma``).
The two functions below are the only place these relations are written; the
grid-point forms read a point's model scales (see :class:`hasten.grid.Grid`).
Scales may be floats or per-row tensors broadcastable against ``x``.
"""

from __future__ import annotations

import torch

from hasten.grid import Grid


def to_x0_eps(prediction: str, x: torch.Tensor, output: torch.Tensor, alpha, sigma) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0, eps)`` implied by a network ``output`` for latent ``x`` at scales ``alpha``, ``sigma``."""
    if prediction == "epsilon":
        return (x - sigma * output) / alpha, output
    if prediction == "v_prediction":
        return alpha * x - sigma * output, sigma * x + alpha * output
    if prediction == "sample":
        return output, (x - alpha * output) / sigma
    # flow velocity v = eps - x0 with x = (1 - sigma) x0 + sigma eps
    return x - sigma * output, x + (1 - sigma) * output


def from_x0_eps(prediction: str, x0: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """The network output that predicts ``(x0, eps)`` at scales ``alpha``, ``sigma``."""
    if prediction == "epsilon":
        return eps
    if prediction == "v_prediction":
        return alpha * eps - sigma * x0
    if prediction == "sample":
        return x0
    return eps - x0


def predict_x0_eps(grid: Grid, x: torch.Tensor, output: torch.Tensor, i: int, clip: float | None = None,
                   clip_eps: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a network output at grid point i into (x0, eps) estimates (read at the point's model scales).

    ``clip``: clamp x0 to ``[-clip, clip]`` (diffusers' ``clip_sample_range``)
    and, with ``clip_eps``, recompute eps from the clamped x0. DDPM's posterior
    and CogVideoXDDIM recompute it; DDIMScheduler keeps the network's eps
    (unless ``use_clipped_model_output``).
    """
    a, s = float(grid.model_alpha[i]), float(grid.model_sigma[i])
    x0, eps = to_x0_eps(grid.prediction, x, output, a, s)
    if clip is None:
        return x0, eps
    x0 = x0.clamp(-clip, clip)
    return x0, (x - a * x0) / s if clip_eps else eps


def output_for_x0(grid: Grid, x: torch.Tensor, x0: torch.Tensor, i: int) -> torch.Tensor:
    """The network output at grid point i that would predict ``x0`` for latent ``x``."""
    a, s = float(grid.model_alpha[i]), float(grid.model_sigma[i])
    return from_x0_eps(grid.prediction, x0, (x - a * x0) / s, a, s)


def output_for_eps(grid: Grid, x: torch.Tensor, eps: torch.Tensor, i: int) -> torch.Tensor:
    """The network output at grid point i that would predict ``eps`` for latent ``x``."""
    a, s = float(grid.model_alpha[i]), float(grid.model_sigma[i])
    return from_x0_eps(grid.prediction, (x - s * eps) / a, eps, a, s)
