"""Replicas of ``hasten serve`` on Ray Serve: the same API and previews, many copies behind one address.

Two deployments make one application:

* ``hasten`` — the replicas. Each builds its :class:`~hasten.serve.front.Front`
  from the same :class:`~hasten.serve.config.ServeConfig` that ``hasten serve``
  runs (one loaded model on one device, the bounded queue and batching as
  today), and runs each HTTP request through the Front's own app, relaying its
  ASGI messages as a stream (partial images arrive as they land). Every answer
  names its replica (``X-Hasten-Replica``); Ray's health check asks
  :meth:`Front.readiness`, so a hung replica is restarted.
* ``hasten-gateway`` — the ingress behind Ray's HTTP proxy (no CPU of its own).
  It forwards each request through a streaming handle, which Ray balances over
  the replicas by their ongoing requests, and turns a replica that died under a
  request (killed, out of memory) into OpenAI's JSON error shape (503; an
  ``error`` event on a stream already started). A client that leaves cancels the
  replica's run at its next round.

``serve run hasten.serve.ray:app model=digits-cond method=chords replicas=2``
takes the flat form of :meth:`ServeConfig.from_dict` plus the keys of
:class:`~hasten.serve.scaling.Scaling`; ``hasten serve --ray`` builds the same
application (:func:`run_on_ray`). Needs ``pip install hasten[ray]``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from typing import Any, Mapping

from hasten.errors import HastenError
from hasten.serve.config import ServeConfig
from hasten.serve.scaling import Scaling

#: request bodies the gateway reads before it stops (the replica refuses anything over its own cap with 413)
MAX_BODY = 64 * 1024 + 1
#: seconds between Ray's health checks of a replica, and how long one may take
HEALTH_PERIOD_S, HEALTH_TIMEOUT_S = 2.0, 30.0


def _ray_serve():
    try:
        from ray import serve
    except ImportError:
        raise HastenError("--ray needs Ray Serve: pip install 'hasten[ray]'") from None
    return serve


def _scope(request: Mapping[str, Any]) -> dict:
    """An ASGI HTTP scope for the replica's app from what the gateway forwarded."""
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": request["method"], "scheme": "http", "path": request["path"],
            "raw_path": request["path"].encode(), "query_string": request["query_string"], "root_path": "",
            "headers": [tuple(h) for h in request["headers"]], "client": request.get("client"),
            "server": ("ray-serve", 0)}


