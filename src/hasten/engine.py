"""The engine: drives a method round by round through an executor.

Accounting lives here, once, for every method, executor and cache: a *round*
is one batch of independent evaluations a method asks for; it counts as a
round of model latency when at least one of them reaches the model (a cache
may answer them all). *NFE* is the number of model evaluations per sample,
*requests* the number asked for; *round_rows* lists, per round, the latent
rows that reached the model (0 where a cache answered the whole round), which
is what a latency model needs (:mod:`hasten.tune`). Wall time covers everything from the first
round to the return, bookkeeping included; on a GPU it is read from CUDA
events after the queued work has finished (:class:`hasten.devices.Stopwatch`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Generator, Iterator

import torch
from tqdm.auto import tqdm

from hasten.devices import Stopwatch
from hasten.errors import HastenError, NonFiniteOutputError
from hasten.caches.base import Cache
from hasten.executors.base import Executor
from hasten.methods.base import Method
from hasten.rounds import Eval, Hit
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
    round_rows: list[int] = field(default_factory=list)
    run: dict | None = None  # the run description that produced it (``RunSpec.to_dict()``), where one did

    @property
    def speedup(self) -> float:
        """Sequential rounds (one per step) over this run's rounds of model latency."""
        return self.steps / self.rounds if self.rounds else float("nan")

    def summary(self) -> dict:
        """The run's settings and cost, JSON-ready: the one shape the CLI, bench, tune and accelerate report.

        Without the latents; ``hits`` as plain dicts (core, round, nfe, wall_s, residual, all_rounds);
        ``run``, where a run description built it, is that description's dict form
        (:meth:`hasten.spec.RunSpec.to_dict`), which ``RunSpec.from_dict`` reads back.
        """
        out = {"method": self.method, "steps": self.steps, "params": self.params, "stop": self.stopped_by,
               "rounds": self.rounds, "all_rounds": self.all_rounds, "nfe": self.nfe, "requests": self.requests,
               "speedup": self.speedup, "wall_s": self.wall_s, "cache": self.cache,
               "hits": [vars(h) for h in self.hits]}
        if self.run is not None:
            out["run"] = self.run
        return out


class FiniteCheck:
    """Catches NaN / Inf in model outputs and names the grid step and round where it first appeared.

    The test is the finiteness of each output's sum: NaN and Inf propagate into
    it, at the cost of one reduction (an output so large that its float32 sum
    overflows is reported too; no sane model output comes near).

    On the CPU every round is checked at once. On an accelerator a check
    would stall the device queue each round, so each round's flags stay on the
    device and are read together every ``every`` rounds, before a hit is
    handed out and at the end: one host synchronisation per ``every`` rounds,
    and the report still names the first bad step.
    """

    def __init__(self, step: Step, device: torch.device, every: int = 16):
        self.step, self.pending = step, []
        self.every = 1 if device.type == "cpu" else every

    def add(self, outputs: list[torch.Tensor], evals: list[Eval], rnd: int) -> None:
        # NaN and Inf propagate into a sum: one cheap reduction per output instead of a mask of the whole latent
        flags = torch.isfinite(torch.stack([out.sum() for out in outputs]))
        self.pending.append((rnd, evals, flags))
        if len(self.pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        ok = torch.cat([flags for _, _, flags in pending]).tolist()  # the one host read
        if all(ok):
            return
        pos = ok.index(False)
        for rnd, evals, flags in pending:
            if pos < len(evals):
                index = evals[pos].index
                t = float(self.step.grid.timesteps[index])
                raise NonFiniteOutputError(
                    f"model output is not finite (NaN or Inf, or beyond float32 range in its sum) at grid step "
                    f"{index} of {self.step.grid.steps} "
                    f"(model time {t:g}) in round {rnd}"
                )
            pos -= len(evals)


def _answer(evals: list[Eval], executor: Executor, cache: Cache | None,
            round_number: int) -> tuple[list[torch.Tensor], list[Eval]]:
    """Outputs for a round, from the cache where it may answer and the executor otherwise."""
    if cache is None:
        return executor.evaluate(evals), evals
    for ev in evals:
        if ev.rebased:
            cache.rebase(ev.track)
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
    cache: Cache | None = None,
) -> Generator[Hit, None, Result]:
    """Run ``method`` and yield its hits as they land; return the :class:`Result`.

    ``cache`` (e.g. :class:`hasten.caches.ABCache`) may answer requests without
    the model. Only the latest hit's latent is kept (for the residual and the
    result), so memory stays at the method's own O(K) latents.
    """
    n = step.grid.steps
    stop = Stop.parse(stop)
    method.validate(n)
    stop.check_cores(method.hit_tracks(n))
    if x.ndim < 2:
        raise HastenError(f"the initial latent must have a batch dimension, got shape {tuple(x.shape)}")
    x = x.detach().float()  # sampling builds no autograd graph, whatever produced the latents
    finite = FiniteCheck(step, x.device)
    if cache is not None:
        cache.reset(step.grid)

    rounds = all_rounds = nfe = requests = 0
    infos: list[HitInfo] = []
    round_rows: list[int] = []
    last: Hit | None = None
    stopped_by = "end"
    bar = tqdm(total=method.max_rounds(n), desc=method.name, unit="round", disable=not progress, leave=False)
    clock = Stopwatch(x.device).start()
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
                finite.flush()
                item.round, item.all_rounds, item.nfe = rounds, all_rounds, nfe
                item.wall_s = clock.elapsed()  # counts the finished device work, not its launch
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
            round_rows.append(sum(ev.x.shape[0] for ev in computed))
            bar.update(1)
            finite.add(reply, item, all_rounds)
        finite.flush()
    finally:
        run.close()
        bar.close()
    wall = clock.elapsed()
    return Result(x=final, method=method.name, steps=n, rounds=rounds, nfe=nfe, wall_s=wall, stopped_by=stopped_by,
                  hits=infos, params=method.describe(n), all_rounds=all_rounds, requests=requests,
                  cache=None if cache is None else {"config": cache.label(), **cache.stats()}, round_rows=round_rows)


def run(
    method: Method,
    x: torch.Tensor,
    step: Step,
    executor: Executor,
    stop: Stop | str | None = None,
    on_hit: Callable[[Hit], None] | None = None,
    progress: bool = False,
    cache: Cache | None = None,
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
    """Iterate over hits as they land; ``.result`` holds the :class:`Result` afterwards.

    ``record``: the run description's dict form, set as the result's ``run`` when the run ends.
    """

    def __init__(self, gen: Generator[Hit, None, Result], record: dict | None = None):
        self._gen = gen
        self.record = record
        self.result: Result | None = None

    def __iter__(self) -> "HitStream":
        return self

    def __next__(self) -> Hit:
        try:
            return next(self._gen)
        except StopIteration as done:
            self.result = done.value
            if self.record is not None:
                self.result.run = self.record
            raise StopIteration from None
