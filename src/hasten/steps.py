"""Stateless first-order steps between any two grid points i -> j.

A step is ``step(x, output, i, j, noise=None) -> x_j``; it is linear in
``(x, output)`` and always computed in float32, whatever the model's dtype.
CHORDS' coarse jumps and rectification (Eq. 3-4) are built from it.
"""

from __future__ import annotations

from typing import Protocol

import torch

from hasten.errors import HastenError
from hasten.grid import Grid


class Step(Protocol):
    """``step(x, output, i, j, noise=None)``: move ``x`` from grid point i to j."""

    name: str
    grid: Grid

    def __call__(
        self, x: torch.Tensor, output: torch.Tensor, i: int, j: int, noise: torch.Tensor | None = None
    ) -> torch.Tensor: ...


def predict_x0_eps(grid: Grid, x: torch.Tensor, output: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a network output at grid point i into (x0, eps) estimates."""
    a, s = float(grid.alpha[i]), float(grid.sigma[i])
    if grid.prediction == "epsilon":
        return (x - s * output) / a, output
    if grid.prediction == "v_prediction":
        return a * x - s * output, s * x + a * output
    if grid.prediction == "sample":
        return output, (x - a * output) / s
    # flow velocity v = eps - x0 with x = (1 - s) x0 + s eps
    return x - s * output, x + (1 - s) * output


class DDIMStep:
    """DDIM (eta = 0): the first-order exponential integrator of the PF-ODE.

    ``x_j = alpha_j * x0_hat + sigma_j * eps_hat`` (Song et al. 2021, Eq. 12),
    valid for any jump i -> j and any VP parameterisation.
    """

    name = "ddim"

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def __call__(self, x, output, i, j, noise=None):
        x, output = x.float(), output.float()
        x0, eps = predict_x0_eps(self.grid, x, output, i)
        return float(self.grid.alpha[j]) * x0 + float(self.grid.sigma[j]) * eps


class EulerStep:
    """Flow-matching Euler: ``x_j = x_i + (sigma_j - sigma_i) * v`` for any jump i -> j."""

    name = "euler"

    def __init__(self, grid: Grid) -> None:
        if grid.kind != "flow":
            raise HastenError(f"solver 'euler' needs a flow-matching grid, got a {grid.kind} grid; use 'ddim'")
        self.grid = grid

    def __call__(self, x, output, i, j, noise=None):
        ds = float(self.grid.sigma[j]) - float(self.grid.sigma[i])
        return x.float() + ds * output.float()


SOLVERS = {"ddim": DDIMStep, "euler": EulerStep}


def make_step(grid: Grid, solver: str | None = None) -> Step:
    """The step named ``solver``, or the natural one for the grid (ddim for VP, euler for flow)."""
    if solver is None:
        solver = "euler" if grid.kind == "flow" else "ddim"
    if solver not in SOLVERS:
        raise HastenError(f"unknown solver {solver!r}; valid: {', '.join(SOLVERS)}")
    return SOLVERS[solver](grid)
