"""Running a batch of jobs: the engine's hits become partial images, its result the final ones.

:func:`execute` is what every rank runs for one batch (SPMD under torchrun):
the run from :func:`hasten.serve.runs.open_run`, driven by the engine's
:func:`hasten.engine.iterate` through :class:`Cancellable`, which asks before
each round whether anyone still wants the run. :class:`Runner` is rank 0's
side: it announces the batch to the other ranks, turns each hit into partial
images of the jobs still listening, and answers each job with its own rows.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import torch

from hasten.errors import HastenError
from hasten.serve import events
from hasten.serve.distributed import IDLE, RUN, STOP, Control
from hasten.serve.previews import b64, encode_pngs
from hasten.serve.runs import Rows, exact, last_hit, open_run, row_slices, settings_from_dict
from hasten.serve.scheduler import RunCancelled

log = logging.getLogger("hasten.serve")


class Cancellable:
    """An executor that first asks ``should_stop`` (rank 0's verdict, shared by every rank) before each round."""

    def __init__(self, inner, should_stop: Callable[[], bool] | None, control: Control | None):
        self.inner, self.should_stop, self.control = inner, should_stop, control

    def evaluate(self, evals):
        stop = bool(self.should_stop and self.should_stop())
        if self.control is not None:
            stop = self.control.agree(stop)
        if stop:
            raise RunCancelled("the run was cancelled")
        return self.inner.evaluate(evals)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def payload(jobs) -> dict:
    """A batch as plain data (what rank 0 sends the other ranks): settings, rows, size."""
    first = jobs[0].request
    return {"settings": first.settings.to_dict(), "size": list(first.size),
            "rows": [[j.request.prompt, j.request.n, j.request.seed] for j in jobs],
            "inputs": first.inputs, "lora": first.lora}


def execute(served, spec: dict, control: Control | None = None, executor: str = "batched",
            should_stop: Callable[[], bool] | None = None, on_hit=None):
    """Run one batch described by ``spec``; ``on_hit(hit, setup)`` sees each hit. Returns (setup, result)."""
    settings = settings_from_dict(spec["settings"])
    rows = [Rows(*r) for r in spec["rows"]]
    setup = open_run(served, settings, rows, tuple(spec["size"]), "distributed" if control else executor,
                     spec.get("inputs"), spec.get("lora"))
    setup.executor = Cancellable(setup.executor, should_stop, control)
    hits = setup.stream()
    for hit in hits:
        if on_hit is not None:
            on_hit(hit, setup)
    return setup, hits.result


def execute_follower(served, spec: dict, control: Control):
    """What a rank other than 0 runs for each batch."""
    return execute(served, spec, control)


class Runner:
    """Rank 0's side of a batch: the run, its events and its answers."""

    def __init__(self, served, previewer, metrics, control: Control | None = None, heartbeat_s: float = 2.0):
        self.served, self.previewer, self.metrics, self.control = served, previewer, metrics, control
        self.heartbeat_s = heartbeat_s
        self.fatal: BaseException | None = None
        #: when the worker last showed it is alive: an idle beat, or a round about to start
        self.progress = time.monotonic()

    def idle(self) -> None:
        self.progress = time.monotonic()
        if self.control is not None:
            self.control.command(IDLE)

    def close(self) -> None:
        if self.control is not None and self.fatal is None:
            self.control.command(STOP)

    def run(self, jobs) -> None:
        """Run ``jobs`` as one batch and answer each (errors included); a distributed failure is fatal."""
        jobs = [j for j in jobs if j.live]
        if not jobs:
            return
        spec = payload(jobs)
        settings = jobs[0].request.settings
        slices = row_slices([Rows(*r) for r in spec["rows"]])
        started = time.monotonic()
        preview_s = [0.0]

        def should_stop() -> bool:
            now = self.progress = time.monotonic()
            for job in jobs:
                if job.live and now > job.deadline:
                    job.finish(("error", 504, "timeout", "the run went past the server's --request-timeout"))
            return not any(j.live for j in jobs)

        def on_hit(hit, setup) -> None:
            landed = time.time()
            final = setup.stop.reached(hit.core, hit.residual) or last_hit(settings, hit.core)
            listening = [(j, s) for j, s in zip(jobs, slices) if j.live and j.request.stream]
            for job, rows in listening:
                cap = job.request.partial_images
                if final or (cap is not None and job.partials >= cap) or self.previewer.mode == "none":
                    continue
                t0 = time.perf_counter()
                images = self.previewer.images(setup.model, hit.x[rows])
                pngs = encode_pngs(images, job.request.n)
                preview_s[0] += time.perf_counter() - t0
                for index, png in enumerate(pngs):
                    job.emit(("partial", events.partial_image(
                        job, b64(png), job.partials, index, hit, exact(settings, hit.core), landed)))
                job.partials += 1
            if self.metrics is not None:
                self.metrics.hits.inc()

        try:
            if self.control is not None:
                self.control.command(RUN, spec)  # every rank builds the same run from the same description
            setup, result = execute(self.served, spec, self.control, should_stop=should_stop, on_hit=on_hit)
        except RunCancelled:
            self._count("cancelled", jobs)
            return
        except HastenError as err:
            for job in jobs:
                job.finish(("error", 400, "invalid_request_error", str(err)))
            return
        except torch.OutOfMemoryError as err:
            for job in jobs:
                job.finish(("error", 503, "server_error", f"out of memory: {str(err).splitlines()[0][:200]}"))
            return
        except Exception as err:  # noqa: BLE001 - a collective that failed, or a bug: every job hears of it
            message = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
            if self.control is not None:
                message = f"distributed run failed (a rank died, hung past --timeout, or lost its peers): {message}"
                self.fatal = err
            log.exception("run failed")
            for job in jobs:
                job.finish(("error", 503 if self.control is not None else 500, "server_error", message))
            return
        summary = result.summary()
        for job, rows in zip(jobs, slices):
            if not job.live:
                continue
            t0 = time.perf_counter()
            images = setup.model.decode(result.x[rows])
            pngs = encode_pngs(images, job.request.n)
            decode_s = time.perf_counter() - t0
            job.finish(("done", {
                "pngs": [b64(p) for p in pngs], "images": images, "latents": result.x[rows].float().cpu() if job.request.latents else None,
                "cost": {**summary, "preview_s": preview_s[0], "decode_s": decode_s,
                         "service_s": time.monotonic() - started, "batch_rows": int(result.x.shape[0]),
                         "batch_requests": len(jobs)},
                "exact": bool(result.hits) and exact(settings, result.hits[-1].core),
            }))
        if self.metrics is not None:
            self.metrics.observe_run(result, len(jobs), int(result.x.shape[0]), preview_s[0])

    def _count(self, status: str, jobs) -> None:
        if self.metrics is not None:
            self.metrics.cancelled.inc(len(jobs))
