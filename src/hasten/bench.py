"""``hasten bench``: methods side by side on one model, same seed, one report.

Every parallel run goes to the end (so the convergence curve has every hit);
its table row is read at the hit where the stop rule would have stopped it.
That hit's round, NFE and wall time are the engine's own counters at that
moment: the work up to it is the same whether or not the run continues.
Quality is measured against the sequential result of the same seed and grid.
"""

from __future__ import annotations

import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from hasten.api import initial_noise
from hasten.engine import run
from hasten.errors import HastenError
from hasten.executors.batched import BatchedExecutor
from hasten.methods import METHODS, Eval, Sequential, make_method
from hasten.metrics import psnr, rmse
from hasten.models import EmbeddedModel, load_model
from hasten.report import (
    markdown_table,
    plot_convergence,
    plot_scaling,
    save_hit_grid,
    write_json,
)
from hasten.steps import make_step
from hasten.stopping import Stop

COLUMNS = [
    ("method", "method"), ("steps", "N"), ("cores", "cores"), ("init", "init"), ("rounds", "rounds"),
    ("speedup", "speedup"), ("nfe", "NFE"), ("wall_s", "wall s"), ("wall_speedup", "wall speedup"),
    ("rmse", "latent RMSE"), ("psnr", "PSNR dB"), ("fd", "Frechet dist."),
]


@dataclass
class BenchConfig:
    """What ``hasten bench`` runs; validated before any model call."""

    model: str | EmbeddedModel = "digits"
    methods: Sequence[str] = ("sequential", "chords")
    cores: Sequence[int] = (4, 6, 8)
    steps: Sequence[int] = (50,)
    inits: Sequence[str] = ("paper",)
    stop: str = "first"
    seed: int = 0
    batch: int = 64
    solver: str | None = None
    progress: bool = True
    command: str = field(default_factory=lambda: "hasten " + shlex.join(sys.argv[1:]))

    def validate(self) -> None:
        for m in self.methods:
            if m not in METHODS:
                raise HastenError(f"unknown method {m!r} in methods; valid: {', '.join(METHODS)}")
        for i in self.inits:
            if i not in ("paper", "uniform"):
                raise HastenError(f"init must be 'paper' or 'uniform' in bench, got {i!r}")
        if not self.steps or not self.cores or not self.inits:
            raise HastenError("steps, cores and init each need at least one value")
        if not isinstance(self.batch, int) or self.batch < 1:
            raise HastenError(f"batch must be an integer >= 1, got {self.batch!r}")
        stop = Stop.parse(self.stop)
        for n in self.steps:
            for k in self.cores:
                for init in self.inits:
                    method = make_method("chords", cores=k, init=init)
                    method.validate(n)
                    stop.check_cores(k)


