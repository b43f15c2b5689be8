"""Timings that need several processes: gloo ranks spawned on 127.0.0.1 for ``hasten tune``'s D > 1.

:func:`measure_comm` times the distributed executor's all-gather;
:func:`measure_rounds` whole distributed rounds (each rank's forward plus the
all-gather), so contention and skew between ranks are in the measurement.
Inside a launch of D ranks both are measured there instead.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch

from hasten.errors import HastenError
from hasten.tune.latency import Curve


@contextmanager
def _gloo_rank(rank: int, world: int, port: int, threads: int, timeout_s: float) -> Iterator[None]:
    """One spawned gloo rank on 127.0.0.1 with ``threads`` torch threads; all ranks leave together."""
    import datetime

    import torch.distributed as dist

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        yield
        dist.barrier()  # leave together: gloo aborts a rank whose peer tears down mid-connection
    finally:
        dist.destroy_process_group()


def _spawn_gloo(worker, devices: int, args: tuple) -> list[float]:
    """Run ``worker(rank, devices, port, *args, out)`` in ``devices`` spawned processes; rank 0's JSON result."""
    import socket
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        mp.start_processes(worker, args=(devices, port, *args, out), nprocs=devices, start_method="spawn", join=True)
        return json.loads(Path(out).read_text())


def _comm_worker(rank: int, world: int, port: int, shape: tuple, sizes: list[int], repeats: int, out: str) -> None:
    """One rank of :func:`measure_comm` (module level: spawned processes import it)."""
    from hasten.executors.distributed import _all_gather_single

    with _gloo_rank(rank, world, port, 1, 60):
        seconds = _time_gather(_all_gather_single, world, shape, sizes, repeats)
        if rank == 0:
            Path(out).write_text(json.dumps(seconds))


def _time_gather(gather, world: int, shape: tuple, sizes: list[int], repeats: int,
                 device: torch.device | str = "cpu") -> list[float]:
    import torch.distributed as dist

    from hasten.devices import synchronize

    seconds = []
    for b in sizes:
        times = []
        for k in range(repeats + 1):
            dist.barrier()
            synchronize(torch.device(device))
            t0 = time.perf_counter()
            gathered = torch.empty((world * b, *shape), device=device)
            mine = gathered.new_zeros((b, *shape))
            gather(gathered, mine)
            synchronize(torch.device(device))
            if k:  # the first is a warm-up
                times.append(time.perf_counter() - t0)
        seconds.append(statistics.median(times))
    return seconds


def measure_comm(devices: int, shape: tuple, sizes: Sequence[int], repeats: int = 10,
                 device: torch.device | str = "cpu") -> Curve:
    """Median seconds of the distributed executor's all-gather of ``b`` rows per rank, for ``b`` in ``sizes``.

    Inside a process group of ``devices`` ranks it is measured there; otherwise
    (CPU only) ``devices`` gloo processes are spawned on 127.0.0.1 for the
    measurement, one thread each.
    """
    import torch.distributed as dist

    sizes = list(sizes)
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() != devices:
            raise HastenError(f"--devices {devices} differs from the {dist.get_world_size()} ranks of this launch")
        from hasten.executors.distributed import _all_gather_single

        return Curve(sizes, _time_gather(_all_gather_single, devices, shape, sizes, repeats, device))
    if torch.device(device).type != "cpu":
        raise HastenError("communication on several GPUs can only be measured inside a launch with that many ranks "
                          "(torchrun); outside one, give --comm-ms")
    return Curve(sizes, _spawn_gloo(_comm_worker, devices, (tuple(shape), sizes, repeats)), 1)


def _round_worker(rank: int, world: int, port: int, spec: str, steps: int, sizes: list[int], repeats: int,
                  threads: int, out: str) -> None:
    """One rank of :func:`measure_rounds` (module level: spawned processes import it)."""
    from hasten.executors.distributed import DistributedExecutor
    from hasten.opening import load_model

    with _gloo_rank(rank, world, port, threads, 120):
        model = load_model(spec)
        executor = DistributedExecutor(model.denoiser(model.grid(steps)))
        curve = _time_rounds(executor, model, world, sizes, repeats, steps // 2)
        if rank == 0:
            Path(out).write_text(json.dumps(curve))


def _time_rounds(executor, model, world: int, sizes: list[int], repeats: int, index: int) -> list[float]:
    """Median seconds of a distributed round of ``world x b`` rows (b rows per rank), for each b in ``sizes``."""
    import torch.distributed as dist

    from hasten.noise import initial_noise
    from hasten.devices import synchronize
    from hasten.rounds import Eval

    x = initial_noise(model, 1, 0).to(executor.device)
    inputs = {b: x.expand(world * b, *x.shape[1:]).contiguous() for b in sizes}
    times: dict[int, list[float]] = {b: [] for b in sizes}
    for b in sizes:
        executor.evaluate([Eval(inputs[b], index)])  # warm-up
    for _ in range(repeats):
        for b in sizes:
            dist.barrier()
            synchronize(executor.device)
            t0 = time.perf_counter()
            executor.evaluate([Eval(inputs[b], index)])
            synchronize(executor.device)
            times[b].append(time.perf_counter() - t0)
    return [statistics.median(times[b]) for b in sizes]


def measure_rounds(spec: str, devices: int, steps: int, sizes: Sequence[int], repeats: int = 5,
                   threads: int = 1, device: torch.device | str = "cpu") -> Curve:
    """Seconds of a whole distributed round (each rank's forward of b rows + the all-gather) against b.

    Spawns ``devices`` gloo processes on 127.0.0.1 that load the embedded model
    ``spec`` and time :class:`~hasten.executors.distributed.DistributedExecutor`
    rounds, as ``hasten sample --executor distributed`` runs them: the ranks
    share this machine's cores and whatever else runs on it, and the gather
    waits for the slowest rank, so contention and skew are in the measurement.
    Inside a launch of ``devices`` ranks it is measured there with this
    process's model instead (see :func:`tune`).
    """
    if torch.device(device).type != "cpu":
        raise HastenError("distributed rounds on several GPUs are measured inside a launch with that many ranks")
    seconds = _spawn_gloo(_round_worker, devices, (spec, steps, list(sizes), repeats, threads))
    return Curve(list(sizes), seconds, threads)
