"""``hasten bench``: methods side by side on one model, same seed, one report.

Every parallel run goes to the end (so the convergence curve has every hit);
its table row is read at the hit where the stop rule would have stopped it.
That hit's round, NFE and wall time are the engine's own counters at that
moment: the work up to it is the same whether or not the run continues.
Quality is measured against the sequential result of the same seed and grid.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from hasten.assembly import assemble, model_grid, model_latents, model_step, open_for, share_conditioning, share_forward
from hasten.checks import check_int
from hasten.denoise import CompileStats, EmulatedDevice, compile_network, denoiser_device
from hasten.engine import run
from hasten.errors import HastenError
from hasten.methods import BUDGET_OPTION, Sequential, parse_method_spec
from hasten.options import parse_spec, read_value
from hasten.rounds import Eval
from hasten.caches import make_cache
from hasten.integrations.hooks import diffusers_cache, hook_config, parse_hook_spec
from hasten.metrics import flops_per_evaluation, psnr, rmse, ssim
from hasten.models import is_embedded
from hasten.report import (
    fmt,
    markdown_table,
    plot_convergence,
    plot_quality_vs_calls,
    plot_scaling,
    save_hit_grid,
    write_json,
)
from hasten.spec import RunSpec, Sampling
from hasten.steps import SOLVERS
from hasten.stopping import Stop

COLUMNS = [
    ("method", "method"), ("solver", "solver"), ("steps", "N"), ("cores", "cores"), ("params", "params"),
    ("rounds", "rounds"), ("speedup", "round speedup (K devices)"), ("nfe", "NFE"), ("wall_s", "wall s"),
    ("wall_speedup", "wall speedup here"), ("overhead_ms", "overhead ms/round"), ("rmse", "latent RMSE"),
    ("psnr", "PSNR dB"), ("fd", "Frechet dist."),
]
CACHE_COLUMNS = [
    ("method", "method"), ("cache", "cache"), ("solver", "solver"), ("steps", "N"), ("cores", "cores"),
    ("params", "params"), ("rounds", "model rounds"), ("all_rounds", "all rounds"), ("speedup", "round speedup (K devices)"),
    ("nfe", "NFE"), ("gflops", "GFLOPs/sample"), ("wall_s", "wall s"), ("wall_speedup", "wall speedup here"),
    ("rmse", "latent RMSE"), ("psnr", "PSNR dB"), ("ssim", "SSIM"), ("fd", "Frechet dist."),
]


#: options a --methods entry takes besides the method's own: run on M steps, pin the entry's cache
ENTRY_OPTIONS = {"steps": int, "cache": str}
#: shown where a run measured them: communication (distributed), peak GPU memory, graphs compiled during the run
RESOURCE_COLUMNS = [("comm_ms", "comm ms/round"), ("peak_gib", "peak GiB"), ("recompiles", "graphs compiled")]


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


def _params(name: str, method, n: int) -> str:
    d = method.describe(n)
    keep = {"chords": ("init",), "paradigms": ("window", "tol"), "srds": ("blocks", "tol", "cores"),
            "parasolver": ("window", "tol", "precondition"), "parasolver-turbo": ("window", "rho", "tol", "precondition")}
    return " ".join(f"{k}={fmt(d[k])}" for k in keep.get(name, ()) if d.get(k) is not None)


def _denoiser(cfg: BenchConfig, model, grid):
    """The model's denoiser on ``grid``; with ``emulate_latency`` every forward takes that stated device time
    (:class:`hasten.denoise.EmulatedDevice`)."""
    denoiser = model.denoiser(grid)
    if cfg.emulate_latency is not None:
        denoiser = EmulatedDevice(denoiser, cfg.emulate_latency, cfg.emulate_capacity)
    return denoiser


def _warm_up(setup) -> None:
    """One untimed round at the shape the run's rounds will have: kernels, the compiled graph (forwards are
    padded to the widest round), collectives."""
    width = setup.method.max_width(setup.step.grid.steps)
    setup.executor.evaluate([Eval(setup.x, 0)] * (width or 1))


def _timed(executor, job: Callable, compiled: CompileStats | None = None):
    """Run ``job``; return (its result, its costs besides rounds: peak GPU memory, graphs compiled during it,
    time outside the model and in communication per round, where measured)."""
    device = executor.device
    graphs = None if compiled is None else compiled.graphs
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model_s, comm_s = executor.model_seconds, getattr(executor, "comm_seconds", None)
    emulated = executor.denoiser if isinstance(executor.denoiser, EmulatedDevice) else None
    before = None if emulated is None else (emulated.forwards, emulated.overruns, emulated.compute_s)
    result = job()
    rounds = max(1, result.all_rounds)
    emulation = None
    if emulated is not None:
        forwards = emulated.forwards - before[0]
        emulation = {"forwards": forwards, "overruns": emulated.overruns - before[1],
                     "compute_ms_per_forward": 1000 * (emulated.compute_s - before[2]) / max(1, forwards)}
    return result, {
        "emulation": emulation,
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "recompiles": None if compiled is None else compiled.graphs - graphs,
        "overhead_ms": 1000 * (result.wall_s - (executor.model_seconds - model_s)) / rounds
        if executor.time_model else None,
        "comm_ms": None if comm_s is None else 1000 * (executor.comm_seconds - comm_s) / rounds,
    }


def _median_of(repeats: int, attempt: Callable, wall: Callable) -> tuple:
    """Run ``attempt`` ``repeats`` times; return the attempt whose ``wall(attempt)`` is the median, and every wall.

    Counts (rounds, NFE) are the same in every attempt; only the timing varies with the machine's load.
    """
    attempts = [attempt() for _ in range(repeats)]
    walls = [wall(a) for a in attempts]
    order = sorted(range(repeats), key=walls.__getitem__)
    return attempts[order[(repeats - 1) // 2]], walls


def _device_name(device: torch.device) -> str:
    """The accelerator's name (e.g. ``NVIDIA H100 80GB HBM3``), or the CPU's core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores)"


