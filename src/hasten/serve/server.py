"""``hasten serve``: load the model once, then serve it until told to stop.

One process (``--executor batched``) or a torchrun pool (``--executor
distributed``): rank 0 runs uvicorn in its main thread and the runs in one
worker thread; the other ranks follow rank 0's commands
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
import threading


from hasten.errors import HastenError

log = logging.getLogger("hasten.serve")
#: the environment variable that may hold the API key (instead of --api-key, which other users can read in ps)
API_KEY_ENV = "HASTEN_API_KEY"
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


def run_description(args):
    """The server's run defaults as the one run description: a Sampling and a Placement, validated now."""
    from hasten.cli.options import sampling_of
    from hasten.spec import Placement, Sampling

    given = {k: v for k, v in sampling_of(args).items() if v is not None and v != {}}
    sampling = Sampling(**{"method": "chords", **given})
    placement = Placement(args.executor, args.device, args.dtype, backend=args.backend, timeout=args.timeout,
                          context_parallel=args.context_parallel)
    return sampling, placement


def _settings(args):
    from hasten.methods import METHODS
    from hasten.serve.request import Limits
    from hasten.serve.runs import RunLimits, RunSettings

    sampling, _ = run_description(args)
    if args.guidance_scale is not None and not (1 <= args.guidance_scale < float("inf")):
        raise HastenError(f"--guidance-scale must be a finite number >= 1, got {args.guidance_scale}")
    defaults = RunSettings(sampling, args.guidance_scale)
    methods = tuple(args.methods) if args.methods else METHODS
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise HastenError(f"--methods: unknown method {unknown[0]!r}; valid: {', '.join(METHODS)}")
    if sampling.name not in methods:
        raise HastenError(f"--method {sampling.name} is not among --methods {','.join(methods)}")
    for flag, value, low in (("--queue", args.queue, 0), ("--max-batch", args.max_batch, 1), ("--max-n", args.max_n, 1),
                             ("--max-size", args.max_size, 8), ("--max-prompt", args.max_prompt, 0),
                             ("--max-cores", args.max_cores, 1), ("--max-steps", args.max_steps, 1),
                             ("--max-seed", args.max_seed, 0), ("--port", args.port, 0)):
        if value is not None and value < low:
            raise HastenError(f"{flag} must be an integer >= {low}, got {value}")
    for flag, value in (("--request-timeout", args.request_timeout), ("--timeout", args.timeout),
                        ("--start-timeout", args.start_timeout)):
        if not (value > 0 and value < float("inf")):
            raise HastenError(f"{flag} must be a number of seconds > 0, got {value}")
    run_limits = RunLimits(max_steps=args.max_steps or 1000, max_cores=args.max_cores, methods=methods)
    limits = Limits(max_n=args.max_n, max_size=args.max_size, max_prompt=args.max_prompt, max_seed=args.max_seed,
                    run=run_limits)
    return defaults, limits


