"""``hasten demo``: what hasten gives on the machine at hand, measured and labelled honestly.

Three measurements on the embedded digits model, each timed after a warm-up
and repeated (the median is reported), all through ``hasten bench``:

1. **One device**: sequential sampling, AB-Cache (a wall-clock win on one
   device: fewer model calls), CHORDS with K = 4, 6, 8 cores with and without
   the cache. CHORDS on one device evaluates its K cores as one batch, so its
   wall time here is *not* its speedup; its round speedup is what K devices
   (one per core) would give, shown beside the measured wall time, never in
   its place.
2. **As many processes as this machine has devices** (GPUs, else CPU cores,
   at most 8): a real ``torchrun`` launch (NCCL on GPUs, gloo on CPUs) of
   CHORDS with one core per process, against sequential sampling in one
   process of the same size. This is a measured multi-device wall speedup.
3. The summary ``demo.md`` / ``demo.json`` beside the bench reports
   (``results.md``, ``results.json``, ``convergence.png``, ``scaling.png``,
   ``pareto.png``, ``hits_*.png``; the torchrun run's as ``distributed-results.*``).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

from hasten.errors import HastenError

DEMO_MODEL = "digits"
DEMO_STEPS = 50
DEMO_CORES = (4, 6, 8)
DEMO_CACHE = "abcache:2"


def device_count() -> tuple[int, str]:
    """Devices a torchrun launch here can use: GPUs when CUDA has them, else CPU cores (at most 8)."""
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return torch.cuda.device_count(), "GPU"
    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1), "CPU core"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _one_device(out, batch: int, repeats: int, progress: bool, log: Callable[[str], None]) -> dict:
    from hasten.bench import BenchConfig, run_bench
    from hasten.spec import RunSpec

    run = RunSpec.build(DEMO_MODEL, "chords", steps=None, stop="first", batch=batch)
    cfg = BenchConfig(run=run, methods=("sequential", "chords"), cores=DEMO_CORES, steps=(str(DEMO_STEPS),),
                      caches=("none", DEMO_CACHE), repeats=repeats, progress=progress,
                      command=f"hasten demo (one device: bench --model {DEMO_MODEL} --methods sequential,chords "
                              f"--cores {','.join(map(str, DEMO_CORES))} --caches none,{DEMO_CACHE} --batch {batch} "
                              f"--repeats {repeats})")
    return run_bench(cfg, out, log=log)


def _distributed(devices: int, kind: str, folder: Path, batch: int, repeats: int, timeout_s: float) -> dict:
    """``torchrun`` of ``hasten bench --executor distributed`` with ``devices`` ranks; its results.json."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(devices),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               "-m", "hasten", "bench", "--model", DEMO_MODEL, "--executor", "distributed",
               "--methods", "sequential,chords", "--cores", str(devices), "--steps", str(DEMO_STEPS),
               "--batch", str(batch), "--repeats", str(repeats), "--until-stop", "--no-progress",
               "--out", str(folder), "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise HastenError(f"the {devices}-process torchrun launch did not finish within {timeout_s:g} s") from None
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise HastenError(f"the {devices}-process torchrun launch failed (exit {done.returncode}):\n{tail}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["launch"] = shlex.join(["torchrun", *command[3:]])
    report["device_kind"] = kind
    return report


def summary_rows(one: dict, dist: dict | None, devices: int, kind: str) -> list[dict]:
    """The demo's table: what ran where, its measured wall time, and its round speedup labelled as what K devices give."""
    rows = []
    for r in one["rows"]:
        cores = r["cores"] if r["method"] == "chords" else 1
        rows.append({
            "configuration": r["method"] + (f" K={cores}" if r["method"] == "chords" else "")
            + ("" if r["cache"] == "none" else f" + {r['cache'].split(' ')[0]}"),
            "ran on": f"1 process ({one['torch_threads']} threads)", "rounds": r["rounds"], "nfe": r["nfe"],
            "devices for round speedup": cores, "round_speedup": r["speedup"], "wall_s": r["wall_s"],
            "wall_speedup": r["wall_speedup"], "psnr": r["psnr"],
        })
    if dist is not None:
        for r in dist["rows"]:
            on = f"{devices} processes, 1 {kind} each (torchrun)" if r["method"] == "chords" else \
                f"1 process of the {devices} (1 {kind})"
            rows.append({
                "configuration": r["method"] + (f" K={r['cores']}" if r["method"] == "chords" else ""),
                "ran on": on, "rounds": r["rounds"], "nfe": r["nfe"],
                "devices for round speedup": r["cores"] if r["method"] == "chords" else 1,
                "round_speedup": r["speedup"], "wall_s": r["wall_s"], "wall_speedup": r["wall_speedup"],
                "psnr": r["psnr"],
            })
    return rows


COLUMNS = [("configuration", "configuration"), ("ran on", "ran on"), ("rounds", "rounds"), ("nfe", "NFE/sample"),
           ("wall_s", "wall s (median)"), ("wall_speedup", "measured wall speedup"),
           ("round_speedup", "round speedup"), ("devices for round speedup", "...on this many devices"),
           ("psnr", "PSNR dB vs sequential")]


def run_demo(out, batch: int = 16, repeats: int = 3, devices: int | None = None, progress: bool = True,
             log: Callable[[str], None] = print) -> dict:
    """Run the demo into ``out`` (an :class:`~hasten.output.OutputFolder` or an existing folder); returns demo.json."""
    from hasten.report import markdown_table, write_json

    count, kind = device_count()
    devices = count if devices is None else devices
    log(f"1/2 one device: sequential, AB-Cache and CHORDS K={','.join(map(str, DEMO_CORES))} on {DEMO_MODEL}, "
        f"batch {batch}, {repeats} timed runs each")
    one = _one_device(out, batch, repeats, progress, lambda _: None)
    dist, note = None, ""
    if devices >= 2:
        log(f"2/2 {devices} processes: CHORDS K={devices} under torchrun, one {kind} per process")
        with tempfile.TemporaryDirectory() as tmp:
            dist = _distributed(devices, kind, Path(tmp) / "bench", batch, repeats, timeout_s=600)
            for name in ("results.md", "results.json"):  # into --out with the rest: complete or not at all
                shutil.copyfile(Path(tmp) / "bench" / name, out / f"distributed-{name}")
    else:
        note = f"This machine has one {kind}, so there is no multi-process run."
    rows = summary_rows(one, dist, devices, kind)
    table = markdown_table(rows, COLUMNS)
    text = (f"# hasten demo: {DEMO_MODEL}, {DEMO_STEPS} DDIM steps, batch {batch}, on {one['device_name']}\n\n"
            "*Measured wall speedup* is sequential wall time over this configuration's, on this machine, every "
            f"overhead included (the median of {repeats} runs after a warm-up). *Round speedup* is steps over "
            "rounds of model latency: the wall speedup the configuration gets on that many devices, one per "
            "CHORDS core; on one device CHORDS runs its cores as one batch, so there its measured wall time is "
            "the honest number. AB-Cache calls the model on fewer steps, a win on one device.\n\n"
            f"{table}\n\n{note}\n\nCommands: `{one['command']}`"
            + (f"; `{dist['launch']}`" if dist else "") + "\n")
    report = {"rows": rows, "one_device": one["command"], "distributed": dist and dist["launch"],
              "devices": devices, "device_kind": kind, "repeats": repeats, "batch": batch}
    write_json(report, out / "demo.json")
    (out / "demo.md").write_text(text)
    log(table)
    return report
