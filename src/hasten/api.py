"""The Python API: ``hasten.sample`` and ``hasten.stream`` over embedded models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from hasten.engine import HitStream, Result, iterate
from hasten.errors import HastenError
from hasten.executors.batched import BatchedExecutor
from hasten.methods import Hit, Method, make_method
from hasten.models import EmbeddedModel, load_model
from hasten.steps import Step, make_step
from hasten.stopping import Stop


def initial_noise(model: EmbeddedModel, batch: int, seed: int) -> torch.Tensor:
    """Standard normal noise (batch, *latent_shape) from ``torch.Generator().manual_seed(seed)``."""
    if not isinstance(batch, int) or batch < 1:
        raise HastenError(f"batch must be an integer >= 1, got {batch!r}")
    return torch.randn((batch, *model.latent_shape), generator=torch.Generator().manual_seed(seed))


@dataclass
class Setup:
    """Everything a run needs, validated: built by :func:`prepare` before any model call."""

    model: EmbeddedModel
    method: Method
    x: torch.Tensor
    step: Step
    executor: BatchedExecutor
    stop: Stop


def prepare(model, method, steps, seed, batch, stop=None, solver=None, cores=None, init=None, speedup=None) -> Setup:
    """Validate the arguments and build the run's pieces (used by the API and the CLI)."""
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
    return Setup(model, method, x, step, BatchedExecutor(model.denoiser(grid)), stop)


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
    hits = stream(model, method, steps=steps, seed=seed, batch=batch, stop=stop, solver=solver, cores=cores,
                  init=init, speedup=speedup, progress=progress)
    for hit in hits:
        if on_hit is not None:
            on_hit(hit)
    return hits.result


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
    s = prepare(model, method, steps, seed, batch, stop, solver, cores, init, speedup)
    return HitStream(iterate(s.method, s.x, s.step, s.executor, s.stop, progress))