def run_bench(cfg: BenchConfig, out: Path | None, log: Callable[[str], None] = print) -> dict:
    """Run the benchmark and write its report into ``out`` (which must exist; None writes nothing).

    CHORDS rows are read at the stop rule; the other methods stop by their own
    tolerance and are read at their result. With ``executor="distributed"``
    (inside a torchrun launch) the sequential reference still runs on this
    process alone, as the single-device baseline, and the other methods spread
    their rounds over the ranks; only the caller's rank 0 should pass ``out``.
    """
    cfg.validate()
    spec, placement = cfg.run, cfg.run.placement
    batch, seed = spec.batch, spec.seed
    model = open_for(spec)
    compiled = None if placement.compile is None else compile_network(getattr(model, "network", None),
                                                                      placement.compile)
    share_conditioning(model, placement.executor)
    stop = cfg.stop
    # the one-device reference (a context-parallel network still shares its forward within its group)
    alone = dataclasses.replace(placement, executor="batched", backend=None, context_parallel=None)
    decode = model.decode
    features = None
    if model.name == "digits":
        from hasten.metrics import digit_features

        features = digit_features()
    settings = cfg.settings()
    configs = cfg.runs()
    bar = tqdm(total=len(settings) + len(configs), desc="bench", unit="run", disable=not cfg.progress)

    rows, runs = [], []
    with_cache = any(c != "none" for c in cfg.caches)
    curves: dict[str, list[tuple[int, float]]] = {}
    scaling: dict[str, list[tuple[int, float, float]]] = {}
    x_init = None
    for solver, n in settings:
        grid = model_grid(model, n)
        if x_init is None:  # after the first grid: a pipeline's latents come from that same call
            x_init = model_latents(model, batch, seed)
        denoiser = _denoiser(cfg, model, grid)
        x_init = x_init.to(denoiser_device(denoiser))
        step = model_step(model, grid, solver, x_init, seed)
        share_forward(model, placement, x_init, denoiser)
        reference = assemble(Sampling("sequential", steps=n), x_init, step, denoiser, alone)
        _warm_up(reference)
        local = reference.executor
        solver_name = step.name
        gflops = flops_per_evaluation(local.denoiser, x_init) / 1e9 or None  # None: nothing countable (analytic)
        (ref, ref_stats), ref_walls = _median_of(
            cfg.repeats, lambda: _timed(local, lambda: run(Sequential(), x_init, step, local), compiled),
            lambda a: a[0].wall_s)
        ref_stats["wall_runs_s"] = ref_walls
        ref_images = decode(ref.x)

        def quality(x: torch.Tensor, images: torch.Tensor | None) -> dict:
            return {"rmse": rmse(x, ref.x),
                    "psnr": psnr(images, ref_images, 1.0) if images is not None else psnr(x, ref.x),
                    "ssim": ssim(images, ref_images) if images is not None else None,
                    "fd": features.frechet(images) if features else None}

        if any(parse_method_spec(m, extra=ENTRY_OPTIONS)[0] == "sequential" for m in cfg.methods):
            rows.append({"method": "sequential", "cache": "none", "solver": solver_name, "steps": n, "cores": 1,
                         "params": None, "rounds": ref.rounds, "all_rounds": ref.all_rounds, "speedup": 1.0,
                         "nfe": ref.nfe, "gflops": gflops and gflops * ref.nfe, "wall_s": ref.wall_s, "wall_speedup": 1.0,
                         **ref_stats, **quality(ref.x, ref_images)})
        bar.update(1)
        for _, _, sampling, init, cache_spec, run_steps in (c for c in configs if c[:2] == (solver, n)):
            name, cores = sampling.name, sampling.cores
            run_step, run_grid = step, grid
            if run_steps != n:  # fewer steps: its own grid, same initial noise
                run_grid = model_grid(model, run_steps)
                run_step = model_step(model, run_grid, solver, x_init, seed)
            hooked = cache_spec.startswith("diffusers:")
            s = assemble(sampling, x_init, run_step, _denoiser(cfg, model, run_grid), placement)
            _warm_up(s)
            method, run_executor, cache = s.method, s.executor, s.cache
            hook = None
            if hooked:
                hook_name, hook_opts = parse_hook_spec(cache_spec)
                hook = diffusers_cache(model.network, run_executor.denoiser, hook_config(hook_name, hook_opts))

            def attempt():
                hits: list = []
                with warnings.catch_warnings(record=True) as caught, (hook or nullcontext()):
                    warnings.simplefilter("always")
                    result, stats = _timed(run_executor, lambda: run(method, x_init, run_step, run_executor, s.stop,
                                                                     on_hit=hits.append, cache=cache), compiled)
                return result, stats, hits, caught

            def read_at(hits: list) -> int:
                """The hit the row is read at: where the stop rule stops CHORDS, else the result."""
                if name != "chords":
                    return len(hits) - 1
                return next((i for i, h in enumerate(hits) if stop.reached(h.core, h.residual)), len(hits) - 1)

            (result, run_stats, hits, caught), walls = _median_of(
                cfg.repeats, attempt, lambda a: a[2][read_at(a[2])].wall_s)
            run_stats["wall_runs_s"] = walls
            final = result.x
            params = _params(name, method, run_steps) + ("" if run_steps == n else f" steps={run_steps}")
            cache_label = cache_spec if hook is not None else ("none" if cache is None else cache.label())
            label = f"{name} K={cores} {params} {solver_name}-{n}" + ("" if cache_label == "none" else f" + {cache_label}")
            hit_rows = []
            for h in hits:
                images = decode(h.x)
                hit_rows.append({"core": h.core, "round": h.round, "nfe": h.nfe, "wall_s": h.wall_s,
                                 "residual": h.residual, "dist_to_final": rmse(h.x, final),
                                 **{k: v for k, v in quality(h.x, images).items() if k != "fd"}})
            h = hits[read_at(hits)]
            row = {"method": name, "cache": cache_label, "solver": solver_name, "steps": n, "cores": cores,
                   "params": params, "rounds": h.round, "all_rounds": h.all_rounds, "speedup": n / h.round,
                   "nfe": h.nfe, "gflops": None if hook is not None else gflops and gflops * h.nfe, "wall_s": h.wall_s,
                   "wall_speedup": ref.wall_s / h.wall_s, **run_stats,
                   **quality(h.x, decode(h.x))}
            rows.append(row)
            runs.append({  # the whole run (the row above is read at its hit): Result.summary() and the bench's own
                **result.summary(), "label": label, "solver": solver_name, "steps": n, "run_steps": run_steps,
                "cores": cores, "init": init, "read_at": str(stop) if name == "chords" else "result",
                "max_abs_diff_vs_sequential": float((final - ref.x).abs().max()),
                "warnings": [str(w.message) for w in caught], "hits": hit_rows,
            })
            if name == "chords" and cache is None:
                curves[label] = [(e["round"], e["dist_to_final"]) for e in hit_rows]
                scaling.setdefault(f"chords {init} {solver_name}-{n}", []).append((cores, row["speedup"], row["rmse"]))
                if ref_images is not None and run_steps == n and out is not None:
                    grid_rows = [("sequential", ref_images)] + [
                        (f"core {e['core']} r{e['round']}", decode(hh.x)) for e, hh in zip(hit_rows, hits)
                    ]
                    save_hit_grid(grid_rows, out / f"hits_{name}_k{cores}_{init}_n{n}.png",
                                  title=f"{label}: hits in landing order (top: sequential)")
            elif cores is not None and cache is None:
                scaling.setdefault(f"{name} {solver_name}-{n}", []).append((cores, row["speedup"], row["rmse"]))
            bar.update(1)
    bar.close()

    title = f"{model.name}, batch {batch}, seed {seed}"
    if placement.executor == "distributed":
        import torch.distributed as dist

        title += f", {dist.get_world_size()} ranks ({dist.get_backend()})"
    if cfg.emulate_latency is not None:
        title += (f", emulated devices: {1000 * cfg.emulate_latency:g} ms per forward of up to "
                  f"{cfg.emulate_capacity} row(s)")
    columns = (CACHE_COLUMNS if with_cache else COLUMNS) + [
        c for c in RESOURCE_COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    table = markdown_table(rows, columns)
    report = {
        "command": cfg.command, "model": model.name, "seed": seed, "batch": batch, "stop": str(stop),
        "executor": placement.executor, "run": spec.to_dict(), "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
        "device": str(x_init.device), "device_name": _device_name(x_init.device),
        "emulated_latency_s": cfg.emulate_latency, "emulated_capacity": cfg.emulate_capacity,
        "rows": rows, "runs": runs,
    }
    if out is None:
        return report
    if curves:
        plot_convergence(curves, out / "convergence.png", f"CHORDS convergence ({title})")
    if with_cache:
        plot_quality_vs_calls(rows, out / "pareto.png", f"model calls against quality ({title})")
    if scaling:
        plot_scaling(scaling, out / "scaling.png", f"scaling with cores, CHORDS at stop={stop} ({title})")
    write_json(report, out / "results.json")
    (out / "results.md").write_text(
        f"# hasten bench: {title}\n\nCommand: `{cfg.command}`\n\nCHORDS rows read at stop rule `{stop}`, "
        f"other methods at their result; quality against sequential sampling of the same seed and solver. "
        f"*Round speedup* is steps / rounds of model latency: the wall speedup K devices (one per core or "
        f"window point) would give, not measured here. *Wall s* is measured on this machine with every overhead, "
        f"{'the median of ' + str(cfg.repeats) + ' runs' if cfg.repeats > 1 else 'one run'} after a warm-up; "
        f"*wall speedup here* divides the sequential wall time by it."
        f"\n\n{table}\n"
    )
    log(table)
    return report
