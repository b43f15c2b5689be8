"""The distributed executor: one round's evaluations spread over torch.distributed ranks.

SPMD: every rank runs the same method on the same initial noise, so every
rank asks for the same round. The round's rows (requests x samples) are split
into contiguous, nearly equal shares, one per rank; each rank evaluates its
share with its own replica of the denoiser on its own device and all ranks
all-gather the outputs into one buffer on that device, so every rank
continues with identical data and makes the same decisions. Latents never
leave the device: with NCCL the gather runs GPU to GPU. Methods, caches and
the engine's accounting do not change; only this executor knows about ranks.

Every collective runs under the process group's timeout, so a rank that dies
or hangs makes the others fail with an error instead of waiting forever.
"""

from __future__ import annotations

import datetime
import os
import time

import torch
import torch.distributed as dist

from hasten.denoise import Denoiser, denoiser_device, needs_sample_ids
from hasten.devices import resolve_device, synchronize
from hasten.errors import HastenError
from hasten.executors.base import forward_rows, input_rows
from hasten.rounds import Eval

DEFAULT_TIMEOUT_S = 30.0
# one contiguous all-gather: ``all_gather_single`` from torch 2.13, ``all_gather_into_tensor`` before
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
BACKENDS = ("gloo", "nccl")


def default_backend(device: torch.device | str | None = None) -> str:
    """NCCL for CUDA devices, gloo otherwise."""
    dev = torch.device(device) if device is not None else None
    return "nccl" if dev is not None and dev.type == "cuda" and dist.is_nccl_available() else "gloo"


def init_distributed(backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                     device: torch.device | str | None = None) -> torch.device:
    """Join the process group described by torchrun's environment; return this rank's device.

    The device is chosen first (``device=None``: ``cuda:LOCAL_RANK`` when CUDA
    is available, else cpu) and made current with ``torch.cuda.set_device``, so
    a later ``pipe.to("cuda")`` lands on this rank's own GPU. The backend
    defaults to NCCL on CUDA and gloo on the CPU. If a group is already
    initialised, only the device is resolved and returned.
    """
    if backend is not None and backend not in BACKENDS:
        raise HastenError(f"--backend {backend!r} is not supported; valid: {', '.join(BACKENDS)}")
    if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
        raise HastenError(f"--timeout must be a number of seconds > 0, got {timeout_s!r}")
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing and not dist.is_initialized():
        raise HastenError(
            f"the distributed executor needs a torchrun launch (missing {', '.join(missing)}); e.g. "
            "torchrun --nproc_per_node 2 --master_addr 127.0.0.1 -m hasten sample --executor distributed ..."
        )
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if dist.is_initialized():
        return dev
    backend = backend or default_backend(dev)
    if backend == "nccl" and dev.type != "cuda":
        raise HastenError(f"--backend nccl needs CUDA devices, but this rank's device is {dev}; "
                          "use --backend gloo on the CPU")
    if backend == "nccl" and not dist.is_nccl_available():
        raise HastenError("--backend nccl: this torch build has no NCCL; use --backend gloo")
    kwargs = {"device_id": dev} if backend == "nccl" else {}
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    from hasten.executors.watchdog import watch_launch

    watch_launch(timeout_s)  # a rank outside any collective still leaves when the launch ends elsewhere
    return dev


