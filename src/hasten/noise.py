"""The noise a run starts from and the per-step noise of stochastic solvers, drawn the same way everywhere.

Both are drawn on the CPU from seeded ``torch.Generator``s, so every device and
executor starts from the same numbers: the initial latents from ``seed``, the
per-step noise of ``ddpm`` / ``euler-stochastic`` from ``seed + 1``.
"""

from __future__ import annotations

import torch

from hasten.errors import HastenError
from hasten.steps import NOISY_SOLVERS


def initial_noise(model, batch: int, seed: int) -> torch.Tensor:
    """Standard normal noise (batch, *latent_shape) from ``torch.Generator().manual_seed(seed)``."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise HastenError(f"batch must be an integer >= 1, got {batch!r}")
    try:
        return torch.randn((batch, *model.latent_shape), generator=torch.Generator().manual_seed(seed))
    except RuntimeError as err:  # the host cannot hold even the initial latents
        size = batch * 4
        for n in model.latent_shape:
            size *= n
        raise HastenError(f"batch={batch}: the initial latents alone need {size / 2**30:.1f} GiB, more than this "
                          f"machine can allocate ({str(err).splitlines()[0][:80]})") from None


def draw_noise(x: torch.Tensor, steps: int, solver: str | None, seed: int) -> torch.Tensor | None:
    """The per-step noise of ddpm or euler-stochastic (steps, *x.shape), drawn once before sampling; None for ODE solvers.

    Drawn on the CPU from a generator seeded ``seed + 1`` (the initial noise is the same for every
    solver and device), then moved to the latents' device.
    """
    if solver not in NOISY_SOLVERS:
        return None
    return torch.randn((steps, *x.shape), generator=torch.Generator().manual_seed(seed + 1)).to(x.device)
