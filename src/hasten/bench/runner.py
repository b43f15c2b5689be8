"""Running the bench's grid through one session, and writing its report."""

from __future__ import annotations

import dataclasses
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from hasten.bench.grid import ENTRY_OPTIONS, BenchConfig
from hasten.bench.timing import device_name, median_of, timed, warm_up
from hasten.denoise import EmulatedDevice
from hasten.integrations.hooks import diffusers_cache, hook_config, parse_hook_spec
from hasten.methods import parse_method_spec
from hasten.metrics import flops_per_evaluation, ms_ssim, psnr, rmse, ssim
from hasten.models import MODEL_SCORERS, adherence
from hasten.report import (fmt, markdown_table, plot_convergence, plot_quality_vs_calls, plot_scaling, save_hit_grid,
                           write_json)
from hasten.session import Session
from hasten.spec import Sampling

COLUMNS = [
    ("method", "method"), ("solver", "solver"), ("steps", "N"), ("cores", "cores"), ("params", "params"),
    ("rounds", "rounds"), ("speedup", "round speedup (K devices)"), ("nfe", "NFE"), ("wall_s", "wall s"),
    ("wall_speedup", "wall speedup here"), ("overhead_ms", "overhead ms/round"), ("rmse", "latent RMSE"),
    ("psnr", "PSNR dB"), ("ssim", "SSIM"), ("ms_ssim", "MS-SSIM"), ("fd", "Frechet dist."), ("adherence", "adherence"),
]
CACHE_COLUMNS = [
    ("method", "method"), ("cache", "cache"), ("solver", "solver"), ("steps", "N"), ("cores", "cores"),
    ("params", "params"), ("rounds", "model rounds"), ("all_rounds", "all rounds"), ("speedup", "round speedup (K devices)"),
    ("nfe", "NFE"), ("gflops", "GFLOPs/sample"), ("wall_s", "wall s"), ("wall_speedup", "wall speedup here"),
    ("rmse", "latent RMSE"), ("psnr", "PSNR dB"), ("ssim", "SSIM"), ("ms_ssim", "MS-SSIM"), ("fd", "Frechet dist."),
    ("adherence", "adherence"),
]


#: communication (distributed), peak GPU memory, graphs compiled during the run
RESOURCE_COLUMNS = [("comm_ms", "comm ms/round"), ("peak_gib", "peak GiB"), ("recompiles", "graphs compiled")]
#: columns shown only where some run measured them (MS-SSIM needs images of 161 pixels a side or more;
#: adherence, a model with a caption score and a prompt of its grammar)
OPTIONAL_COLUMNS = {"ms_ssim", "ssim", "fd", "adherence", *(key for key, _ in RESOURCE_COLUMNS)}


def _params(name: str, method, n: int) -> str:
    d = method.describe(n)
    keep = {"chords": ("init",), "paradigms": ("window", "tol"), "srds": ("blocks", "tol", "cores"),
            "parasolver": ("window", "tol", "precondition"), "parasolver-turbo": ("window", "rho", "tol", "precondition")}
    return " ".join(f"{k}={fmt(d[k])}" for k in keep.get(name, ()) if d.get(k) is not None)


def _emulation(cfg: BenchConfig) -> Callable | None:
    """With ``emulate_latency``: a wrapper that makes every forward take that stated device time
    (:class:`hasten.denoise.EmulatedDevice`)."""
    if cfg.emulate_latency is None:
        return None
    return lambda denoiser: EmulatedDevice(denoiser, cfg.emulate_latency, cfg.emulate_capacity)


