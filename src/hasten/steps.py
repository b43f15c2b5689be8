"""Stateless first-order steps between any two grid points i -> j.

A step is ``step(x, output, i, j, noise=None, history=()) -> x_j``; it is
linear in ``(x, output)`` and always computed in float32, whatever the model's
dtype. CHORDS' coarse jumps and rectification (Eq. 3-4) are built from it.
``history`` (the data predictions of the previous points) is read only by the
multistep steps of :mod:`hasten.multistep`; the first-order steps here ignore it.
"""

from __future__ import annotations

from typing import Protocol

import torch

from hasten.errors import HastenError
from hasten.grid import Grid
from hasten.parameterisation import output_for_x0, predict_x0_eps


class Step(Protocol):
    """``step(x, output, i, j, noise=None, history=())``: move ``x`` from grid point i to j."""

    name: str
    grid: Grid

    def __call__(
        self, x: torch.Tensor, output: torch.Tensor, i: int, j: int, noise: torch.Tensor | None = None,
        history: tuple = (),
    ) -> torch.Tensor: ...


class DDIMStep:
    """DDIM (eta = 0): the first-order exponential integrator of the PF-ODE.

    ``x_j = alpha_j * x0_hat + sigma_j * eps_hat`` (Song et al. 2021, Eq. 12),
    valid for any jump i -> j and any VP parameterisation.
    """

    name = "ddim"

    def __init__(self, grid: Grid, clip: float | None = None, clip_eps: bool = False) -> None:
        self.grid, self.clip, self.clip_eps = grid, clip, clip_eps

    def __call__(self, x, output, i, j, noise=None, history=()):
        x, output = x.float(), output.float()
        x0, eps = predict_x0_eps(self.grid, x, output, i, self.clip, self.clip_eps)
        return float(self.grid.alpha[j]) * x0 + float(self.grid.sigma[j]) * eps


class DDPMStep:
    """DDPM ancestral sampling with noise drawn once, before any iteration.

    ``noise`` has shape (N, B, ...): step i -> j adds ``noise[i]`` scaled by the
    posterior std (``Grid.posterior_std``). Written as DDIM with eta = 1,
    ``alpha_j x0 + sqrt(sigma_j^2 - s^2) eps + s z``, which equals the DDPM
    posterior mean plus noise. Because the noise is fixed, the step is a
    deterministic function of (x, output), so parallel methods converge to
    exactly the sequential DDPM trajectory of the same seed.
    """

    name = "ddpm"

    def __init__(self, grid: Grid, noise: torch.Tensor, clip: float | None = None) -> None:
        if grid.kind != "vp":
            raise HastenError(f"solver 'ddpm' needs a VP grid, got a {grid.kind} grid; use 'euler'")
        if noise is None or noise.shape[0] != grid.steps:
            raise HastenError(f"solver 'ddpm' needs noise of shape (steps={grid.steps}, batch, ...), got "
                              f"{None if noise is None else tuple(noise.shape)}")
        self.grid, self.clip = grid, clip
        self.noise = noise.float()

    def __call__(self, x, output, i, j, noise=None, history=()):
        x, output = x.float(), output.float()
        x0, eps = predict_x0_eps(self.grid, x, output, i, self.clip)
        s = self.grid.posterior_std(i, j)
        sj = float(self.grid.sigma[j])
        z = self.noise[i] if noise is None else noise
        return float(self.grid.alpha[j]) * x0 + max(0.0, sj**2 - s**2) ** 0.5 * eps + s * z


class EulerStep:
    """Flow-matching Euler: ``x_j = x_i + (sigma_j - sigma_i) * v`` for any jump i -> j."""

    name = "euler"

    def __init__(self, grid: Grid) -> None:
        if grid.kind != "flow":
            raise HastenError(f"solver 'euler' needs a flow-matching grid, got a {grid.kind} grid; use 'ddim'")
        self.grid = grid

    def __call__(self, x, output, i, j, noise=None, history=()):
        ds = float(self.grid.sigma[j]) - float(self.grid.sigma[i])
        return x.float() + ds * output.float()


