"""Latency curves and the wall-time predictor of ``hasten tune``.

A :class:`Curve` is the seconds of one forward (or one distributed round)
against rows per forward, measured at a few sizes and interpolated;
:func:`calibrate` shifts it by one constant per forward so that it explains
the model time the candidate runs measured; :func:`predict_wall` turns a
run's rounds (``Result.round_rows``) into wall time on D devices::

    wall(D) = sum over rounds r with model work of  latency(ceil(rows_r / D))
            + comm(ceil(rows_r / D))        (D > 1: the all-gather, measured)
            + bookkeeping                   (measured: the run's wall time here
                                             minus its time inside the model)
"""

from __future__ import annotations

import math
import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from hasten.errors import HastenError


@dataclass
class Curve:
    """Seconds against rows, measured at a few sizes, interpolated linearly.

    Beyond the largest size the last segment is extended, below the smallest
    the smallest size's time holds; 0 rows cost 0. ``offset`` is added to every
    forward (the in-situ calibration of :func:`calibrate`).
    """

    sizes: list[int]
    seconds: list[float]
    threads: int | None = None
    offset: float = 0.0

    def __call__(self, rows: float) -> float:
        if rows <= 0:
            return 0.0
        xs, ys = self.sizes, [v + self.offset for v in self.seconds]
        if len(xs) == 1 or rows <= xs[0]:  # one point: a constant
            return ys[0]
        for i in range(1, len(xs)):
            if rows <= xs[i] or i == len(xs) - 1:
                a, b = xs[i - 1], xs[i]
                return max(0.0, ys[i - 1] + (ys[i] - ys[i - 1]) * (rows - a) / (b - a))
        raise AssertionError("unreachable")

    def to_dict(self) -> dict:
        return {"rows": self.sizes, "seconds": self.seconds, "threads": self.threads, "offset": self.offset}


def batch_sizes(max_rows: int) -> list[int]:
    """1, 2, 4, ... below ``max_rows``, then ``max_rows`` itself."""
    sizes, b = [], 1
    while b < max_rows:
        sizes.append(b)
        b *= 2
    return sizes + [max(1, max_rows)]


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (None: unchanged)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def worker_threads(devices: int) -> int:
    """Threads each of ``devices`` CPU ranks runs with under ``torchrun ... hasten sample --executor distributed``.

    torchrun sets ``OMP_NUM_THREADS=1`` for its workers unless it is set already,
    and the CLI divides the threads by the ranks on the node; one device keeps
    this process's own count.
    """
    if devices <= 1:
        return torch.get_num_threads()
    omp = os.environ.get("OMP_NUM_THREADS")
    threads = int(omp) if omp and omp.isdigit() else 1
    return max(1, threads // devices)


def measure_latency(executor, x: torch.Tensor, index: int, sizes: Sequence[int], repeats: int = 5,
                    threads: int | None = None) -> Curve:
    """Median seconds of one round of ``b`` rows through ``executor``, for each ``b`` in ``sizes``.

    ``x`` holds at least one latent row; a round of ``b`` rows is requests of
    ``x``'s first rows at grid point ``index`` (at most ``x``'s rows each, so a
    denoiser with a prompt per sample finds one for every row). One untimed warm-up per size comes first; then the sizes are
    timed in turn, ``repeats`` times over.
    """
    from hasten.devices import synchronize
    from hasten.rounds import Eval

    times: dict[int, list[float]] = {b: [] for b in sizes}
    with torch_threads(threads):
        inputs = {b: [Eval(x[:min(n, x.shape[0])].contiguous(), index) for n in range(b, 0, -x.shape[0])]
                  for b in sizes}
        for b in sizes:
            executor.evaluate(inputs[b])
        for _ in range(repeats):  # sizes interleaved: a burst of load elsewhere spreads over them
            for b in sizes:
                synchronize(x.device)
                t0 = time.perf_counter()
                executor.evaluate(inputs[b])
                synchronize(x.device)
                times[b].append(time.perf_counter() - t0)
        used = torch.get_num_threads()
    return Curve(list(sizes), [statistics.median(times[b]) for b in sizes], used)


def calibrate(latency: Curve, runs: Sequence[tuple[Sequence[int], float]]) -> float:
    """Set ``latency.offset`` so the curve explains the model time the runs measured; returns it.

    ``runs``: (rows per round, seconds inside the model) of runs on one device.
    A forward inside a run is slower than the same forward repeated in a tight
    loop (the bookkeeping between rounds evicts caches: a refill, about the
    same for every forward; on digits, 1 thread, a few ms), so the curve gives
    the shape (time against rows) and the runs one constant per forward: the
    mean gap between the model time they measured and the curve. It never
    lowers a forward below half the curve's smallest time.
    """
    latency.offset = 0.0
    forwards = sum(1 for rows, _ in runs for r in rows if r)
    curve = sum(latency(r) for rows, _ in runs for r in rows if r)
    measured = sum(seconds for _, seconds in runs)
    if forwards and measured > 0:
        latency.offset = max((measured - curve) / forwards, -0.5 * min(latency.seconds))
    return latency.offset


def predict_wall(round_rows: Sequence[int], latency: Curve, devices: int = 1, bookkeeping_s: float = 0.0,
                 comm: Curve | None = None) -> float:
    """Predicted wall seconds of a run on ``devices`` devices (model in the module docstring).

    ``round_rows``: latent rows that reached the model in each round
    (``Result.round_rows``); ``bookkeeping_s``: the run's time outside the model.
    """
    if devices < 1:
        raise HastenError(f"devices must be >= 1, got {devices}")
    total = bookkeeping_s
    for rows in round_rows:
        if rows:
            share = math.ceil(rows / devices)
            total += latency(share) + (comm(share) if comm is not None and devices > 1 else 0.0)
    return total
