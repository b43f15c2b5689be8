"""The Python API: ``hasten.sample`` and ``hasten.stream`` over embedded models."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from hasten.engine import HitStream, Result, iterate, run
from hasten.errors import HastenError
from hasten.executors.batched import BatchedExecutor
from hasten.methods import Hit, Method, make_method
from hasten.models import EmbeddedModel, load_model
from hasten.steps import make_step
from hasten.stopping import Stop


def initial_noise(model: EmbeddedModel, batch: int, seed: int) -> torch.Tensor:
    """Standard normal noise (batch, *latent_shape) from ``torch.Generator().manual_seed(seed)``."""
    if not isinstance(batch, int) or batch < 1:
        raise HastenError(f"batch must be an integer >= 1, got {batch!r}")
    return torch.randn((batch, *model.latent_shape), generator=torch.Generator().manual_seed(seed))


def _prepare(model, method, steps, seed, batch, stop, solver, cores, init, speedup):
    model = load_model(model)
    if isinstance(method, str):
        method = make_method(method, cores=cores, init=init, speedup=speedup)
    elif cores is not None or init is not None or speedup is not None:
        raise HastenError("cores, init and speedup go into the method object when a method object is given")
    if not isinstance(steps, int) or steps < 1:
        raise HastenError(f"steps must be an integer >= 1, got {steps!r}")
    stop = Stop.parse(stop)
    method.validate(steps)
    stop.check_cores(method.cores(steps))
    grid = model.grid(steps)
    step = make_step(grid, solver)
    x = initial_noise(model, batch, seed)
    return method, x, step, BatchedExecutor(model.denoiser(grid)), stop


def sample(
    model: str | EmbeddedModel = "gmm",
    method: str | Method = "sequential",
    *,
    steps: int = 50,
    seed: int = 0,
    batch: int = 1,
    stop: str | Stop | None = None,
    on_hit: Callable[[Hit], None] | None = None,
    solver: str | None = None,
    cores: int | None = None,
    init: Sequence[int] | str | None = None,
    speedup: float | None = None,
    progress: bool = False,
) -> Result:
    """Sample ``batch`` latents from an embedded model with a method.

    Example::

        result = hasten.sample("digits", "chords", cores=8, steps=50, stop="first")
        result.x, result.rounds, result.speedup

    ``on_hit`` receives every hit (CHORDS core landing) while sampling runs.
    """
    method, x, step, executor, stop = _prepare(model, method, steps, seed, batch, stop, solver, cores, init, speedup)
    return run(method, x, step, executor, stop, on_hit, progress)


def stream(
    model: str | EmbeddedModel = "gmm",
    method: str | Method = "chords",
    *,
    steps: int = 50,
    seed: int = 0,
    batch: int = 1,
    stop: str | Stop | None = None,
    solver: str | None = None,
    cores: int | None = None,
    init: Sequence[int] | str | None = None,
    speedup: float | None = None,
    progress: bool = False,
) -> HitStream:
    """Iterate over hits as they land; the stream's ``.result`` is set when it ends.

    Validation happens here, before the first round.
    """
    method, x, step, executor, stop = _prepare(model, method, steps, seed, batch, stop, solver, cores, init, speedup)
    return HitStream(iterate(method, x, step, executor, stop, progress))
