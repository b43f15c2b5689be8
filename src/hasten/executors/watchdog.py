"""A rank that outlives its launch leaves: the rendezvous store is watched while the process group lives.

Collectives fail after the process group's timeout, but a rank that is not in
a collective (stalled in its own work, sleeping, waiting on something else)
never sees that its peers have gone, and with two nodes launched separately
its own node's ``torchrun`` waits for it long after the other node has exited.
torchrun's agent on the first node hosts the rendezvous store every rank is
connected to; when that launch ends, the store goes away. :func:`watch_launch`
starts a daemon thread that pings the store every ``timeout / 3`` seconds and,
once it cannot reach it for ``timeout`` seconds, prints one line and ends the
process with exit code 3, so every node's launch ends within about
``timeout`` of the first one. It stands down when the process group is destroyed.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import torch.distributed as dist

EXIT_CODE = 3
_state = {"thread": None}


def watch_launch(timeout_s: float) -> None:
    """Start the watchdog for this process's process group (once); a no-op outside a torchrun store."""
    if _state["thread"] is not None and _state["thread"].is_alive():
        return
    try:
        store = dist.distributed_c10d._get_default_store()
    except (RuntimeError, ValueError, AttributeError):  # no default store to watch (e.g. a file:// group)
        return
    thread = threading.Thread(target=_watch, args=(store, timeout_s), name="hasten-launch-watchdog", daemon=True)
    _state["thread"] = thread
    thread.start()


def _watch(store, timeout_s: float) -> None:
    interval = max(0.5, timeout_s / 3)
    unreachable_since = None
    while dist.is_initialized():
        time.sleep(interval)
        if not dist.is_initialized():
            return
        try:
            store.check(["hasten/alive"])  # a round trip to the store; the key need not exist
            unreachable_since = None
        except Exception:  # noqa: BLE001 - any failure to reach the store counts
            unreachable_since = unreachable_since or time.monotonic()
            if time.monotonic() - unreachable_since >= timeout_s and dist.is_initialized():
                print(f"hasten: error: distributed run failed: the launch's rendezvous store has been unreachable "
                      f"for {timeout_s:g} s (another node's launch ended); this rank leaves", file=sys.stderr)
                sys.stderr.flush()
                os._exit(EXIT_CODE)
