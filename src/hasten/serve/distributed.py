"""A server on many ranks: rank 0 speaks HTTP, every rank runs every request's method (SPMD).

Rank 0 tells the other ranks what to do through :class:`Control`, one
collective at a time, each under the process group's timeout (``--timeout``):

* at the start, the other ranks wait (on torchrun's store, up to ``--start-timeout``) until rank 0
  serves, since ranks finish loading a model at different times;
* a *command* every time rank 0's worker has something to say, and a heartbeat at
  least every ``timeout / 4`` seconds when idle: an all-reduce of a code
  (``IDLE``, ``RUN``, ``STOP``), then for ``RUN`` the run's description
  (settings, rows, size: plain JSON) by ``broadcast_object_list``. All ranks take part in every
  all-reduce, so a rank that died or hangs fails rank 0's next one within the timeout, and a dead
  rank 0 fails the others';
* before each round of a run, rank 0's verdict on going on (:meth:`Control.agree`): a one-element
  broadcast, so a client that went away, a request past its deadline, or shutdown stops every rank
  at the same round.

The other ranks run :func:`follow` until ``STOP`` and exit 0, or fail with the collective's error.
"""

from __future__ import annotations

import datetime
import logging
import sys

import torch
import torch.distributed as dist

log = logging.getLogger("hasten.serve")

IDLE, RUN, STOP = 0, 1, 2
#: the store key rank 0 sets once it serves; the start is bounded by its own timeout, not --timeout
READY_KEY = "hasten/serve/ready"


class Control:
    """Rank 0's commands and verdicts, and the other ranks' side of them."""

    def __init__(self, device: torch.device):
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        nccl = dist.get_backend() == "nccl"
        self.device = device if nccl else torch.device("cpu")

    def ready(self) -> None:
        """Rank 0: the HTTP front is up; the others may start following (the heartbeats begin now)."""
        dist.distributed_c10d._get_default_store().set(READY_KEY, "1")

    def wait_ready(self, timeout_s: float) -> None:
        """Other ranks: wait for rank 0's front, however long its start takes (a big model loads unevenly)."""
        dist.distributed_c10d._get_default_store().wait([READY_KEY], datetime.timedelta(seconds=timeout_s))

    def command(self, code: int, payload: dict | None = None) -> None:
        """Rank 0: send ``code`` (and, for RUN, the run's description) to every rank."""
        flag = torch.tensor([code], dtype=torch.int64, device=self.device)
        dist.all_reduce(flag)
        if code == RUN:
            dist.broadcast_object_list([payload], src=0, device=self.device)

    def receive(self) -> tuple[int, dict | None]:
        """Other ranks: the next command from rank 0."""
        flag = torch.zeros(1, dtype=torch.int64, device=self.device)
        dist.all_reduce(flag)
        code = int(flag.item())
        if code != RUN:
            return code, None
        box: list = [None]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return code, box[0]

    def agree(self, stop: bool) -> bool:
        """Every rank: rank 0's ``stop`` (the others pass anything), the same on all ranks."""
        flag = torch.tensor([int(stop)], dtype=torch.int64, device=self.device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())


def follow(served, control: Control, execute, start_timeout_s: float) -> int:
    """A rank other than 0: run what rank 0 says until it says STOP; 0 then.

    ``execute(served, payload, control)`` runs one request's method (as rank 0 does), without answering.
    A run refused on this rank is refused identically on rank 0 (the same validated description),
    so both go on to the next command.
    """
    from hasten.errors import HastenError
    from hasten.serve.scheduler import RunCancelled

    control.wait_ready(start_timeout_s)
    while True:
        code, payload = control.receive()
        if code == STOP:
            return 0
        if code == RUN:
            try:
                execute(served, payload, control)
            except (HastenError, RunCancelled) as err:
                print(f"hasten serve: rank {control.rank}: run ended: {err}", file=sys.stderr, flush=True)
