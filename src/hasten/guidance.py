"""Classifier-free guidance, once for every conditioned network: pipelines' and the embedded ``digits-cond``.

:class:`PipelineDenoiser` turns ``call(x, t, cond)`` (a network on model-dtype
inputs with per-sample conditioning) into hasten's ``denoise(x, index,
sample)``, with classifier-free guidance (batched, rescaled, renormalised, a
per-time scale) and conditioning that depends on the grid index.
"""

from __future__ import annotations

from typing import Callable

import torch

from hasten.denoise import grid_times
from hasten.grid import Grid


class PipelineDenoiser:
    """``denoise(x, index, sample)`` for a network with per-sample conditioning.

    ``call(x, t, cond)`` runs the network on model-dtype inputs, where ``cond``
    is a dict of per-sample tensors already selected for these rows (an entry
    may be None: a mask the pipeline leaves out, passed on as None).
    Classifier-free guidance: with ``uncond`` every row runs on ``uncond`` and
    ``cond`` entries, and ``out = uncond + g (cond - uncond)``, optionally
    rescaled (``guidance_rescale``, Lin et al. Sec. 3.4, as diffusers'
    ``rescale_noise_cfg``) or renormalised to the conditional output's norm
    over the last dimension (``guidance_renorm``: Qwen-Image's true CFG,
    Lumina 2's ``cfg_normalization``). The two run batched in one forward
    (as most pipelines do) where their entries stack, and as two forwards
    where they do not (text of different lengths, a mask on one side only).
    ``guidance_scale`` may be a function of the rows' model times (CogVideoX's
    dynamic CFG, Wan 2.2's second expert's scale), returning one scale per row.
    ``by_index``: conditioning that depends on the grid index rather than the
    sample (ControlNet's guidance window), tensors with one row per grid step,
    selected per evaluated row and handed to ``call`` with the rest of ``cond``.
    """

    needs_sample_ids = True

    def __init__(self, call: Callable, grid: Grid, cond: dict, uncond: dict | None = None, guidance_scale: float = 1.0,
                 guidance_rescale: float = 0.0, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 guidance_renorm: bool = False, by_index: dict[str, torch.Tensor] | None = None):
        self.call, self.grid, self.cond, self.uncond = call, grid, cond, uncond
        self.by_index = by_index or {}
        self.context: Callable | None = None  # e.g. a diffusers cache hook's ``network.cache_context``
        self.guidance_scale, self.guidance_rescale = guidance_scale, guidance_rescale
        self.guidance_renorm = guidance_renorm
        self.dtype, self.device = dtype, torch.device(device)
        self.times = grid_times(grid, self.device)  # on the device once: no host copy per call
        self.joint = uncond is None or _stackable(cond, uncond)

    @property
    def rows_per_input(self) -> int:
        """Network rows per latent row: 2 with batched classifier-free guidance."""
        return 2 if self.uncond is not None and self.joint else 1

    def __call__(self, x: torch.Tensor, index: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        if self.context is None:
            return self._denoise(x, index, sample)
        with self.context():
            return self._denoise(x, index, sample)

    @torch.no_grad()
    def _denoise(self, x: torch.Tensor, index: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        t = self.times[index.to(self.device)]
        xm = x.to(self.device, self.dtype)
        at = select_rows(self.by_index, index)
        pick = {**select_rows(self.cond, sample), **at}
        if self.uncond is None:
            return self.call(xm, t, pick).float().to(x.device)
        un = {**select_rows(self.uncond, sample), **at}
        if self.joint:
            both = {k: None if pick[k] is None else torch.cat([un[k], pick[k]]) for k in pick}
            out_u, out_c = self.call(torch.cat([xm, xm]), torch.cat([t, t]), both).float().chunk(2)
        else:
            out_c, out_u = self.call(xm, t, pick).float(), self.call(xm, t, un).float()
        scale = self.guidance_scale
        if callable(scale):
            scale = scale(t).float().view(-1, *([1] * (out_c.ndim - 1))).to(out_c.device)
        out = out_u + scale * (out_c - out_u)
        if self.guidance_rescale > 0:
            dims = list(range(1, out.ndim))
            std_c, std_o = out_c.std(dim=dims, keepdim=True), out.std(dim=dims, keepdim=True)
            out = self.guidance_rescale * out * (std_c / std_o) + (1 - self.guidance_rescale) * out
        if self.guidance_renorm:
            out = out * (torch.norm(out_c, dim=-1, keepdim=True) / torch.norm(out, dim=-1, keepdim=True))
        return out.to(x.device)


def select_rows(entries: dict, rows: torch.Tensor) -> dict:
    """The rows ``rows`` (sample ids, grid indices) of every entry (None entries stay None)."""
    return {k: None if v is None else v[rows.to(v.device)] for k, v in entries.items()}


def _stackable(cond: dict, uncond: dict) -> bool:
    """Whether cond and uncond entries stack into one batch: same keys, shapes beyond the batch, None on both sides."""
    if cond.keys() != uncond.keys():
        return False
    for k, c in cond.items():
        u = uncond[k]
        if (c is None) != (u is None) or (c is not None and c.shape[1:] != u.shape[1:]):
            return False
    return True