def run_bench(cfg: BenchConfig, out: Path | None, log: Callable[[str], None] = print,
              session: Session | None = None) -> dict:
    """Run the benchmark and write its report into ``out`` (which must exist; None writes nothing).

    CHORDS rows are read at the stop rule; the other methods stop by their own
    tolerance and are read at their result. With ``executor="distributed"``
    (inside a torchrun launch) the sequential reference still runs on this
    process alone, as the single-device baseline, and the other methods spread
    their rounds over the ranks; only the caller's rank 0 should pass ``out``.
    ``session``: the run's session when the caller opened it already (the CLI, to check hooks against the model).
    """
    cfg.validate()
    spec = cfg.run
    batch, seed = spec.batch, spec.seed
    session = session or Session.open(spec)
    model, compiled, placement = session.model, session.compiled, session.placement
    stop = cfg.stop
    # the one-device reference (a context-parallel network still shares its forward within its group)
    alone = session.with_placement(dataclasses.replace(placement, executor="batched", backend=None,
                                                       context_parallel=None))
    emulate = _emulation(cfg)
    decode = model.decode
    scorer, prompt = MODEL_SCORERS.get(model.name), (spec.call or {}).get("prompt")
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
        reference = alone.prepare(Sampling("sequential", steps=n, solver=solver), seed=seed, batch=batch, x=x_init,
                                  wrap=emulate)
        x_init, step = reference.x, reference.step  # one initial noise for every setting and run
        session.share_forward(x_init, reference.executor.denoiser)
        warm_up(reference)
        local = reference.executor
        solver_name = step.name
        gflops = flops_per_evaluation(local.denoiser, x_init) / 1e9 or None  # None: nothing countable (analytic)
        (ref, ref_stats), ref_walls = median_of(
            cfg.repeats, lambda: timed(local, reference.sample, compiled), lambda a: a[0].wall_s)
        ref_stats["wall_runs_s"] = ref_walls
        ref_images = decode(ref.x)

        def quality(x: torch.Tensor, images: torch.Tensor | None) -> dict:
            return {"rmse": rmse(x, ref.x),
                    "psnr": psnr(images, ref_images, 1.0) if images is not None else psnr(x, ref.x),
                    "ssim": ssim(images, ref_images) if images is not None else None,
                    "ms_ssim": ms_ssim(images, ref_images) if images is not None else None,
                    "fd": features.frechet(images) if features else None,
                    "adherence": adherence(scorer, images, prompt)}

        if any(parse_method_spec(m, extra=ENTRY_OPTIONS)[0] == "sequential" for m in cfg.methods):
            rows.append({"method": "sequential", "cache": "none", "solver": solver_name, "steps": n, "cores": 1,
                         "params": None, "rounds": ref.rounds, "all_rounds": ref.all_rounds, "speedup": 1.0,
                         "nfe": ref.nfe, "gflops": gflops and gflops * ref.nfe, "wall_s": ref.wall_s, "wall_speedup": 1.0,
                         **ref_stats, **quality(ref.x, ref_images)})
        bar.update(1)
        for _, _, sampling, init, cache_spec, run_steps in (c for c in configs if c[:2] == (solver, n)):
            name, cores = sampling.name, sampling.cores
            hooked = cache_spec.startswith("diffusers:")
            fixed = {"step": step} if run_steps == n else {}  # fewer steps: its own grid, same initial noise
            s = session.prepare(sampling, seed=seed, batch=batch, x=x_init, wrap=emulate, **fixed)
            warm_up(s)
            run_executor = s.executor
            hook = None
            if hooked:
                hook_name, hook_opts = parse_hook_spec(cache_spec)
                hook = diffusers_cache(model.network, run_executor.denoiser, hook_config(hook_name, hook_opts))

            def attempt():
                hits: list = []
                with warnings.catch_warnings(record=True) as caught, (hook or nullcontext()):
                    warnings.simplefilter("always")
                    result, stats = timed(run_executor, lambda: s.sample(hits.append), compiled)
                return result, stats, hits, caught

            def read_at(hits: list) -> int:
                """The hit the row is read at: where the stop rule stops CHORDS, else the result."""
                if name != "chords":
                    return len(hits) - 1
                return next((i for i, h in enumerate(hits) if stop.reached(h.core, h.residual)), len(hits) - 1)

            (result, run_stats, hits, caught), walls = median_of(
                cfg.repeats, attempt, lambda a: a[2][read_at(a[2])].wall_s)
            run_stats["wall_runs_s"] = walls
            final = result.x
            method, cache = s.method, s.cache
            params = _params(name, method, run_steps) + ("" if run_steps == n else f" steps={run_steps}")
            cache_label = cache_spec if hook is not None else ("none" if cache is None else cache.label())
            label = f"{name} K={cores} {params} {solver_name}-{n}" + ("" if cache_label == "none" else f" + {cache_label}")
            hit_rows = []
            for h in hits:
                images = decode(h.x)
                hit_rows.append({"core": h.core, "round": h.round, "nfe": h.nfe, "wall_s": h.wall_s,
                                 "residual": h.residual, "dist_to_final": rmse(h.x, final),
                                 **{k: v for k, v in quality(h.x, images).items() if k not in ("fd", "adherence")}})
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
    columns = [c for c in (CACHE_COLUMNS if with_cache else COLUMNS) + RESOURCE_COLUMNS
               if c[0] not in OPTIONAL_COLUMNS or any(r.get(c[0]) is not None for r in rows)]
    table = markdown_table(rows, columns)
    report = {
        "command": cfg.command, "model": model.name, "seed": seed, "batch": batch, "stop": str(stop),
        "executor": placement.executor, "run": spec.to_dict(), "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
        "device": str(x_init.device), "device_name": device_name(x_init.device),
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
