"""Denoisers: ``denoise(x, index) -> output`` for a batch of (latent, grid index) pairs.

A denoiser is bound to a grid: it maps each grid index to whatever the network
takes as time (a training timestep, a sigma, ...). Conditioning and guidance
belong here, once, for every method. Outputs come back in float32.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from hasten.grid import Grid


class Denoiser(Protocol):
    """Callable ``(x: (B, ...), index: (B,) long) -> output (B, ...)``, float32 in and out."""

    def __call__(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor: ...


class TimestepDenoiser:
    """Wrap ``net(x, t) -> output`` that takes the grid's timesteps as its time input.

    ``net`` may return a tensor or an object with ``.sample`` (diffusers models).
    The input is cast to the network's dtype and device; the output back to float32.
    """

    def __init__(self, net: Callable, grid: Grid, dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        self.net = net
        self.grid = grid
        params = next(iter(net.parameters()), None) if isinstance(net, torch.nn.Module) else None
        self.dtype = dtype or (params.dtype if params is not None else torch.float32)
        self.device = torch.device(device) if device is not None else (params.device if params is not None else torch.device("cpu"))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        t = self.grid.timesteps[index.cpu()].to(self.device)
        out = self.net(x.to(self.device, self.dtype), t)
        out = getattr(out, "sample", out)
        return out.to(x.device, torch.float32)
