"""What ``hasten bench`` runs: the grid of methods x cores x steps x inits x caches, validated before any model call."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from typing import Sequence

from hasten.checks import check_int
from hasten.denoise import EmulatedDevice
from hasten.errors import HastenError
from hasten.integrations.hooks import hook_config, parse_hook_spec
from hasten.methods import BUDGET_OPTION, parse_method_spec
from hasten.models import is_embedded
from hasten.options import parse_spec, read_value
from hasten.spec import RunSpec, Sampling
from hasten.steps import SOLVERS
from hasten.stopping import Stop

#: options a --methods entry takes besides the method's own: run on M steps, pin the entry's cache
ENTRY_OPTIONS = {"steps": int, "cache": str}
def parse_steps(entry: str, default_solver: str | None) -> tuple[str | None, int]:
    """``"50"`` or ``"ddpm:1000"`` -> (solver, N)."""
    if ":" not in str(entry):
        return default_solver, read_value("--steps", "N", str(entry), int)
    solver, options = parse_spec(entry, {name: {"steps": int} for name in SOLVERS}, "solver", positional="steps")
    if "steps" not in options:
        raise HastenError(f"steps entries must be N or SOLVER:N, got {entry!r}")
    return solver, options["steps"]


@dataclass
class BenchConfig:
    """What ``hasten bench`` runs; validated before any model call.

    ``run`` describes what every run shares (model, call, seed, batch, the
    default solver and stop rule, the placement); ``methods`` x ``cores`` x
    ``steps`` x ``inits`` x ``caches`` is the grid of runs around it. A list
    may not be empty or name an entry twice.
    """

    run: RunSpec = field(default_factory=lambda: RunSpec.build("digits", "sequential", batch=64))
    methods: Sequence[str] = ("sequential", "chords")
    cores: Sequence[int] = (4, 6, 8)
    steps: Sequence[str | int] = ("50",)
    inits: Sequence[str] = ("paper",)
    caches: Sequence[str] = ("none",)
    progress: bool = True
    emulate_latency: float | None = None
    emulate_capacity: int = 1
    to_end: bool = True
    repeats: int = 1
    command: str = field(default_factory=lambda: "hasten " + shlex.join(sys.argv[1:]))

    @property
    def stop(self) -> Stop:
        """The stop rule CHORDS rows are read at (the run's, ``first`` unless given)."""
        return Stop.parse(self.run.sampling.stop)

    def settings(self) -> list[tuple[str | None, int]]:
        return [parse_steps(str(e), self.run.sampling.solver) for e in self.steps]

    def runs(self) -> list[tuple]:
        """Every run besides the reference: (solver, N, sampling, init, cache spec, run steps).

        A method spec may carry ``steps=M`` to run on M steps (the "fewer steps"
        baseline), still measured against the N-step reference, and ``cache=C``
        (a cache without options: ``none``, ``reuse``) to run with C alone instead
        of every ``caches`` entry. ``sampling`` has no cache where the entry's is
        one of diffusers' hooks (``diffusers:...``), which the bench attaches itself.
        """
        out = []
        read_at = str(self.stop) if not self.to_end else "none"
        for solver, n in self.settings():
            for spec in self.methods:
                name, options = parse_method_spec(spec, extra=ENTRY_OPTIONS)
                run_steps = options.pop("steps", n)
                for cache in [options.pop("cache")] if "cache" in options else self.caches:
                    plain = None if cache.startswith("diffusers:") else cache
                    if name == "sequential":
                        if cache != "none" or run_steps != n:
                            out.append((solver, n, Sampling("sequential", steps=run_steps, solver=solver, cache=plain),
                                        None, cache, run_steps))
                        continue
                    budget_set = BUDGET_OPTION.get(name) in options  # e.g. parasolver-turbo:rho=8: --cores does not apply
                    for k in ([None] if budget_set else self.cores):
                        for init in (self.inits if name == "chords" and "init" not in options else [None]):
                            opts = {**options, **({"init": init} if init else {})}
                            stop = read_at if name == "chords" else "none"
                            sampling = Sampling(name, k, opts, run_steps, solver, stop, plain)
                            out.append((solver, n, sampling, init, cache, run_steps))
        return out

    def validate(self) -> None:
        for flag, values in (("--methods", self.methods), ("--cores", self.cores), ("--steps", self.steps),
                             ("--init", self.inits), ("--caches", self.caches)):
            if not values:
                raise HastenError(f"{flag} needs at least one value")
            twice = sorted({str(v) for v in values if list(values).count(v) > 1})
            if twice:
                raise HastenError(f"{flag} lists {', '.join(twice)} more than once")
        for i in self.inits:
            if i not in ("paper", "uniform"):
                raise HastenError(f"init must be 'paper' or 'uniform' in bench, got {i!r}")
        for k in self.cores:
            check_int("--cores", k, 1)
        check_int("--repeats", self.repeats, 1)
        check_int("--emulate-capacity", self.emulate_capacity, 1)  # given without --emulate-latency too
        if self.emulate_capacity != 1 and self.emulate_latency is None:
            raise HastenError("--emulate-capacity applies to emulated devices; give --emulate-latency SECONDS too")
        if self.emulate_latency is not None:
            EmulatedDevice(lambda x, i: x, self.emulate_latency, self.emulate_capacity)  # validates both
        for solver, n in self.settings():
            if solver not in (None, *SOLVERS):
                raise HastenError(f"unknown solver {solver!r} in steps; valid: {', '.join(SOLVERS)}")
            if n < 1:
                raise HastenError(f"steps must be >= 1, got {n}")
        model = self.run.model
        for spec in self.methods:
            name, options = parse_method_spec(spec, extra=ENTRY_OPTIONS)
            for cache in [options["cache"]] if "cache" in options else self.caches:
                if not cache.startswith("diffusers:"):
                    continue
                if name != "sequential":
                    raise HastenError(f"diffusers cache hooks serve sequential sampling only, not {name}")
                pipeline = not is_embedded(model) if isinstance(model, str) else hasattr(model, "adapter")
                if not pipeline:
                    raise HastenError("diffusers cache hooks need a diffusers pipeline as --model")
                hook_name, hook_opts = parse_hook_spec(cache)
                hook_config(hook_name, hook_opts)
        for solver, n, sampling, _, cache, run_steps in self.runs():  # building each Sampling validates it
            method, _ = sampling.build()
            if self.run.placement.compile is not None and method.max_width(run_steps) is None and \
                    self.run.placement.max_batch is None:
                raise HastenError(f"--compile needs a fixed forward size: {sampling.name} without a cores cap has no "
                                  "fixed round width; give --max-batch")
