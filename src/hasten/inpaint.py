"""The inpainting step: a step that keeps the known region of the image.

The inpainting pipelines whose network sees only the latents (the 4-channel
Stable Diffusion / SDXL UNets, Flux's inpaint pipeline) paste the known region
back after every step::

    x_{i+1} = (1 - m) * add_noise(image, noise, t_{i+1}) + m * step(x_i)

(the clean image latents after the last step), with ``m`` the mask (1 where the
image is repainted) and ``noise`` the noise the initial latents were drawn
with. hasten makes that blend part of the step: :class:`KnownRegionStep` wraps
any step and blends its result at the landing point j. The blend is a pure
function of the step's result and j (the noised image at j is
``model_alpha_j * image + model_sigma_j * noise``, fixed before sampling), so
every method applies it identically, wherever the step is used: CHORDS' jumps
and rectification, the window methods' Newton and linear steps, SRDS' coarse
sweeps. Their corrections ``fine - G(stale) + G(accurate)`` keep the known
region exactly, since the known part cancels to ``known_j``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hasten.grid import Grid
from hasten.steps import Step


@dataclass(frozen=True)
class KnownRegion:
    """What an inpainting keeps: ``mask`` (1 = repaint), the clean ``image`` latents and the initial ``noise``.

    All three in hasten's latent convention (the pipelines' own for VP and flow
    schedulers; the VE Euler latents are converted by the grid's scales),
    broadcastable against the latents (B, ...).
    """

    mask: torch.Tensor
    image: torch.Tensor
    noise: torch.Tensor

    def at(self, grid: Grid, j: int) -> torch.Tensor:
        """The known latents at grid point j: the image noised to j's model time; the clean image at the end."""
        if j >= grid.steps:
            return self.image
        return float(grid.model_alpha[j]) * self.image + float(grid.model_sigma[j]) * self.noise


class KnownRegionStep:
    """``step`` followed by the inpainting blend at the landing point: ``(1 - m) known_j + m step(x, out, i, j)``."""

    def __init__(self, step: Step, region: KnownRegion):
        self.inner, self.region = step, region
        self.name, self.grid = step.name, step.grid
        for attr in ("clip", "noise", "memory", "data"):  # read by predicted_x0, the callback wrapper, remember
            if hasattr(step, attr):
                setattr(self, attr, getattr(step, attr))
        self.repaint = region.mask.float()
        self.keep = 1 - self.repaint

    def __call__(self, x: torch.Tensor, output: torch.Tensor, i: int, j: int,
                 noise: torch.Tensor | None = None, history: tuple = ()) -> torch.Tensor:
        moved = self.inner(x, output, i, j, noise, history)
        return self.keep * self.region.at(self.grid, j) + self.repaint * moved