async def relay(app, request: Mapping[str, Any]):
    """Run ``app`` on one forwarded request; yield the ASGI messages it sends. Cancelled (the client left):
    the app is cancelled, which stops the request's run at its next round."""
    sent: asyncio.Queue = asyncio.Queue()
    body = [{"type": "http.request", "body": request["body"], "more_body": False}]
    never = asyncio.Event()

    async def receive():
        if body:
            return body.pop()
        await never.wait()  # the client's leaving reaches the app as its cancellation
        return {"type": "http.disconnect"}

    task = asyncio.create_task(app(_scope(request), receive, sent.put))
    try:
        while True:
            get = asyncio.ensure_future(sent.get())
            await asyncio.wait({get, task}, return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                while not sent.empty():
                    yield sent.get_nowait()
                task.result()  # the app's own failure, if it had one
                return
            message = get.result()
            yield message
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                return
    finally:
        task.cancel()


class Replica:
    """One replica: the model loaded once, a Front over it, and its app run per forwarded request."""

    def __init__(self, config: ServeConfig):
        from hasten.serve.front import Front
        from hasten.serve.server import load

        serve = _ray_serve()
        if config.placement.executor != "distributed":
            name = serve.get_replica_context().replica_id.unique_id
        else:
            raise HastenError("executor distributed under Ray: a torchrun pool per replica is not built in; run one "
                              "replica per GPU (docs/RAY.md)")
        self.front = Front(config, load(config), replica=name)
        self.front.start()

    async def http(self, request: dict):
        async for message in relay(self.front.app, request):
            yield message

    def check_health(self) -> None:
        """Ray's health check: hasten's readiness (a stuck worker fails it, and Ray restarts the replica)."""
        reason = self.front.readiness()
        if reason is not None:
            raise RuntimeError(reason)

    def __del__(self) -> None:
        front = getattr(self, "front", None)
        if front is not None:
            front.close("the replica is stopping")


def _error_messages(status: int, message: str, stream: bool) -> list[dict]:
    from hasten.serve import events

    body = events.error_body(status, "server_error", message)
    if stream:  # the stream has started: its last event says why it ends
        return [{"type": "http.response.body", "body": events.sse(body, "error"), "more_body": False}]
    data = json.dumps(body).encode()
    return [{"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                         (b"retry-after", b"1")]},
            {"type": "http.response.body", "body": data, "more_body": False}]


class Gateway:
    """The ingress: each request forwarded to a replica through a streaming handle; a replica's death as JSON."""

    def __init__(self, replicas):
        self.replicas = replicas.options(stream=True)

    def __serve_build_asgi_app__(self):
        return _Asgi(self.asgi)

    async def asgi(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        if scope["type"] != "http":
            return
        body = b""
        while len(body) < MAX_BODY:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        request = {"method": scope["method"], "path": scope["path"], "query_string": scope.get("query_string", b""),
                   "headers": [list(h) for h in scope["headers"]], "body": body[:MAX_BODY],
                   "client": scope.get("client")}
        await self.forward(request, send)

    async def forward(self, request: dict, send) -> None:
        start, stream = None, False
        try:
            async for message in self.replicas.http.remote(request):
                if message["type"] == "http.response.start":
                    headers = dict(message.get("headers", []))
                    stream = headers.get(b"content-type", b"").startswith(b"text/event-stream")
                    if not stream:
                        start = message  # held until its body comes: a death before it still gets a JSON answer
                        continue
                elif start is not None:
                    await send(start)
                    start = None
                await send(message)
        except Exception as err:  # noqa: BLE001 - the replica died or could not be reached
            reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            for message in _error_messages(503, f"the replica serving this request failed ({type(err).__name__}: "
                                                f"{reason}); Ray restarts it, retry", stream):
                await send(message)


class _Asgi:
    """An ASGI 3 app over a coroutine (uvicorn, which Ray runs the lifespan with, takes a bound method for ASGI 2)."""

    def __init__(self, handler):
        self.handler = handler

    async def __call__(self, scope, receive, send) -> None:
        await self.handler(scope, receive, send)


def deployments(config: ServeConfig, scaling: Scaling):
    """The Ray Serve application: the gateway bound to ``scaling``'s replicas of ``config``."""
    serve = _ray_serve()
    replica = serve.deployment(name="hasten", health_check_period_s=HEALTH_PERIOD_S,
                               health_check_timeout_s=HEALTH_TIMEOUT_S, graceful_shutdown_timeout_s=5.0)(Replica)
    gateway = serve.deployment(name="hasten-gateway", ray_actor_options={"num_cpus": 0},
                               max_ongoing_requests=100_000)(serve.ingress()(Gateway))
    return gateway.bind(replica.options(**scaling.deployment_options()).bind(config))


def build_app(args: Mapping[str, Any]):
    """``serve run hasten.serve.ray:app key=value ...``: the ServeConfig keys and the Scaling keys, as text."""
    if not isinstance(args, Mapping):
        raise HastenError(f"the app's arguments must be key=value pairs, got {type(args).__name__}")
    given = dict(args)
    scaling = {}
    for key in Scaling.KEYS:
        if given.get(key) is not None:
            value = given.pop(key)
            try:
                scaling[key] = (float if key in ("target_ongoing_requests", "replica_cpus", "replica_gpus")
                                else int)(value) if isinstance(value, str) else value
            except ValueError:
                raise HastenError(f"{key} must be a number, got {value!r}") from None
    config = ServeConfig.from_dict(given)
    return deployments(config, Scaling.for_config(config, **scaling))


#: the application builder Ray's tooling imports (``serve run hasten.serve.ray:app ...``, a config file)
app = build_app


def run_on_ray(config: ServeConfig, scaling: Scaling) -> int:
    """``hasten serve --ray``: the application on the cluster RAY_ADDRESS names (else a local Ray), until
    SIGINT or SIGTERM; then Serve and, for a local Ray, Ray itself are shut down."""
    serve = _ray_serve()
    import ray

    application = deployments(config, scaling)
    local = not os.environ.get("RAY_ADDRESS")
    ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(application, name="hasten", route_prefix="/", blocking=False)
        count = scaling.deployment_options().get("num_replicas") or "autoscaled"
        print(f"hasten serve: {config.model} on Ray Serve at http://{config.host}:{config.port}/ ({count} replicas"
              f", method {config.sampling.name}, preview {config.preview}"
              f"{', API key required' if config.api_key else ''})", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        serve.shutdown()
        if local:
            ray.shutdown()
    return 0