class StochasticEulerStep:
    """Flow matching with re-noising (diffusers' ``stochastic_sampling``), noise drawn before any iteration.

    ``x_j = (1 - sigma_j) * x0_hat + sigma_j * noise[i]`` with
    ``x0_hat = x_i - sigma_i * v``: the clean-sample estimate carried to
    ``sigma_j`` with fresh noise, as ``FlowMatchEulerDiscreteScheduler.step``
    does. The noise is fixed, so parallel methods converge to the sequential
    trajectory of the same draws (as with :class:`DDPMStep`).
    """

    name = "euler-stochastic"

    def __init__(self, grid: Grid, noise: torch.Tensor) -> None:
        if grid.kind != "flow":
            raise HastenError(f"solver 'euler-stochastic' needs a flow-matching grid, got a {grid.kind} grid")
        if noise is None or noise.shape[0] != grid.steps:
            raise HastenError(f"solver 'euler-stochastic' needs noise of shape (steps={grid.steps}, batch, ...), "
                              f"got {None if noise is None else tuple(noise.shape)}")
        self.grid, self.noise = grid, noise.float()

    def __call__(self, x, output, i, j, noise=None, history=()):
        sj = float(self.grid.sigma[j])
        x0 = x.float() - float(self.grid.sigma[i]) * output.float()
        return (1 - sj) * x0 + sj * (self.noise[i] if noise is None else noise)


SOLVERS = ("ddim", "ddpm", "euler", "euler-stochastic")
NOISY_SOLVERS = ("ddpm", "euler-stochastic", "dpm++2m-sde")  # steps that take noise drawn before sampling


def make_step(grid: Grid, solver: str | None = None, noise: torch.Tensor | None = None,
              clip: float | None = None, clip_eps: bool = False, schedule=None) -> Step:
    """The step named ``solver``, or the natural one for the grid (ddim for VP, euler for flow).

    ``ddpm`` and ``euler-stochastic`` need ``noise`` of shape (N, B, ...),
    drawn before sampling starts. ``clip`` clamps the x0 estimate of the VP
    steps (diffusers' ``clip_sample_range``); ``clip_eps`` makes ddim recompute
    eps from the clamped x0 (CogVideoXDDIM), as ddpm always does. The multistep
    solvers of a pipeline's scheduler (``dpm++2m``, ``dpm++2m-sde``, ``unipc``)
    need its ``schedule`` (:class:`hasten.multistep.MultistepSchedule`).
    """
    from hasten.multistep import MULTISTEP_SOLVERS, DPMSolverPPStep, UniPCStep

    if solver in MULTISTEP_SOLVERS:
        if schedule is None:
            raise HastenError(f"solver {solver!r} is a pipeline scheduler's multistep solver and needs its schedule; "
                              f"valid solvers without one: {', '.join(SOLVERS)}")
        if solver == "unipc":
            return UniPCStep(grid, schedule)
        return DPMSolverPPStep(grid, schedule, sde=solver == "dpm++2m-sde", noise=noise)
    if solver is None:
        solver = "euler" if grid.kind == "flow" else "ddim"
    if clip is not None and solver not in ("ddim", "ddpm"):
        raise HastenError(f"clip applies to the solvers ddim and ddpm, not {solver!r}")
    if solver == "ddim":
        return DDIMStep(grid, clip, clip_eps)
    if solver == "euler":
        return EulerStep(grid)
    if solver == "ddpm":
        return DDPMStep(grid, noise, clip)
    if solver == "euler-stochastic":
        return StochasticEulerStep(grid, noise)
    raise HastenError(f"unknown solver {solver!r}; valid: {', '.join(SOLVERS)}")


def predicted_x0(step: Step, x: torch.Tensor, output: torch.Tensor, i: int) -> torch.Tensor:
    """The clean-sample prediction of a network output (ParaSolver-Turbo Algorithm 1, line 4)."""
    return predict_x0_eps(step.grid, x.float(), output.float(), i, getattr(step, "clip", None))[0]


def linear_step(step: Step, x: torch.Tensor, x0: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """The model-free step i -> j that keeps the clean-sample prediction ``x0`` fixed.

    ParaSolver-Turbo's linear solver H (Eq. 7-8): the step is fed the output
    that predicts ``x0`` at ``x``, so it is affine in ``x`` and costs no model
    call. Multi-step spans chain unit steps (each with its own DDPM noise).
    """
    for k in range(i, j):
        x = step(x, output_for_x0(step.grid, x, x0, k), k, k + 1)
    return x
