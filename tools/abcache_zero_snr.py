"""AB-Cache on zero-SNR VP grids: the default form there, measured against sequential sampling.

On a grid with alpha = 0 at its first point (zero terminal SNR: CogVideoX's own scheduler,
``rescale_betas_zero_snr`` with trailing spacing) lambda = log(alpha / sigma) is undefined, so
the lambda forms (eps, x0, paper) cannot take that point as a node. The default there is
``index`` (``hasten.caches.abcache.ZERO_SNR_FORM``). This compares it, on the Gaussian mixture's
exact v-prediction denoiser, with

* eps and x0 with the alpha = 0 point left out of the history (a variant tried here, not in the library),
* plain sequential sampling with fewer steps (the same model calls spent on a coarser grid).

Latent RMSE against sequential sampling of the same noise, 64 samples, 50 steps.

Usage: ``PYTHONPATH=src python tools/abcache_zero_snr.py [--out FILE]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from hasten import Grid, Sequential, run
from hasten.caches.abcache import ABCache, CacheConfig
from hasten.executors.batched import BatchedExecutor
from hasten.models.gmm import GaussianMixture
from hasten.steps import make_step
from hasten.testing.pipelines import cogvideox_scheduler

STEPS, SAMPLES, DIM = 50, 64, 16


def schedulers() -> dict:
    """CogVideoX's own zero-SNR scheduler and the zero-terminal-SNR DDIM of Lin et al. (v-prediction, trailing)."""
    import diffusers

    cogvideox = cogvideox_scheduler()
    return {"CogVideoXDDIM (snr_shift_scale=3)": cogvideox,
            "DDIM (rescale_betas_zero_snr)": diffusers.DDIMScheduler.from_config(cogvideox.config)}


class SkipUndefined(ABCache):
    """A lambda form with the points where alpha = 0 left out of the history (the variant compared here)."""

    def reset(self, grid: Grid) -> None:
        zero = grid.alpha.clone()
        zero[zero <= 0] = 1.0  # pass the library's check; the undefined points are never used as nodes below
        super().reset(Grid(grid.kind, grid.prediction, zero, grid.sigma, grid.timesteps, grid.model_alpha,
                           grid.model_sigma))
        self.grid, self.undefined = grid, set((grid.alpha <= 0).nonzero().flatten().tolist())

    def _usable(self, ev, count=None):
        past = self.history.get(ev.track, {})
        return sorted((i for i in past if i < ev.index and i not in self.undefined),
                      reverse=True)[: count or self.config.order]


def sample(scheduler, steps: int, x: torch.Tensor, mixture: GaussianMixture, cache=None):
    grid = Grid.from_scheduler(type(scheduler).from_config(scheduler.config), steps)
    return run(Sequential(), x, make_step(grid), BatchedExecutor(mixture.denoiser(grid)), cache=cache)


def rows() -> list[tuple]:
    torch.set_num_threads(1)
    mixture = GaussianMixture(dim=DIM, kind="vp", prediction="v_prediction")
    x = torch.randn(SAMPLES, DIM, generator=torch.Generator().manual_seed(0))
    out = []
    for name, scheduler in schedulers().items():
        reference = sample(scheduler, STEPS, x, mixture).x

        def rmse(result) -> float:
            return float((result.x - reference).pow(2).mean().sqrt())

        out.append((name, "sequential", STEPS, 0.0))
        for order in (2, 3):
            for interval in (2, 3, 4):
                config = CacheConfig(order=order, interval=interval)
                default = ABCache(config)
                result = sample(scheduler, STEPS, x, mixture, default)
                out.append((name, f"abcache:{order}:interval={interval} (default form: {default.form})", result.nfe,
                            rmse(result)))
                for form in ("eps", "x0"):
                    result = sample(scheduler, STEPS, x, mixture, SkipUndefined(CacheConfig(order=order,
                                                                                            interval=interval,
                                                                                            form=form)))
                    out.append((name, f"abcache:{order}:interval={interval} form={form}, alpha = 0 left out",
                                result.nfe, rmse(result)))
        for steps in (26, 18, 14):  # the model calls of order 2 at intervals 2, 3, 4
            out.append((name, f"sequential, {steps} steps", steps, rmse(sample(scheduler, steps, x, mixture))))
    return out


def markdown(table: list[tuple]) -> str:
    lines = ["| grid | run | NFE | latent RMSE vs sequential-50 |", "|---|---|---|---|"]
    lines += [f"| {g} | {r} | {n} | {e:.4g} |" for g, r, n, e in table]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    table = markdown(rows())
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("Produced by `PYTHONPATH=src python tools/abcache_zero_snr.py "
                            f"--out {args.out}`\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
