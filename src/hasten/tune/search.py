"""The tuner: run the candidates, measure the latency, predict and rank (:func:`tune`)."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from hasten.checks import check_int
from hasten.errors import HastenError
from hasten.tune.candidates import Candidate, candidates
from hasten.tune.latency import Curve, batch_sizes, calibrate, measure_latency, predict_wall, torch_threads, worker_threads
from hasten.tune.spawned import measure_comm, measure_rounds
from hasten.tune.target import Target


@dataclass
class TuneReport:
    """What :func:`tune` measured: ranked rows, the curves, the reference and the winner."""

    rows: list[dict]
    best: dict | None  # the winner's config; None when no candidate meets the target
    latency: Curve
    comm: Curve | None
    settings: dict
    skipped: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**self.settings, "latency": self.latency.to_dict(),
                "comm": None if self.comm is None else self.comm.to_dict(), "rows": self.rows,
                "skipped": self.skipped, "best": self.best}


def tune(run: Any, target: "Target | str", devices: int = 1, *, steps: int | None = None, batch: int | None = None,
         seed: int | None = None, solver: str | None = None, max_batch: int | None = None,
         chords_cores: Sequence[int] | None = None, widths: Sequence[int] | None = None,
         methods: Sequence[str] | None = None, threads: int | None = None, comm_ms: float | None = None,
         repeats: int = 5, progress: bool = True, log: Callable[[str], None] = lambda _: None,
         latency_table: str | None = None) -> TuneReport:
    """Run the candidates on ``run``'s model and rank them for ``devices`` devices.

    ``run``: a :class:`~hasten.spec.RunSpec` (its model, steps, batch, seed,
    solver, call and placement are the reference's; its method is ignored), or
    a model (spec or opened) with ``steps`` (50), ``batch`` (4), ``seed`` (0),
    ``solver`` and ``max_batch`` given here. ``threads``: torch threads of the
    candidate runs and the latency curve (default :func:`worker_threads`, what
    each distributed worker gets); ``comm_ms``: a fixed communication time per
    round instead of measuring the all-gather (D > 1). When the model is an
    embedded model named by its spec, D > 1 on the CPU is measured as whole
    distributed rounds in D spawned processes (:func:`measure_rounds`), else
    as this process's forward plus a measured all-gather (:func:`measure_comm`).

    With ``devices`` > 1 the (T, C) layouts of time groups x context degree
    are ranked too, for the winner (:mod:`hasten.tune.layouts`): forward
    latencies at each degree measured here, or read from ``latency_table``.

    Refused before any work: a bad target, devices, repeats or threads, a
    non-finite ``comm_ms``, and a candidate list that is empty or names core
    counts / widths the steps cannot take.
    """
    from hasten.session import Session
    from hasten.checks import check_finite
    from hasten.spec import RunSpec

    target = Target.parse(target) if isinstance(target, str) else target
    check_int("--devices", devices, 1)
    check_int("--repeats", repeats, 1)
    check_int("--threads", threads, 1, allow_none=True)
    if comm_ms is not None:
        check_finite("--comm-ms", comm_ms, 0.0)
    given = {"steps": steps, "batch": batch, "seed": seed, "solver": solver, "max_batch": max_batch}
    if not isinstance(run, RunSpec):
        run = RunSpec.build(run, "sequential", **{"steps": 50, "batch": 4, "seed": 0,
                                                  **{k: v for k, v in given.items() if v is not None}})
    elif any(v is not None for v in given.values()):
        run = run.replace(**{k: v for k, v in given.items() if v is not None})
    run = run.replace(method="sequential", cache="none", stop="none")
    cands = candidates(run.steps, run.sampling.solver, chords_cores, widths, methods=methods)  # checked first
    table = None
    if latency_table is not None:
        from hasten.tune.layouts import load_table

        table = load_table(latency_table)
    threads = threads if threads is not None else worker_threads(devices)
    spawnable = run.model if isinstance(run.model, str) and _embedded(run.model) else None
    session = Session.open(run)
    with torch_threads(threads):
        return _tune(run, session, cands, target, devices, threads, comm_ms, repeats, progress, log, spawnable, table)


def _embedded(spec: str) -> bool:
    from hasten.models import is_embedded

    return is_embedded(spec)


def _tune(run, session, cands: list[Candidate], target: Target, devices: int, threads: int, comm_ms: float | None,
          repeats: int, progress: bool, log: Callable[[str], None], spawnable: str | None,
          table: dict | None = None) -> TuneReport:
    from tqdm.auto import tqdm

    from hasten.metrics import ms_ssim, psnr, rmse, ssim
    from hasten.models import MODEL_SCORERS, adherence

    steps, batch, seed, solver = run.steps, run.batch, run.seed, run.sampling.solver

    def setup(c: Candidate):
        s = session.prepare(c.sampling(solver), seed=seed, batch=batch, call=run.call)
        s.executor.time_model = True  # the bookkeeping is the wall time outside the model
        return s

    def timed(s):
        before = s.executor.model_seconds
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = s.sample()
        return result, s.executor.model_seconds - before, [str(w.message) for w in caught]

    log(f"reference: sequential, {steps} steps, batch {batch}")
    reference = Candidate("sequential", steps, "reference")
    ref_setup = setup(reference)
    ref_setup.sample()  # warm-up, untimed
    ref, ref_model_s, _ = timed(ref_setup)
    decode = ref_setup.model.decode
    ref_images = decode(ref.x)

    if ref_images is None and target.metric == "ssim":
        raise HastenError(f"--target {target}: {getattr(ref_setup.model, 'name', run.model)}'s samples are not "
                          "images, so they have no SSIM; use psnr:DB or rmse:X")

    scorer, prompt = MODEL_SCORERS.get(getattr(ref_setup.model, "name", str(run.model))), (run.call or {}).get("prompt")

    def quality(x: torch.Tensor) -> dict:
        images = decode(x)
        if images is None:
            return {"psnr": psnr(x, ref.x), "rmse": rmse(x, ref.x), "ssim": None, "ms_ssim": None, "adherence": None}
        return {"psnr": psnr(images, ref_images, 1.0), "rmse": rmse(x, ref.x), "ssim": ssim(images, ref_images),
                "ms_ssim": ms_ssim(images, ref_images), "adherence": adherence(scorer, images, prompt)}

    def meets(q: dict) -> bool:
        return target.met(q["psnr"], q["rmse"], q["ssim"])

    runs: list[tuple[Candidate, Any, float, list[str]]] = [(reference, ref, ref_model_s, [])]
    failed: dict[str, str] = {}
    skipped = []
    bar = tqdm(cands, desc="tune", unit="config", disable=not progress)
    for c in bar:
        bar.set_postfix_str(c.label, refresh=True)
        if c.chain in failed:
            skipped.append({"label": c.label, "reason": f"pruned: {failed[c.chain]} missed the target"})
            continue
        result, model_s, warned = timed(setup(c))
        runs.append((c, result, model_s, warned))
        if not meets(quality(result.x)):
            failed[c.chain] = c.label
    bar.close()

    # the latency curve, up to the most rows one device needs, under the workers' threads
    most = max(math.ceil(r / devices) for _, res, _, _ in runs for r in res.round_rows if r)
    log(f"latency curve: 1..{most} rows per forward, {threads} thread(s)")
    latency = measure_latency(ref_setup.executor, ref_setup.x, steps // 2, batch_sizes(most), repeats, threads)
    calibrate(latency, [(res.round_rows, model_s) for _, res, model_s, _ in runs])
    log(f"in-situ calibration: a forward inside a run takes {1000 * latency.offset:+.2f} ms beside the tight-loop "
        "curve")
    comm = None
    gather = None  # the all-gather of a layout's time dim, where the latency curve does not hold it
    kind = "forward (one process)"
    if devices > 1:
        import torch.distributed as dist

        grouped = dist.is_available() and dist.is_initialized()
        if comm_ms is not None:
            comm = Curve([1], [comm_ms / 1000])
            kind += f" + {comm_ms:g} ms per round (--comm-ms)"
        elif spawnable is not None and not grouped and ref.x.device.type == "cpu":
            log(f"distributed rounds: {devices} gloo processes, {threads} thread(s) each")
            rounds = measure_rounds(spawnable, devices, steps, batch_sizes(most), repeats, threads)
            rounds.offset = latency.offset
            latency, kind = rounds, f"distributed round ({devices} processes: forward + all-gather)"
        else:
            log(f"communication: all-gather over {devices} ranks")
            comm = measure_comm(devices, tuple(ref.x.shape[1:]), batch_sizes(most), device=ref.x.device)
            kind += " + all-gather (measured)"
        gather = comm if "distributed round" not in kind else None

    model_name = run.model if isinstance(run.model, str) else getattr(ref_setup.model, "name", str(run.model))
    rows = []
    for c, result, model_s, warned in runs:
        q = quality(result.x)
        bookkeeping = max(0.0, result.wall_s - model_s)
        rows.append({
            "label": c.label, "reference": c is reference, "method": c.method, "steps": c.steps, "cores": c.cores, "options": c.options,
            "cache": c.cache, "stop": c.stop,
            **{k: v for k, v in result.summary().items() if k in ("rounds", "all_rounds", "nfe", "requests")},
            "round_rows": result.round_rows,
            "max_rows": max(result.round_rows), "bookkeeping_s": bookkeeping, "model_s": model_s,
            "predicted_s": predict_wall(result.round_rows, latency, devices, bookkeeping, comm),
            "measured_s": result.wall_s, **q, "meets": meets(q), "warnings": warned,
            "config": c.config(solver, model_name),
        })
    base = rows[0]["predicted_s"]
    for row in rows:
        row["predicted_speedup"] = base / row["predicted_s"] if row["predicted_s"] > 0 else math.inf
    rows.sort(key=lambda r: (not r["meets"], r["predicted_s"] if r["meets"] else -r["psnr"]))
    for i, row in enumerate(rows, 1):
        row["rank"] = i
    meeting = [row for row in rows if row["meets"]]
    best = None
    if any(not row["reference"] for row in meeting):  # some candidate meets the target (the reference always does)
        winner = meeting[0]  # the fastest that meets it (rows are ranked); the reference itself where none is faster
        best = {**winner["config"], "tune": {
            "model": getattr(ref_setup.model, "name", model_name), "devices": devices, "target": str(target),
            "label": winner["label"], "predicted_s": winner["predicted_s"],
            "predicted_speedup": winner["predicted_speedup"], "rounds": winner["rounds"], "nfe": winner["nfe"],
            "psnr": winner["psnr"], "rmse": winner["rmse"], "ssim": winner["ssim"], "batch": batch, "seed": seed}}
    settings = {"model": model_name, "devices": devices, "target": str(target), "steps": steps,
                "batch": batch, "seed": seed, "solver": ref_setup.step.name, "threads": threads,
                "device": str(ref.x.device), "date": time.strftime("%Y-%m-%d"), "latency_kind": kind,
                "calibration_offset_s": latency.offset,
                "reference_measured_s": ref.wall_s, "candidates": len(cands), "run": len(runs) - 1,
                "pruned": len(skipped), "met": len(meeting)}
    if devices > 1:
        chosen = meeting[0] if best is not None else rows[0]
        settings["layouts"] = _layouts(run, ref_setup.model, chosen, devices, latency, gather, table, threads, repeats,
                                       batch_sizes(most), log)
    return TuneReport(rows, best, latency, comm, settings, skipped)


def _layouts(run, model, row: dict, devices: int, latency: Curve, gather: Curve | None, table: dict | None,
             threads: int, repeats: int, sizes: list[int], log: Callable[[str], None]) -> dict:
    """The (T, C) layouts of ``devices`` ranked for ``row``, with the source of their forward latencies."""
    from hasten.executors.context import parse_context_parallel
    from hasten.integrations.context import check_backend
    from hasten.tune.layouts import degree_spec, layouts, measure_context_forward, rank_layouts

    reasons: dict[int, str] = {}

    network = getattr(model, "network", None)
    heads = None if network is None else network.config.get("num_attention_heads")
    can_share = isinstance(run.model, str) and network is not None and getattr(network, "_cp_plan", None) is not None
    missing = "" if can_share else (": this model has no context-parallel plan (only pipelines whose transformer "
                                    "diffusers can share)")
    if table is not None:
        source = f"latency table {table['path']} ({table['device']})"
        forwards = {c: v for c, v in table["forward"].items() if can_share or c == 1}
        missing = missing or " in the table"
        gather = table["gather"] if table["gather"] is not None else gather
    else:
        source, forwards = f"measured here ({threads} thread(s) per rank)", {1: latency}
        for _, c in layouts(devices):
            if c > 1 and can_share:
                spec = degree_spec(c, heads)
                try:
                    check_backend(parse_context_parallel(spec), network)
                except HastenError as err:  # e.g. ring attention on the native backend: not runnable here
                    reasons[c] = f": {err}"
                    continue
                log(f"context-parallel forward: {c} gloo processes ({spec})")
                curve = measure_context_forward(run.to_dict(), c, spec, sizes, repeats, threads)
                curve.offset = latency.offset
                forwards[c] = curve
    ranked = rank_layouts(row, devices, forwards, gather, heads, source, missing, reasons)
    return {"for": row["label"], "source": source, "rows": ranked,
            "forward": {str(c): curve.to_dict() for c, curve in forwards.items()}}
