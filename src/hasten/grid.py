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
    """

    kind: Kind
    prediction: Prediction
    alpha: torch.Tensor
    sigma: torch.Tensor
    timesteps: torch.Tensor

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

    @property
    def steps(self) -> int:
        """Number of steps N."""
        return self.timesteps.shape[0]

    def posterior_std(self, i: int, j: int) -> float:
        """Std of ``q(x_j | x_i, x0)`` for i < j: the DDPM posterior (Ho et al. Eq. 7).

        ``sigma_j^2 / sigma_i^2 * (1 - alpha_i^2 / alpha_j^2)``; 0 where ``sigma_j = 0``.
        """
        ai, aj, si, sj = (float(v) for v in (self.alpha[i], self.alpha[j], self.sigma[i], self.sigma[j]))
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
    def from_scheduler(cls, scheduler: Any, steps: int) -> "Grid":
        """Read the grid of a diffusers scheduler after ``set_timesteps(steps)``.

        Supports the DDIM/DDPM family (``alphas_cumprod``) and
        ``FlowMatchEulerDiscreteScheduler`` (``sigmas``). The scheduler is
        configured in place, as the pipeline itself would do.
        """
        if steps < 1:
            raise HastenError(f"steps must be >= 1, got {steps}")
        scheduler.set_timesteps(steps)
        config = scheduler.config
        if hasattr(scheduler, "alphas_cumprod"):
            final = getattr(scheduler, "final_alpha_cumprod", None)
            if final is None:
                final = 1.0
            return cls.vp(scheduler.alphas_cumprod, scheduler.timesteps, float(final), config.prediction_type)
        if hasattr(scheduler, "sigmas") and "FlowMatch" in type(scheduler).__name__:
            return cls.flow(scheduler.sigmas, scheduler.timesteps)
        raise HastenError(
            f"scheduler {type(scheduler).__name__} is not supported; supported: schedulers with "
            "alphas_cumprod (DDIM, DDPM, ...) and FlowMatchEulerDiscreteScheduler"
        )
