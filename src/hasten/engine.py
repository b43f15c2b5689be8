"""The engine: drives a method round by round through an executor.

Accounting lives here, once, for every method, executor and cache: a *round*
is one batch of independent evaluations a method asks for; it counts as a
round of model latency when at least one of them reaches the model (a cache
may answer them all). *NFE* is the number of model evaluations per sample,
*requests* the number asked for. Wall time covers everything from the first
round to the return, bookkeeping included.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Generator, Iterator

import torch
from tqdm.auto import tqdm

from hasten.errors import HastenError, NonFiniteOutputError
from hasten.executors.base import Executor
from hasten.methods.base import Eval, Hit, Method
from hasten.steps import Step
from hasten.stopping import Stop, relative_residual


@dataclass
class HitInfo:
    """A hit without its tensor, for reports."""

    core: int
    round: int
    nfe: int
    wall_s: float
    residual: float | None
    all_rounds: int


@dataclass
class Result:
    """What a run returns: the final latent and its cost."""

    x: torch.Tensor
    method: str
    steps: int
    rounds: int
    nfe: int
    wall_s: float
    stopped_by: str
    hits: list[HitInfo] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    all_rounds: int = 0
    requests: int = 0
    cache: dict | None = None

    @property
    def speedup(self) -> float:
        """Sequential rounds (one per step) over this run's rounds of model latency."""
        return self.steps / self.rounds if self.rounds else float("nan")


def _check_finite(outputs: list[torch.Tensor], evals: list[Eval], step: Step, rnd: int) -> None:
    for out, ev in zip(outputs, evals):
        if not torch.isfinite(out).all():
            t = float(step.grid.timesteps[ev.index])
            raise NonFiniteOutputError(
                f"model output is not finite (NaN or Inf) at grid step {ev.index} of {step.grid.steps} "
                f"(model time {t:g}) in round {rnd}"
            )


def _answer(evals: list[Eval], executor: Executor, cache, round_number: int) -> tuple[list[torch.Tensor], list[Eval]]:
    """Outputs for a round, from the cache where it may answer and the executor otherwise."""
    if cache is None:
        return executor.evaluate(evals), evals
    wanted = [cache.wants_model(ev, round_number) for ev in evals]
    computed = [ev for ev, w in zip(evals, wanted) if w]
    outs = iter(executor.evaluate(computed) if computed else [])
    reply = []
    for ev, w in zip(evals, wanted):
        out = next(outs) if w else cache.predict(ev)
        cache.record(ev, out, computed=w)
        reply.append(out)
    return reply, computed


def iterate(
    method: Method,
    x: torch.Tensor,
    step: Step,
    executor: Executor,
    stop: Stop | str | None = None,
    progress: bool = False,
    cache=None,
) -> Generator[Hit, None, Result]:
    """Run ``method`` and yield its hits as they land; return the :class:`Result`.

    ``cache`` (e.g. :class:`hasten.caches.ABCache`) may answer requests without
    the model. Only the latest hit's latent is kept (for the residual and the
    result), so memory stays at the method's own O(K) latents.
    """
    n = step.grid.steps
    stop = Stop.parse(stop)
    method.validate(n)
    stop.check_cores(method.cores(n))
    if x.ndim < 2:
        raise HastenError(f"the initial latent must have a batch dimension, got shape {tuple(x.shape)}")
    x = x.float()
    if cache is not None:
        cache.reset(step.grid)

    rounds = all_rounds = nfe = requests = 0
    infos: list[HitInfo] = []
    last: Hit | None = None
    stopped_by = "end"
    bar = tqdm(total=method.max_rounds(n), desc=method.name, unit="round", disable=not progress, leave=False)
    start = time.perf_counter()
    run = method.solve(x, step)
    reply = None
    try:
        while True:
            try:
                item = run.send(reply)
            except StopIteration as finished:
                final = finished.value
                break
            if isinstance(item, Hit):
                reply = None
                item.round, item.all_rounds, item.nfe = rounds, all_rounds, nfe
                item.wall_s = time.perf_counter() - start
                item.residual = None if last is None else relative_residual(item.x, last.x)
                infos.append(HitInfo(item.core, item.round, item.nfe, item.wall_s, item.residual, item.all_rounds))
                last = item
                yield item
                if stop.reached(item.core, item.residual):
                    final, stopped_by = item.x, str(stop)
                    break
                continue
            if not item:
                raise HastenError(f"method {method.name} yielded an empty round")
            reply, computed = _answer(item, executor, cache, all_rounds + 1)
            all_rounds += 1
            rounds += bool(computed)
            nfe += len(computed)
            requests += len(item)
            bar.update(1)
            _check_finite(reply, item, step, all_rounds)
    finally:
        run.close()
        bar.close()
    wall = time.perf_counter() - start
    return Result(final, method.name, n, rounds, nfe, wall, stopped_by, infos, method.describe(n),
                  all_rounds, requests, None if cache is None else {"config": cache.config.label(), **cache.stats()})


def run(
    method: Method,
    x: torch.Tensor,
    step: Step,
    executor: Executor,
    stop: Stop | str | None = None,
    on_hit: Callable[[Hit], None] | None = None,
    progress: bool = False,
    cache=None,
) -> Result:
    """Run ``method`` to its stop; ``on_hit`` receives each hit as it lands."""
    gen = iterate(method, x, step, executor, stop, progress, cache)
    while True:
        try:
            hit = next(gen)
        except StopIteration as done:
            return done.value
        if on_hit is not None:
            on_hit(hit)


class HitStream(Iterator[Hit]):
    """Iterate over hits as they land; ``.result`` holds the :class:`Result` afterwards."""

    def __init__(self, gen: Generator[Hit, None, Result]):
        self._gen = gen
        self.result: Result | None = None

    def __iter__(self) -> "HitStream":
        return self

    def __next__(self) -> Hit:
        try:
            return next(self._gen)
        except StopIteration as done:
            self.result = done.value
            raise StopIteration from None
