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
from hasten.parameterisation import from_x0_eps


class GaussianMixture:
    """A fixed random mixture (seeded) with a VP or flow-matching sampling grid.

    Args:
        dim: latent dimension D (a flat latent of shape (D,)).
        shape: latent shape instead of ``dim`` (e.g. ``(4096, 64)``, Flux's packed 1024x1024
            latent); the mixture lives in the flattened space.
        components: number of mixture components.
        kind: ``"vp"`` (DDIM over a linear-beta, 1000-step schedule, trailing
            spacing) or ``"flow"`` (flow-matching Euler, shift 1).
        prediction: network parameterisation; default ``epsilon`` (VP) / ``flow``.
        seed: seed of the mixture's parameters.
        device: where latents and the exact denoiser live.
    """

    def __init__(self, dim: int = 16, components: int = 8, kind: str = "vp", prediction: str | None = None, seed: int = 0,
                 shape: tuple[int, ...] | None = None, device: str | torch.device = "cpu"):
        if shape is not None:
            if not shape or not all(isinstance(n, int) and n >= 1 for n in shape):
                raise HastenError(f"shape must be positive integers, got {shape!r}")
            dim = 1
            for n in shape:
                dim *= n
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
        self.latent_shape = tuple(shape) if shape is not None else (dim,)
        self.device = torch.device(device)
        self.means = 1.5 * torch.randn(components, dim, generator=gen, dtype=torch.float64)
        self.stds = 0.2 + 0.3 * torch.rand(components, generator=gen, dtype=torch.float64)
        self.weights = torch.softmax(torch.randn(components, generator=gen, dtype=torch.float64), 0)
        self.means, self.stds, self.weights = (t.to(self.device) for t in (self.means, self.stds, self.weights))

    def grid(self, steps: int) -> Grid:
        from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

        if self.kind == "vp":
            scheduler = DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=True, prediction_type=self.prediction)
        else:
            scheduler = FlowMatchEulerDiscreteScheduler()
        return Grid.from_scheduler(scheduler, steps)

    def posterior(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact ``(E[x0 | x], E[eps | x])`` for rows of ``x`` at scales ``alpha``, ``sigma`` (B,).

        Written with (B, M) x (M, D) products and no (B, M, D) temporaries, so a
        Flux-sized latent (D = 262144) costs a few milliseconds:
        ``||x - a mu_m||^2 = ||x||^2 - 2 a x.mu_m + a^2 ||mu_m||^2``, and both means
        are ``c x + sum_m w_m mu_m`` with per-row weights.
        """
        x = x.double().flatten(1)
        a, s = alpha.double()[:, None], sigma.double()[:, None]  # (B, 1)
        var = a**2 * self.stds[None, :] ** 2 + s**2  # (B, M)
        d = x.shape[1]
        dot = x @ self.means.T  # (B, M)
        sq = (x * x).sum(1, keepdim=True) - 2 * a * dot + a**2 * (self.means**2).sum(1)[None]
        logp = self.weights.log()[None] - 0.5 * d * var.log() - 0.5 * sq / var
        resp = torch.softmax(logp, dim=1)  # (B, M)
        gain = resp * a * self.stds[None] ** 2 / var  # E[x0|x,m] = mu_m + gain_m / resp_m (x - a mu_m)
        x0 = gain.sum(1, keepdim=True) * x + (resp - a * gain) @ self.means
        noise = resp * s / var  # E[eps|x,m] = noise_m / resp_m (x - a mu_m)
        eps = noise.sum(1, keepdim=True) * x - (a * noise) @ self.means
        return x0, eps

    def denoiser(self, grid: Grid) -> "ExactDenoiser":
        return ExactDenoiser(self, grid)

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact draws from the data distribution (float32)."""
        weights, means, stds = self.weights.cpu(), self.means.cpu(), self.stds.cpu()
        comp = torch.multinomial(weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, means.shape[1], generator=generator, dtype=torch.float64)
        return (means[comp] + stds[comp, None] * noise).float().reshape(n, *self.latent_shape)

    def decode(self, x: torch.Tensor) -> None:
        return None

    def __repr__(self) -> str:
        return f"GaussianMixture(shape={self.latent_shape}, components={len(self.weights)}, kind={self.kind!r}, prediction={self.prediction!r})"




class ExactDenoiser:
    """The mixture's exact output (epsilon, v, x0 or flow velocity) at grid indices, on the mixture's device."""

    def __init__(self, mixture: GaussianMixture, grid: Grid):
        self.mixture, self.grid, self.device = mixture, grid, mixture.device
        self.alpha, self.sigma = grid.alpha.to(self.device), grid.sigma.to(self.device)

    def __call__(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        index = index.to(self.device)
        a, s = self.alpha[index], self.sigma[index]
        x0, eps = self.mixture.posterior(x.to(self.device), a, s)
        out = from_x0_eps(self.grid.prediction, x0, eps, a[:, None], s[:, None])
        return out.reshape(x.shape).float().to(x.device)