def _base_call(args) -> dict:
    """``--size`` and ``--frames`` as a pipeline call."""
    call = {}
    if args.size is not None:
        width, sep, height = args.size.partition("x")
        if not (sep and width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
            raise HastenError(f"--size must be WIDTHxHEIGHT, e.g. 512x512; got {args.size!r}")
        call["width"], call["height"] = int(width), int(height)
    if args.frames is not None:
        if args.frames < 1:
            raise HastenError(f"--frames must be an integer >= 1, got {args.frames}")
        call["num_frames"] = args.frames
    return call


def serve(args) -> int:
    """Run ``hasten serve``; returns the exit code."""
    from dataclasses import replace

    from hasten.session import place
    from hasten.serve.model import ServedModel
    from hasten.serve.previews import PREVIEWS

    defaults, limits = _settings(args)  # every flag checked before the model loads
    if args.preview not in PREVIEWS:
        raise HastenError(f"--preview must be one of {', '.join(PREVIEWS)}")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    _, placement = run_description(args)
    distributed = placement.executor == "distributed"
    if placement.layout is not None:  # refused before loading: an embedded model, a family without a plan
        from hasten.opening import check_model_source

        check_model_source(args.model, placement.layout, args.local_files_only)
    device = place(placement)  # under torchrun: joins the process group, each rank on its own device
    served = ServedModel(args.model, device, placement.dtype, _base_call(args), args.local_files_only)
    served.context_parallel = placement.context_parallel
    if placement.layout is not None:  # the transformer shares its forwards from the start, on every rank
        from hasten.integrations.context import prepare_network

        prepare_network(served.pipe, placement.layout, device)
    limits = replace(limits, run=replace(limits.run, max_steps=min(limits.run.max_steps, served.max_steps)))
    if defaults.steps > limits.run.max_steps:
        raise HastenError(f"--steps {defaults.steps} is above --max-steps / the model's {limits.run.max_steps}")
    control = None
    if distributed:
        import torch.distributed as dist

        from hasten.serve.distributed import Control, follow
        from hasten.serve.runner import execute_follower

        control = Control(device)
        if dist.get_rank() != 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # torchrun forwards it to every rank; rank 0 decides
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            return follow(served, control, execute_follower, args.start_timeout)
    return _front(args, served, defaults, limits, api_key, control)


def _front(args, served, defaults, limits, api_key, control) -> int:
    """Rank 0 (or the only process): the HTTP server in this thread, the runs in a worker thread."""
    import uvicorn

    from hasten.serve.app import Service, create_app
    from hasten.serve.metrics import Metrics
    from hasten.serve.previews import Previewer
    from hasten.serve.runner import Runner
    from hasten.serve.scheduler import Scheduler

    scheduler = Scheduler(args.queue, args.max_batch)
    metrics = Metrics(scheduler.depth, lambda: len(scheduler.running))
    previewer = Previewer(served, args.preview)
    heartbeat = min(2.0, args.timeout / 4)
    runner = Runner(served, previewer, metrics, control, heartbeat)
    world = control.world if control is not None else 1
    service = Service(served, defaults, limits, scheduler, metrics, api_key, args.request_timeout, world,
                      args.preview)
    config = uvicorn.Config(create_app(service), host=args.host, port=args.port, log_level="warning",
                            access_log=False, timeout_graceful_shutdown=30, lifespan="off")
    server = _server_class()(config)
    server.drain = scheduler.drain

    def stop_server() -> None:
        server.should_exit = True

    def run(batch) -> None:
        runner.run(batch)
        if runner.fatal is not None:  # a rank is lost: refuse what is queued and stop
            for job in scheduler.stop():
                job.finish(("error", 503, "server_error", "the server lost a rank and is stopping"))

    def idle() -> None:
        try:
            runner.idle()
        except Exception as err:  # noqa: BLE001 - a heartbeat that failed: a rank is lost
            runner.fatal = err
            scheduler.stop()

    def drained() -> None:
        try:
            runner.close()
        except Exception as err:  # noqa: BLE001
            runner.fatal = runner.fatal or err
        stop_server()

    worker = threading.Thread(target=scheduler.worker, args=(run, idle, heartbeat, drained), name="hasten-runs",
                              daemon=True)
    if control is not None:
        control.ready()
    worker.start()
    print(f"hasten serve: {served.name} on http://{args.host}:{server.config.port}/ ({world} rank"
          f"{'s' if world > 1 else ''}, method {defaults.method}, preview {args.preview}"
          f"{', API key required' if api_key else ''})", file=sys.stderr, flush=True)
    server.run()
    for job in scheduler.stop():  # stopped by SIGINT: whatever still waits hears why
        job.finish(("error", 503, "server_error", "the server stopped"))
    for job in list(scheduler.running):
        job.gone.set()  # a running batch stops at its next round
    worker.join(timeout=args.timeout + 10)
    if runner.fatal is not None:
        print(f"hasten: error: distributed run failed (a rank died, hung past --timeout, or could not connect): "
              f"{str(runner.fatal).strip().splitlines()[0] if str(runner.fatal).strip() else runner.fatal!r}",
              file=sys.stderr, flush=True)
        os._exit(EXIT_DISTRIBUTED_FAILURE)  # the lost rank cannot take part in an orderly teardown
    return 0