def run_bench(cfg: BenchConfig, out: Path, log: Callable[[str], None] = print) -> dict:
    """Run the benchmark and write its report into ``out`` (which must exist)."""
    cfg.validate()
    model = load_model(cfg.model)
    stop = Stop.parse(cfg.stop)
    decode = model.decode
    features = None
    if model.name == "digits":
        from hasten.metrics import digit_features

        features = digit_features()
    parallel = [m for m in cfg.methods if m != "sequential"]
    configs = [(n, m, k, i) for n in cfg.steps for m in parallel for k in cfg.cores for i in cfg.inits]
    bar = tqdm(total=len(cfg.steps) + len(configs), desc="bench", unit="run", disable=not cfg.progress)

    rows, runs = [], []
    curves: dict[str, list[tuple[int, float]]] = {}
    scaling: dict[str, list[tuple[int, float, float]]] = {}
    x_init = initial_noise(model, cfg.batch, cfg.seed)
    for n in cfg.steps:
        grid = model.grid(n)
        step = make_step(grid, cfg.solver)
        executor = BatchedExecutor(model.denoiser(grid))
        executor.evaluate([Eval(x_init, 0)])  # warm-up, untimed
        ref = run(Sequential(), x_init, step, executor)
        ref_images = decode(ref.x)
        seq_row = {
            "method": "sequential", "steps": n, "cores": 1, "init": None, "rounds": ref.rounds, "speedup": 1.0,
            "nfe": ref.nfe, "wall_s": ref.wall_s, "wall_speedup": 1.0, "rmse": 0.0, "psnr": math.inf,
            "fd": features.frechet(ref_images) if features else None,
        }
        if "sequential" in cfg.methods:
            rows.append(seq_row)
        bar.update(1)
        for _, name, cores, init in (c for c in configs if c[0] == n):
            method = make_method(name, cores=cores, init=init)
            hits = []
            result = run(method, x_init, step, executor, "none",
                         on_hit=lambda h: hits.append(h))
            final = result.x
            label = f"{name} K={cores} {init} N={n}"
            hit_rows = []
            chosen = None
            for h in hits:
                images = decode(h.x)
                entry = {
                    "core": h.core, "round": h.round, "nfe": h.nfe, "wall_s": h.wall_s,
                    "rmse": rmse(h.x, ref.x),
                    "psnr": psnr(images, ref_images, 1.0) if images is not None else psnr(h.x, ref.x),
                    "residual": h.residual, "dist_to_final": rmse(h.x, final),
                }
                hit_rows.append(entry)
                if chosen is None and stop.reached(h.core, h.residual):
                    chosen = (h, entry, images)
            if chosen is None:
                chosen = (hits[-1], hit_rows[-1], decode(hits[-1].x))
            h, entry, images = chosen
            row = {
                "method": name, "steps": n, "cores": cores, "init": init, "rounds": h.round,
                "speedup": n / h.round, "nfe": h.nfe, "wall_s": h.wall_s, "wall_speedup": ref.wall_s / h.wall_s,
                "rmse": entry["rmse"], "psnr": entry["psnr"],
                "fd": features.frechet(images) if features else None,
            }
            rows.append(row)
            runs.append({
                "label": label, "method": name, "steps": n, "cores": cores, "init": init,
                "init_sequence": result.params.get("init"), "stop": str(stop),
                "total_rounds": result.rounds, "total_nfe": result.nfe, "total_wall_s": result.wall_s,
                "last_hit_max_abs_diff_vs_sequential": float((final - ref.x).abs().max()),
                "hits": hit_rows,
            })
            curves[label] = [(e["round"], e["dist_to_final"]) for e in hit_rows]
            scaling.setdefault(f"{name} {init} N={n}", []).append((cores, row["speedup"], row["rmse"]))
            if ref_images is not None:
                grid_rows = [("sequential", ref_images)] + [
                    (f"core {e['core']} r{e['round']}", decode(hh.x)) for e, hh in zip(hit_rows, hits)
                ]
                save_hit_grid(grid_rows, out / f"hits_{name}_k{cores}_{init}_n{n}.png",
                              title=f"{label}: hits in landing order (top: sequential)")
            bar.update(1)
    bar.close()

    title = f"{model.name}, batch {cfg.batch}, seed {cfg.seed}"
    if curves:
        plot_convergence(curves, out / "convergence.png", f"CHORDS convergence ({title})")
        plot_scaling(scaling, out / "scaling.png", f"CHORDS scaling, stop={stop} ({title})")
    table = markdown_table(rows, COLUMNS)
    report = {
        "command": cfg.command, "model": model.name, "seed": cfg.seed, "batch": cfg.batch, "stop": str(stop),
        "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
        "rows": rows, "runs": runs,
    }
    write_json(report, out / "results.json")
    (out / "results.md").write_text(
        f"# hasten bench: {title}\n\nCommand: `{cfg.command}`\n\nRows read at stop rule `{stop}`; "
        f"quality against sequential sampling of the same seed.\n\n{table}\n"
    )
    log(table)
    return report
