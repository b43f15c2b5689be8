"""One process's service over a loaded model: its queue, its runs worker, its metrics and the app over them.

``hasten serve`` puts uvicorn in front of it (:mod:`hasten.serve.server`), each
Ray Serve replica puts Ray's proxy in front of it (:mod:`hasten.serve.ray`);
both build it here, the same way. The runs happen in one worker thread
(:meth:`Scheduler.worker`); the app's handlers only queue jobs and relay their
events. :meth:`Front.readiness` is hasten's own readiness: what ``/health``
reports and what Ray's health check asks.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from hasten.serve.app import Service, create_app
from hasten.serve.config import ServeConfig
from hasten.serve.metrics import Metrics
from hasten.serve.previews import Previewer
from hasten.serve.runner import Runner
from hasten.serve.scheduler import Scheduler


class Front:
    """The service of one process (rank 0 of a pool, or a replica) over ``served``, the model it loaded."""

    def __init__(self, config: ServeConfig, served, control=None, replica: str | None = None):
        self.config, self.served = config, served
        self.scheduler = Scheduler(config.queue, config.max_batch)
        self.metrics = Metrics(self.scheduler.depth, lambda: len(self.scheduler.running))
        self.heartbeat = min(2.0, config.placement.timeout / 4)
        self.runner = Runner(served, Previewer(served, config.preview), self.metrics, control, self.heartbeat)
        self.world = control.world if control is not None else 1
        self.service = Service(served, config.defaults(), config.limits(served.max_steps), self.scheduler, self.metrics, config.api_key,
                               config.request_timeout, self.world, config.preview, replica=replica,
                               readiness=self.readiness)
        self.app = create_app(self.service)
        #: called once the worker has ended (drained, stopped, or a rank lost)
        self.on_stopped: Callable[[], None] | None = None
        self.worker = threading.Thread(target=self.scheduler.worker, name="hasten-runs", daemon=True,
                                       args=(self._run, self._idle, self.heartbeat, self._stopped))

    def start(self) -> None:
        self.worker.start()

    def readiness(self) -> str | None:
        """None when ready; else why not (a rank lost, the worker gone, no round finished for a request's timeout)."""
        if self.runner.fatal is not None:
            return f"a rank was lost: {str(self.runner.fatal).strip()[:200] or type(self.runner.fatal).__name__}"
        if self.worker.ident is not None and not self.worker.is_alive():
            return "the runs worker has stopped"
        quiet = time.monotonic() - self.runner.progress
        if quiet > self.config.request_timeout:
            return f"the runs worker made no progress for {quiet:.0f} s (over the request timeout)"
        return None

    def close(self, message: str = "the server stopped") -> None:
        """Stop: what still waits hears ``message`` (503), a running batch stops at its next round."""
        for job in self.scheduler.stop():
            job.finish(("error", 503, "server_error", message))
        for job in list(self.scheduler.running):
            job.gone.set()
        if self.worker.ident is not None:
            self.worker.join(timeout=self.config.placement.timeout + 10)

    def _run(self, batch) -> None:
        self.runner.run(batch)
        if self.runner.fatal is not None:  # a rank is lost: refuse what is queued and stop
            for job in self.scheduler.stop():
                job.finish(("error", 503, "server_error", "the server lost a rank and is stopping"))

    def _idle(self) -> None:
        try:
            self.runner.idle()
        except Exception as err:  # noqa: BLE001 - a heartbeat that failed: a rank is lost
            self.runner.fatal = err
            self.scheduler.stop()

    def _stopped(self) -> None:
        try:
            self.runner.close()
        except Exception as err:  # noqa: BLE001
            self.runner.fatal = self.runner.fatal or err
        if self.on_stopped is not None:
            self.on_stopped()
