"""The distributed executor: one round's evaluations spread over torch.distributed ranks.

SPMD: every rank runs the same method on the same initial noise, so every
rank asks for the same round. The round's rows (requests x samples) are split
into contiguous, nearly equal shares, one per rank; each rank evaluates its
share with its own replica of the denoiser and all ranks all-gather the
outputs, so every rank continues with identical data and makes the same
decisions. More ranks than requests is fine: the split is by sample rows, so
several samples per rank keep every rank busy. Methods, caches and the
engine's accounting do not change; only this executor knows about ranks.

Every collective runs under the process group's timeout, so a rank that dies
or hangs makes the others fail with an error instead of waiting forever.
"""

from __future__ import annotations

import datetime
import os
import time

import torch
import torch.distributed as dist

from hasten.denoise import Denoiser
from hasten.errors import HastenError
from hasten.executors.base import call_denoiser, flatten_round
from hasten.methods.base import Eval

DEFAULT_TIMEOUT_S = 30.0


def default_backend(device: torch.device | str | None = None) -> str:
    """NCCL for CUDA devices, gloo otherwise."""
    dev = torch.device(device) if device is not None else None
    return "nccl" if dev is not None and dev.type == "cuda" and dist.is_nccl_available() else "gloo"


def init_distributed(backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                     device: torch.device | str | None = None) -> None:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...).

    Does nothing if a group is already initialised.
    """
    if dist.is_initialized():
        return
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise HastenError(
            f"the distributed executor needs a torchrun launch (missing {', '.join(missing)}); e.g. "
            "torchrun --nproc_per_node 2 --master_addr 127.0.0.1 -m hasten sample --executor distributed ..."
        )
    if not timeout_s > 0:
        raise HastenError(f"timeout must be > 0 seconds, got {timeout_s}")
    dist.init_process_group(backend or default_backend(device), timeout=datetime.timedelta(seconds=timeout_s))


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
    """Evaluate each round across the ranks of the default process group (or ``group``)."""

    def __init__(self, denoiser: Denoiser, group=None, device: torch.device | str | None = None):
        if not dist.is_initialized():
            raise HastenError("DistributedExecutor needs an initialised process group (hasten.executors.init_distributed)")
        self.denoiser = denoiser
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model_seconds = 0.0  # this rank's time inside the denoiser
        self.comm_seconds = 0.0  # time in all_gather, waiting for the slowest rank included

    def evaluate(self, evals: list[Eval]) -> list[torch.Tensor]:
        x, index, sizes = flatten_round(evals)
        bounds = shares(x.shape[0], self.world)
        start, end = bounds[self.rank]
        longest = max(e - s for s, e in bounds)
        mine = torch.zeros((longest, *x.shape[1:]), dtype=torch.float32, device=self.device)
        t0 = time.perf_counter()
        if end > start:
            mine[: end - start] = call_denoiser(self.denoiser, x.to(self.device), index, sizes, slice(start, end)).float()
        t1 = time.perf_counter()
        gathered = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(gathered, mine, group=self.group)
        self.model_seconds += t1 - t0
        self.comm_seconds += time.perf_counter() - t1
        out = torch.cat([g[: e - s] for g, (s, e) in zip(gathered, bounds)]).to(x.device)
        return list(out.split(sizes))