def shares(rows: int, world: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) row ranges, one per rank, sizes differing by at most one."""
    base, extra = divmod(rows, world)
    bounds, start = [], 0
    for r in range(world):
        end = start + base + (1 if r < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


class DistributedExecutor:
    """Evaluate each round across the ranks of the default process group (or ``group``).

    With ``context`` (a :class:`~hasten.executors.context.ContextLayout`) the
    ranks form T = W / C time groups: ``rank`` / ``world`` are this rank's
    time group and T, the C ranks of a group evaluate the same rows through
    a context-parallel network, and the gather runs over the time dim only.

    ``max_batch`` bounds the network rows of one forward on each rank, as in
    :class:`~hasten.executors.batched.BatchedExecutor`. The gather buffer lives
    on the denoiser's device (NCCL needs CUDA tensors); with gloo and a CUDA
    denoiser the outputs are staged through the host.
    """

    def __init__(self, denoiser: Denoiser, group=None, max_batch: int | None = None, time_model: bool | None = None,
                 context=None):
        if not dist.is_initialized():
            raise HastenError("DistributedExecutor needs an initialised process group (hasten.init_distributed)")
        self.denoiser = denoiser
        self.context = context  # a ContextLayout: C ranks share each forward, rows split over the T time groups
        self.ranks = dist.get_world_size()  # every rank of the launch (result.json's world_size), T x C
        if context is not None:
            if group is not None:
                raise HastenError("give a process group or a context layout, not both")
            from hasten.executors.context import layout_mesh, time_group

            group = time_group(layout_mesh(context, denoiser_device(denoiser)))
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.device = denoiser_device(denoiser)
        nccl = dist.get_backend(group) == "nccl"
        if nccl and self.device.type != "cuda":
            raise HastenError(f"the NCCL backend needs the denoiser on a CUDA device, not {self.device}")
        self.comm_device = self.device if nccl or self.device.type == "cpu" else torch.device("cpu")
        self.max_rows = input_rows(denoiser, max_batch)
        self.max_batch = max_batch
        self.pad_rows: int | None = None
        self.time_model = self.device.type == "cpu" if time_model is None else time_model
        self.model_seconds = 0.0  # this rank's time inside the denoiser
        self.comm_seconds = 0.0  # time in all_gather, waiting for the slowest rank included

    def fix_shape(self, round_rows: int | None) -> int:
        """Pad every forward to this rank's share of the widest round, capped by ``max_batch``."""
        share = None if round_rows is None else -(-round_rows // self.world)
        self.pad_rows = min(v for v in (share, self.max_rows) if v is not None)
        return self.pad_rows

    def _my_rows(self, evals: list[Eval], start: int, end: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latents, grid indices and sample ids of rows [start, end) of the round, without building the rest."""
        xs, index, samples, offset = [], [], [], 0
        for e in evals:
            n = e.x.shape[0]
            a, b = max(start, offset), min(end, offset + n)
            if a < b:
                xs.append(e.x[a - offset:b - offset])
                index.append(torch.full((b - a,), e.index, dtype=torch.long, device=e.x.device))
                samples.append(torch.arange(a - offset, b - offset, device=e.x.device))
            offset += n
        return torch.cat(xs), torch.cat(index), torch.cat(samples)

    def evaluate(self, evals: list[Eval]) -> list[torch.Tensor]:
        sizes = [e.x.shape[0] for e in evals]
        like = evals[0].x
        bounds = shares(sum(sizes), self.world)
        start, end = bounds[self.rank]
        longest = max(e - s for s, e in bounds)
        gathered = torch.empty((self.world * longest, *like.shape[1:]), dtype=torch.float32, device=self.comm_device)
        mine = gathered.new_empty((longest, *like.shape[1:]))
        if self.time_model:
            synchronize(self.device)
        t0 = time.perf_counter()
        if end > start:
            x, index, samples = self._my_rows(evals, start, end)
            if not needs_sample_ids(self.denoiser):
                samples = None
            mine[: end - start] = forward_rows(self.denoiser, x, index, samples, self.max_rows, self.pad_rows)
        if self.time_model:
            synchronize(self.device)
        t1 = time.perf_counter()
        _all_gather_single(gathered, mine, group=self.group)
        self.model_seconds += t1 - t0
        self.comm_seconds += time.perf_counter() - t1
        if any(e - s != longest for s, e in bounds):  # uneven shares: drop each rank's padding
            gathered = torch.cat([gathered[r * longest: r * longest + (e - s)] for r, (s, e) in enumerate(bounds)])
        return list(gathered.to(like.device).split(sizes))
