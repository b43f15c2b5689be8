"""What an embedded model provides to the engine."""

from __future__ import annotations

from typing import Protocol

import torch

from hasten.denoise import Denoiser
from hasten.grid import Grid


class EmbeddedModel(Protocol):
    """A model hasten can sample without any download."""

    name: str
    latent_shape: tuple[int, ...]

    def grid(self, steps: int) -> Grid:
        """The sampling grid with ``steps`` steps."""

    def denoiser(self, grid: Grid) -> Denoiser:
        """The network (or exact formula) bound to ``grid``."""

    def decode(self, x: torch.Tensor) -> torch.Tensor | None:
        """Images (B, C, H, W) in [0, 1], or ``None`` where latents are not images."""
