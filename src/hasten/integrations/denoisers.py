"""Denoisers for diffusers models: time mapping, per-sample conditioning and guidance, once for every method."""

from __future__ import annotations

from typing import Callable

import torch

from hasten.denoise import grid_times
from hasten.grid import Grid


class PipelineDenoiser:
    """``denoise(x, index, sample)`` for a diffusers network with per-sample conditioning.

    ``call(x, t, cond)`` runs the network on model-dtype inputs, where ``cond``
    is a dict of per-sample tensors already selected for these rows.
    Classifier-free guidance (batched cond/uncond, as the pipelines do): with
    ``guidance_scale > 1`` every row runs twice, on ``uncond`` and ``cond``
    entries, and ``out = uncond + g (cond - uncond)``, optionally rescaled
    (``guidance_rescale``, Lin et al. Sec. 3.4, as diffusers' ``rescale_noise_cfg``).
    ``guidance_scale`` may be a function of the rows' model times (CogVideoX's
    dynamic CFG), returning one scale per row.
    ``by_index``: conditioning that depends on the grid index rather than the
    sample (ControlNet's guidance window), tensors with one row per grid step,
    selected per evaluated row and handed to ``call`` with the rest of ``cond``.
    """

    needs_sample_ids = True

    def __init__(self, call: Callable, grid: Grid, cond: dict, uncond: dict | None = None, guidance_scale: float = 1.0,
                 guidance_rescale: float = 0.0, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 by_index: dict[str, torch.Tensor] | None = None):
        self.call, self.grid, self.cond, self.uncond = call, grid, cond, uncond
        self.by_index = by_index or {}
        self.context: Callable | None = None  # e.g. a diffusers cache hook's ``network.cache_context``
        self.guidance_scale, self.guidance_rescale = guidance_scale, guidance_rescale
        self.dtype, self.device = dtype, torch.device(device)
        self.times = grid_times(grid, self.device)  # on the device once: no host copy per call

    @property
    def rows_per_input(self) -> int:
        """Network rows per latent row: 2 with batched classifier-free guidance."""
        return 1 if self.uncond is None else 2

    def __call__(self, x: torch.Tensor, index: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        if self.context is None:
            return self._denoise(x, index, sample)
        with self.context():
            return self._denoise(x, index, sample)

    @torch.no_grad()
    def _denoise(self, x: torch.Tensor, index: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        t = self.times[index.to(self.device)]
        xm = x.to(self.device, self.dtype)
        at = {k: v[index.to(v.device)] for k, v in self.by_index.items()}
        pick = {**{k: v[sample.to(v.device)] for k, v in self.cond.items()}, **at}
        if self.uncond is None:
            return self.call(xm, t, pick).float().to(x.device)
        un = {**{k: v[sample.to(v.device)] for k, v in self.uncond.items()}, **at}
        both = {k: torch.cat([un[k], pick[k]]) for k in pick}
        out_u, out_c = self.call(torch.cat([xm, xm]), torch.cat([t, t]), both).float().chunk(2)
        scale = self.guidance_scale
        if callable(scale):
            scale = scale(t).float().view(-1, *([1] * (out_c.ndim - 1))).to(out_c.device)
        out = out_u + scale * (out_c - out_u)
        if self.guidance_rescale > 0:
            dims = list(range(1, out.ndim))
            std_c, std_o = out_c.std(dim=dims, keepdim=True), out.std(dim=dims, keepdim=True)
            out = self.guidance_rescale * out * (std_c / std_o) + (1 - self.guidance_rescale) * out
        return out.to(x.device)
