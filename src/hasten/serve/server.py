"""``hasten serve``: load the model once, then serve it until told to stop.

One process (``--executor batched``) or a torchrun pool (``--executor
distributed``): rank 0 runs uvicorn in its main thread in front of its
:class:`~hasten.serve.front.Front`; the other ranks follow rank 0's commands
(:mod:`hasten.serve.distributed`). Shutdown:

* SIGTERM drains: new requests get 503, the running and queued ones finish, then
  every rank exits 0 (the other ranks ignore SIGTERM, which torchrun forwards to
  all of them, and leave on rank 0's STOP);
* SIGINT (Ctrl-C) stops: queued requests get 503, a running one is cancelled at its next round;
* a failed collective (a rank died or hung past ``--timeout``) fails the in-flight
  requests with a clear error and the server exits 3, without waiting on the lost rank.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from hasten.errors import HastenError
from hasten.serve.config import ServeConfig

log = logging.getLogger("hasten.serve")
EXIT_DISTRIBUTED_FAILURE = 3


def _server_class():
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn, whose SIGTERM drains the queue before the server stops."""

        drain = None  # set to a callable by serve()

        def handle_exit(self, sig, frame) -> None:
            if sig == signal.SIGTERM and self.drain is not None and not self.should_exit:
                self.drain()
                return
            super().handle_exit(sig, frame)

    return DrainingServer


def load(config: ServeConfig):
    """The served model on this process's device (under torchrun each rank joins the process group first)."""
    from hasten.session import place
    from hasten.serve.model import ServedModel

    placement = config.placement
    if placement.layout is not None:  # refused before loading: an embedded model, a family without a plan
        from hasten.opening import check_model_source

        check_model_source(config.model, placement.layout, config.local_files_only)
    device = place(placement)
    served = ServedModel(config.model, device, placement.dtype, config.call, config.local_files_only,
                         loras=config.loras)
    served.context_parallel = placement.context_parallel
    if placement.layout is not None:  # the transformer shares its forwards from the start, on every rank
        from hasten.integrations.context import prepare_network

        prepare_network(served.pipe, placement.layout, device)
    most = config.limits(served.max_steps).run.max_steps
    if config.sampling.steps > most:
        raise HastenError(f"steps {config.sampling.steps} is above max_steps / the model's {most}")
    return served


def serve(config: ServeConfig) -> int:
    """Run ``hasten serve`` with ``config``; returns the exit code."""
    served = load(config)
    control = None
    if config.placement.executor == "distributed":
        import torch.distributed as dist

        from hasten.serve.distributed import Control, follow
        from hasten.serve.runner import execute_follower

        control = Control(served.device)
        if dist.get_rank() != 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # torchrun forwards it to every rank; rank 0 decides
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            return follow(served, control, execute_follower, config.start_timeout)
    return _front(config, served, control)


def _front(config: ServeConfig, served, control) -> int:
    """Rank 0 (or the only process): uvicorn in this thread, the runs in the Front's worker thread."""
    import uvicorn

    from hasten.serve.front import Front

    front = Front(config, served, control)
    uv_config = uvicorn.Config(front.app, host=config.host, port=config.port, log_level="warning",
                               access_log=False, timeout_graceful_shutdown=30, lifespan="off")
    server = _server_class()(uv_config)
    server.drain = front.scheduler.drain

    def stop_server() -> None:
        server.should_exit = True

    front.on_stopped = stop_server
    if control is not None:
        control.ready()
    front.start()
    print(f"hasten serve: {served.name} on http://{config.host}:{server.config.port}/ ({front.world} rank"
          f"{'s' if front.world > 1 else ''}, method {config.sampling.name}, preview {config.preview}"
          f"{', API key required' if config.api_key else ''})", file=sys.stderr, flush=True)
    server.run()
    front.close()  # stopped by SIGINT: whatever still waits hears why
    fatal = front.runner.fatal
    if fatal is not None:
        print(f"hasten: error: distributed run failed (a rank died, hung past --timeout, or could not connect): "
              f"{str(fatal).strip().splitlines()[0] if str(fatal).strip() else fatal!r}", file=sys.stderr, flush=True)
        os._exit(EXIT_DISTRIBUTED_FAILURE)  # the lost rank cannot take part in an orderly teardown
    return 0
