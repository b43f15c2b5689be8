"""Jobs, the bounded FIFO queue, and the batches taken from it.

The HTTP side (an asyncio loop) submits :class:`Job` objects; one worker
thread takes them in arrival order. The head of the queue always runs next;
queued requests compatible with it (same batch key: method, steps, size, ...;
see :func:`hasten.serve.runs.batch_key`) join its batch up to ``max_batch``
rows. A full queue refuses with :class:`QueueFull` (429), a draining server
with :class:`Draining` (503); a run nobody wants any more stops with
:class:`RunCancelled` (on every rank). Events go back to the request's loop through
``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


class Draining(Exception):
    """The server is shutting down: it finishes what it has and takes nothing new."""


class RunCancelled(Exception):
    """Nobody wants the run any more (clients gone, deadlines passed, shutdown): it stops at this round."""


@dataclass
class Job:
    """One request in flight: its validated request, where its events go, and whether it still wants them."""

    request: object  # hasten.serve.request.ImageRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    received: float = field(default_factory=time.monotonic)
    deadline: float = math.inf
    gone: threading.Event = field(default_factory=threading.Event)  # the client went away
    finished: bool = False
    partials: int = 0

    def emit(self, event: tuple) -> None:
        """Hand ``event`` to the request's loop (from any thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop has closed: nobody is listening any more
            self.gone.set()

    def finish(self, event: tuple) -> None:
        """The last event of this job."""
        if not self.finished:
            self.finished = True
            self.emit(event)

    @property
    def live(self) -> bool:
        """Still wanted: not finished and its client still there (a deadline finishes it)."""
        return not (self.finished or self.gone.is_set())

    @property
    def rows(self) -> int:
        return self.request.n


class Scheduler:
    """A bounded FIFO of jobs and the batches taken from its head."""

    def __init__(self, capacity: int, max_batch: int):
        self.capacity, self.max_batch = capacity, max_batch
        self.waiting: deque[Job] = deque()
        self.running: list[Job] = []
        self.cond = threading.Condition()
        self.draining = False
        self.stopped = False
        self.run_seconds = 1.0  # a running estimate of one batch's time, for Retry-After

    def depth(self) -> int:
        return len(self.waiting)

    def submit(self, job: Job) -> None:
        with self.cond:
            if self.draining or self.stopped:
                raise Draining()
            if len(self.waiting) >= self.capacity:
                raise QueueFull(max(1, math.ceil(self.run_seconds * (len(self.waiting) + 1))))
            self.waiting.append(job)
            self.cond.notify_all()

    def take(self, timeout: float) -> list[Job] | None:
        """The next batch (its head and compatible followers), or None after ``timeout`` s with nothing to do."""
        with self.cond:
            if not self.waiting and not self.stopped:
                self.cond.wait(timeout)
            if not self.waiting:
                return None
            head = self.waiting.popleft()
            batch, rows = [head], head.rows
            key = head.request.key
            if key is not None and self.max_batch > 1:
                for job in list(self.waiting):
                    if job.request.key == key and rows + job.rows <= self.max_batch:
                        self.waiting.remove(job)
                        batch.append(job)
                        rows += job.rows
            self.running = batch
            return batch

    def done(self, batch: list[Job], seconds: float) -> None:
        with self.cond:
            self.running = []
            self.run_seconds = 0.8 * self.run_seconds + 0.2 * seconds
            self.cond.notify_all()

    def idle(self) -> bool:
        with self.cond:
            return not self.waiting and not self.running

    def drain(self) -> None:
        """Take nothing new; what is queued and running still finishes."""
        with self.cond:
            self.draining = True
            self.cond.notify_all()

    def stop(self) -> list[Job]:
        """Stop taking batches; returns the jobs still queued (for the caller to refuse)."""
        with self.cond:
            self.stopped = True
            left = list(self.waiting)
            self.waiting.clear()
            self.cond.notify_all()
            return left

    def worker(self, run: Callable[[list[Job]], None], idle: Callable[[], None], heartbeat_s: float,
               on_drained: Callable[[], None]) -> None:
        """The worker thread's loop: run batches, beat when idle, end when stopped or drained."""
        while True:
            with self.cond:
                if self.stopped or (self.draining and not self.waiting):
                    break
            batch = self.take(heartbeat_s)
            if batch is None:
                idle()
                continue
            start = time.monotonic()
            try:
                run(batch)
            finally:
                self.done(batch, time.monotonic() - start)
        on_drained()
