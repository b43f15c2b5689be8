"""The (T, C) layouts of ``hasten tune --devices W``: time groups x context degree, ranked by predicted wall time.

For a run with rounds of ``rows_r`` latent rows, on T = W / C time groups of C
ranks each (:mod:`hasten.executors.context`)::

    wall(T, C) = bookkeeping + sum over rounds r with model work of
                 forward_C(ceil(rows_r / T)) + gather(ceil(rows_r / T))   (T > 1)

That is :func:`~hasten.tune.latency.predict_wall` on T devices with ``forward_C`` as its curve.
``forward_C`` is the seconds of one forward of that many rows shared by C
ranks. Its source is said with every prediction: *measured here* (C = 1 is
tune's own calibrated curve; C > 1 is timed in C spawned gloo ranks running
the pipeline's transformer in diffusers' context-parallel mode, with the same
in-run offset), or a *latency table* the user supplies for a machine that
cannot be measured here (``--latency-table FILE``)::

    {"device": "8x H100 SXM",
     "forward": {"1": {"rows": [1, 2, 4], "seconds": [0.21, 0.40, 0.79]},
                 "2": {"rows": [1, 2, 4], "seconds": [0.13, 0.24, 0.46]}},
     "gather": {"rows": [1, 2, 4], "seconds": [0.001, 0.001, 0.002]}}

``gather`` (optional, default: the all-gather measured here) is the time
dim's all-gather of one round's outputs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from hasten.errors import HastenError
from hasten.tune.latency import Curve, predict_wall


def layouts(devices: int) -> list[tuple[int, int]]:
    """Every (T, C) with T x C = ``devices``, C ascending."""
    return [(devices // c, c) for c in range(1, devices + 1) if devices % c == 0]


def degree_spec(c: int, heads: int | None) -> str | None:
    """The ``--context-parallel`` spec of degree C: Ulysses where the heads split evenly, else ring (None for 1)."""
    if c == 1:
        return None
    return f"ulysses={c}" if heads is None or heads % c == 0 else f"ring={c}"


def _curve(entry: Any, where: str) -> Curve:
    if not isinstance(entry, dict) or not isinstance(entry.get("rows"), list) or \
            not isinstance(entry.get("seconds"), list) or len(entry["rows"]) != len(entry["seconds"]) or \
            not entry["rows"]:
        raise HastenError(f"--latency-table: {where} must be {{\"rows\": [...], \"seconds\": [...]}} of equal length")
    rows, seconds = entry["rows"], entry["seconds"]
    if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rows) or rows != sorted(set(rows)):
        raise HastenError(f"--latency-table: {where} rows must be increasing integers >= 1, got {rows}")
    if any(isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s < 0 for s in seconds):
        raise HastenError(f"--latency-table: {where} seconds must be finite numbers >= 0, got {seconds}")
    return Curve(list(rows), [float(s) for s in seconds])


def load_table(path: str | Path) -> dict:
    """A latency table (format in the module docstring), checked: {"device", "forward": {C: Curve}, "gather"}."""
    from hasten.config import read_json_file

    path = Path(path)
    data = read_json_file(path, f"--latency-table {path}")
    if not isinstance(data, dict) or not isinstance(data.get("forward"), dict) or not data["forward"]:
        raise HastenError(f"--latency-table {path}: needs a \"forward\" mapping of context degrees to curves")
    forward = {}
    for key, entry in data["forward"].items():
        if not str(key).isdigit() or int(key) < 1:
            raise HastenError(f"--latency-table {path}: forward keys are context degrees >= 1, got {key!r}")
        forward[int(key)] = _curve(entry, f"forward[{key}]")
    gather = None if data.get("gather") is None else _curve(data["gather"], "gather")
    return {"device": str(data.get("device", "unnamed")), "forward": forward, "gather": gather,
            "path": str(path)}


def rank_layouts(row: dict, devices: int, forwards: dict[int, Curve], gather: Curve | None, heads: int | None,
                 source: str, missing: str = "", reasons: dict[int, str] | None = None) -> list[dict]:
    """The layouts of ``devices`` for one tune row, fastest first; a degree without a curve says why."""
    out = []
    for t, c in layouts(devices):
        entry = {"layout": f"{t}x{c}", "time": t, "context": c, "context_parallel": degree_spec(c, heads)}
        if c not in forwards:
            entry.update(predicted_s=None, source=f"no forward latency at C={c}{(reasons or {}).get(c, missing)}")
        else:
            entry.update(predicted_s=predict_wall(row["round_rows"], forwards[c], t, row["bookkeeping_s"], gather),
                         source=source)
        out.append(entry)
    out.sort(key=lambda e: (e["predicted_s"] is None, e["predicted_s"] or 0.0))
    return out


def _cp_worker(rank: int, world: int, port: int, run: dict, spec: str, sizes: list[int], repeats: int,
               threads: int, out: str) -> None:
    """One rank of :func:`measure_context_forward` (module level: spawned processes import it)."""
    from hasten.session import run_spec
    from hasten.spec import RunSpec
    from hasten.tune.latency import measure_latency
    from hasten.tune.spawned import _gloo_rank

    with _gloo_rank(rank, world, port, threads, 120):
        s = run_spec(RunSpec.from_dict({**run, "executor": "distributed", "context_parallel": spec,
                                       "method": "sequential", "cache": None, "stop": "none"}))
        curve = measure_latency(s.executor, s.x, s.step.grid.steps // 2, sizes, repeats, threads)
        if rank == 0:
            Path(out).write_text(json.dumps(curve.seconds))


def measure_context_forward(run: dict, c: int, spec: str, sizes: Sequence[int], repeats: int, threads: int) -> Curve:
    """Seconds of one forward of each size in ``sizes``, shared by ``c`` spawned gloo ranks (``spec``)."""
    from hasten.tune.spawned import _spawn_gloo

    seconds = _spawn_gloo(_cp_worker, c, (run, spec, list(sizes), repeats, threads))
    return Curve(list(sizes), seconds, threads)
