"""An analytic Gaussian-mixture model with an exact denoiser.

Data ``x0 ~ sum_m w_m N(mu_m, s_m^2 I)`` in any dimension D. Under
``x_t = alpha x0 + sigma eps`` every component stays Gaussian,
``N(alpha mu_m, v_m I)`` with ``v_m = alpha^2 s_m^2 + sigma^2``, so the exact
posterior means are closed-form:

    E[x0 | x, m]  = mu_m + alpha s_m^2 / v_m * (x - alpha mu_m)
    E[eps | x, m] = sigma / v_m * (x - alpha mu_m)

weighted by the responsibilities ``r_m(x)``. From them the exact epsilon,
v-, x0- or flow-velocity prediction follows. Instant, exact, no weights.
"""

from __future__ import annotations


import torch

from hasten.errors import HastenError
from hasten.grid import PREDICTIONS, Grid


class GaussianMixture:
    """A fixed random mixture (seeded) with a VP or flow-matching sampling grid.

    Args:
        dim: latent dimension D.
        components: number of mixture components.
        kind: ``"vp"`` (DDIM over a linear-beta, 1000-step schedule, trailing
            spacing) or ``"flow"`` (flow-matching Euler, shift 1).
        prediction: network parameterisation; default ``epsilon`` (VP) / ``flow``.
        seed: seed of the mixture's parameters.
    """

    def __init__(self, dim: int = 16, components: int = 8, kind: str = "vp", prediction: str | None = None, seed: int = 0):
        if not isinstance(dim, int) or dim < 1:
            raise HastenError(f"dim must be an integer >= 1, got {dim!r}")
        if not isinstance(components, int) or components < 1:
            raise HastenError(f"components must be an integer >= 1, got {components!r}")
        if kind not in PREDICTIONS:
            raise HastenError(f"kind must be one of {sorted(PREDICTIONS)}, got {kind!r}")
        prediction = prediction or PREDICTIONS[kind][0]
        if prediction not in PREDICTIONS[kind]:
            raise HastenError(f"prediction {prediction!r} is not valid for kind {kind!r}; valid: {PREDICTIONS[kind]}")
        gen = torch.Generator().manual_seed(seed)
        self.name = "gmm" if kind == "vp" else "gmm-flow"
        self.kind, self.prediction = kind, prediction
        self.latent_shape = (dim,)
        self.means = 1.5 * torch.randn(components, dim, generator=gen, dtype=torch.float64)
        self.stds = 0.2 + 0.3 * torch.rand(components, generator=gen, dtype=torch.float64)
        self.weights = torch.softmax(torch.randn(components, generator=gen, dtype=torch.float64), 0)

    def grid(self, steps: int) -> Grid:
        from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

        if self.kind == "vp":
            scheduler = DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=True, prediction_type=self.prediction)
        else:
            scheduler = FlowMatchEulerDiscreteScheduler()
        return Grid.from_scheduler(scheduler, steps)

    def posterior(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact ``(E[x0 | x], E[eps | x])`` for rows of ``x`` at scales ``alpha``, ``sigma`` (B,)."""
        x = x.double().flatten(1)
        a, s = alpha.double()[:, None], sigma.double()[:, None]  # (B, 1)
        var = a**2 * self.stds[None, :] ** 2 + s**2  # (B, M)
        diff = x[:, None, :] - a[:, :, None] * self.means[None]  # (B, M, D)
        d = x.shape[1]
        logp = self.weights.log()[None] - 0.5 * d * var.log() - 0.5 * diff.pow(2).sum(-1) / var
        resp = torch.softmax(logp, dim=1)[:, :, None]  # (B, M, 1)
        x0 = (resp * (self.means[None] + (a * self.stds[None] ** 2 / var)[:, :, None] * diff)).sum(1)
        eps = (resp * ((s / var)[:, :, None] * diff)).sum(1)
        return x0, eps

    def denoiser(self, grid: Grid):
        def denoise(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            a, s = grid.alpha[index], grid.sigma[index]
            x0, eps = self.posterior(x, a, s)
            if grid.prediction == "epsilon":
                out = eps
            elif grid.prediction == "sample":
                out = x0
            elif grid.prediction == "v_prediction":
                out = a[:, None] * eps - s[:, None] * x0
            else:
                out = eps - x0
            return out.reshape(x.shape).float()

        return denoise

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact draws from the data distribution (float32)."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.latent_shape[0], generator=generator, dtype=torch.float64)
        return (self.means[comp] + self.stds[comp, None] * noise).float()

    def decode(self, x: torch.Tensor) -> None:
        return None

    def __repr__(self) -> str:
        return f"GaussianMixture(dim={self.latent_shape[0]}, components={len(self.weights)}, kind={self.kind!r}, prediction={self.prediction!r})"


