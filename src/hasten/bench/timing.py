"""Timing a bench run honestly: a warm-up at the run's shape, costs besides rounds, the median of repeats."""

from __future__ import annotations

import os
from typing import Callable

import torch

from hasten.denoise import CompileStats, EmulatedDevice
from hasten.rounds import Eval


def warm_up(setup) -> None:
    """One untimed round at the shape the run's rounds will have: kernels, the compiled graph (forwards are
    padded to the widest round), collectives."""
    width = setup.method.max_width(setup.step.grid.steps)
    setup.executor.evaluate([Eval(setup.x, 0)] * (width or 1))


def timed(executor, job: Callable, compiled: CompileStats | None = None):
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


def median_of(repeats: int, attempt: Callable, wall: Callable) -> tuple:
    """Run ``attempt`` ``repeats`` times; return the attempt whose ``wall(attempt)`` is the median, and every wall.

    Counts (rounds, NFE) are the same in every attempt; only the timing varies with the machine's load.
    """
    attempts = [attempt() for _ in range(repeats)]
    walls = [wall(a) for a in attempts]
    order = sorted(range(repeats), key=walls.__getitem__)
    return attempts[order[(repeats - 1) // 2]], walls


def device_name(device: torch.device) -> str:
    """The accelerator's name (e.g. ``NVIDIA H100 80GB HBM3``), or the CPU's core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores)"
