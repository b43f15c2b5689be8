"""Time grids and the coefficients a stateless step needs between grid points.

Every grid is written in the common form ``x_t = alpha_t * x0 + sigma_t * eps``:

* VP diffusion: ``alpha = sqrt(alpha_bar)``, ``sigma = sqrt(1 - alpha_bar)``.
* Rectified flow / flow matching: ``alpha = 1 - sigma`` with ``sigma`` the
  flow time, and the network predicts the velocity ``v = eps - x0``.

Index 0 is the start (noise) and index N the end (data); the model is evaluated
at indices 0..N-1. Grids are read from a diffusers scheduler after
``set_timesteps`` (its ``timesteps``, ``alphas_cumprod``, ``final_alpha_cumprod``
or ``sigmas``), never rebuilt from ``num_train // N`` strides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from hasten.errors import HastenError

Kind = Literal["vp", "flow"]
Prediction = Literal["epsilon", "v_prediction", "sample", "flow"]
PREDICTIONS: dict[str, tuple[str, ...]] = {
    "vp": ("epsilon", "v_prediction", "sample"),
    "flow": ("flow",),
}


@dataclass(frozen=True)
class Grid:
    """A discretised sampling path with N steps (N + 1 points).

    Attributes:
        kind: ``"vp"`` or ``"flow"``.
        prediction: what the network outputs (``epsilon``, ``v_prediction``,
            ``sample`` for VP; ``flow`` velocity for flow matching).
        alpha, sigma: float64 tensors of shape (N + 1,), signal and noise scale.
        timesteps: float64 tensor (N,), the model's time input at points 0..N-1.
        model_alpha, model_sigma: float64 tensors (N,), the scales the network's
            output is read with at points 0..N-1 (default: ``alpha[:N]``,
            ``sigma[:N]``). They differ only where a scheduler lands a step on
            one noise level and evaluates the next at another: DDIM steps
            ``t -> t - T // N`` whatever the next grid timestep is, so with
            ``linspace`` or non-dividing ``trailing`` spacing the state at point
            i + 1 has the scale of ``t_i - T // N`` (``alpha``) but is read as
            if at ``t_{i+1}`` (``model_alpha``), as diffusers does.
    """

    kind: Kind
    prediction: Prediction
    alpha: torch.Tensor
    sigma: torch.Tensor
    timesteps: torch.Tensor
    model_alpha: torch.Tensor | None = None
    model_sigma: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind not in PREDICTIONS:
            raise HastenError(f"grid kind must be one of {sorted(PREDICTIONS)}, got {self.kind!r}")
        if self.prediction not in PREDICTIONS[self.kind]:
            raise HastenError(
                f"prediction {self.prediction!r} is not valid for a {self.kind} grid; "
                f"valid: {', '.join(PREDICTIONS[self.kind])}"
            )
        n = self.timesteps.shape[0]
        if n < 1 or self.alpha.shape != (n + 1,) or self.sigma.shape != (n + 1,):
            raise HastenError(
                f"grid arrays disagree: {n} timesteps need alpha and sigma of length {n + 1}, "
                f"got {tuple(self.alpha.shape)} and {tuple(self.sigma.shape)}"
            )
        for name, full in (("model_alpha", self.alpha), ("model_sigma", self.sigma)):
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, full[:n])
            elif value.shape != (n,):
                raise HastenError(f"grid {name} needs length {n}, got {tuple(value.shape)}")

    @property
    def steps(self) -> int:
        """Number of steps N."""
        return self.timesteps.shape[0]

    def starting_at(self, start: int) -> "Grid":
        """The grid of the steps from point ``start`` on: what an image-to-image run walks (``strength``).

        Point ``start`` becomes point 0 and keeps the scales the model reads it
        with (``model_alpha``, ``model_sigma``): the pipelines noise their image
        latents to that point's own timestep (``add_noise`` / ``scale_noise``),
        not to where a DDIM step into it would land. ``steps`` of the result
        is the number of steps actually run, which every method sees.
        """
        if not isinstance(start, int) or not 0 <= start < self.steps:
            raise HastenError(f"a grid of {self.steps} steps starts at a point 0..{self.steps - 1}, got {start!r}")
        alpha = torch.cat([self.model_alpha[start:start + 1], self.alpha[start + 1:]])
        sigma = torch.cat([self.model_sigma[start:start + 1], self.sigma[start + 1:]])
        return Grid(self.kind, self.prediction, alpha, sigma, self.timesteps[start:], self.model_alpha[start:],
                    self.model_sigma[start:])

    def posterior_std(self, i: int, j: int) -> float:
        """Std of ``q(x_j | x_i, x0)`` for i < j: the DDPM posterior (Ho et al. Eq. 7).

        ``sigma_j^2 / sigma_i^2 * (1 - alpha_i^2 / alpha_j^2)`` with point i read
        at its model scales; 0 where ``sigma_j = 0``.
        """
        ai, aj = float(self.model_alpha[i]), float(self.alpha[j])
        si, sj = float(self.model_sigma[i]), float(self.sigma[j])
        if sj == 0 or aj == 0:
            return 0.0
        return max(0.0, sj**2 / si**2 * (1 - ai**2 / aj**2)) ** 0.5

    @classmethod
    def vp(
        cls,
        alphas_cumprod: torch.Tensor,
        timesteps: torch.Tensor,
        final_alpha_cumprod: float,
        prediction: Prediction = "epsilon",
    ) -> "Grid":
        """VP grid from a training ``alphas_cumprod`` table and the sampled timesteps.

        Point i < N is at training step ``timesteps[i]``; the end point uses
        ``final_alpha_cumprod`` (diffusers' ``set_alpha_to_one`` choice).
        """
        ts = timesteps.long().cpu()
        bars = torch.cat([alphas_cumprod.float().cpu()[ts], torch.tensor([float(final_alpha_cumprod)])])
        # square roots in float32, as diffusers' schedulers take them: coefficients then round alike
        return cls("vp", prediction, bars.sqrt().double(), (1 - bars).sqrt().double(), timesteps.double())

    @classmethod
    def flow(cls, sigmas: torch.Tensor, timesteps: torch.Tensor | None = None) -> "Grid":
        """Flow-matching grid from N + 1 sigmas (1 -> 0); timesteps default to 1000 * sigma."""
        s = sigmas.double()
        ts = s[:-1] * 1000.0 if timesteps is None else timesteps.double()
        return cls("flow", "flow", 1 - s, s, ts)

    @classmethod
    def from_scheduler(cls, scheduler: Any, steps: int | None = None) -> "Grid":
        """Read the grid of a diffusers scheduler, after ``set_timesteps(steps)`` when ``steps`` is given.

        * DDIM / CogVideoXDDIM (``alphas_cumprod``): each step lands on
          ``t - T // N`` (or ``final_alpha_cumprod`` below 0), as their ``step``
          does; the next point is read at the next grid timestep.
        * DDPM: grid point to grid point (its ``previous_timestep``).
        * Euler / EulerAncestral (VE ``sigmas``, the first N + 1): the VP grid with
          ``alpha = 1 / sqrt(1 + sigma^2)``, ``sigma_vp = sigma * alpha``: in VP
          coordinates deterministic Euler is DDIM and ancestral Euler is DDPM.
        * FlowMatchEulerDiscrete: its ``sigmas``.

        ``steps=None`` reads a scheduler the caller already configured (a
        pipeline's own ``retrieve_timesteps``).
        """
        if steps is not None:
            if steps < 1:
                raise HastenError(f"steps must be >= 1, got {steps}")
            scheduler.set_timesteps(steps)
        name, config = type(scheduler).__name__, scheduler.config
        timesteps = scheduler.timesteps.detach().cpu()
        if name in ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"):
            # the points the pipeline's loop visits: interpolation_type="log_linear" makes one sigma more than
            # the timesteps need, and the loop stops at sigmas[N] (sigma_min) without reaching the appended 0
            ve = scheduler.sigmas.detach().cpu().double()[: len(timesteps) + 1]
            alpha = 1 / (1 + ve**2).sqrt()
            return cls("vp", config.prediction_type, alpha, ve * alpha, timesteps.double())
        if name in ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler"):
            # their N + 1 sigmas (the last is 0 or sigma_min), read as their _sigma_to_alpha_sigma_t does
            sig = scheduler.sigmas.detach().cpu().float()[: len(timesteps) + 1]
            if config.get("use_flow_sigmas"):
                return cls.flow(sig, timesteps)
            alpha = 1 / ((sig**2 + 1) ** 0.5)  # in float32, as they compute it: coefficients then round alike
            return cls("vp", config.prediction_type, alpha.double(), (sig * alpha).double(), timesteps.double())
        if "FlowMatch" in name and hasattr(scheduler, "sigmas"):
            return cls.flow(scheduler.sigmas.detach().cpu(), timesteps)
        if not hasattr(scheduler, "alphas_cumprod"):
            raise HastenError(
                f"scheduler {name} is not supported; supported: DDIM, DDPM, CogVideoXDDIM, Euler, "
                "EulerAncestral and FlowMatchEulerDiscrete"
            )
        final = getattr(scheduler, "final_alpha_cumprod", None)
        final = 1.0 if final is None else float(final)
        bars = scheduler.alphas_cumprod.float().cpu()
        ts = timesteps.long()
        if name == "DDPMScheduler":
            return cls.vp(bars, ts, final, config.prediction_type)
        # DDIM's step: prev = t - T // N whatever the next grid timestep is
        prev = ts - config.num_train_timesteps // scheduler.num_inference_steps
        landed = torch.stack([bars[p] if p >= 0 else torch.tensor(final) for p in prev.tolist()])
        read = bars[ts]
        alpha_bar = torch.cat([read[:1], landed])
        return cls("vp", config.prediction_type, alpha_bar.sqrt().double(), (1 - alpha_bar).sqrt().double(),
                   ts.double(), read.sqrt().double(), (1 - read).sqrt().double())
