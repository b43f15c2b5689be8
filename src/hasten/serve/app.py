"""The ASGI app (Starlette): the OpenAI-compatible images API, models, health, metrics and the page.

Routes: ``POST /v1/images/generations``, ``GET /v1/models``, ``GET /health``,
``GET /metrics``, ``GET /`` (the page) and ``GET /app.js``; any other path or
method gets OpenAI's JSON error shape (404, 405). With an API key,
``/v1/*`` needs ``Authorization: Bearer KEY`` (compared in constant time).
Bodies are capped at :data:`MAX_BODY` bytes and validated whole before a
job is queued (:mod:`hasten.serve.request`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import time
from dataclasses import dataclass
from importlib import resources
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from hasten.serve import events
from hasten.serve.request import Limits, parse_request
from hasten.serve.runs import FieldError, RunSettings
from hasten.serve.scheduler import Job, Scheduler

MAX_BODY = 64 * 1024
#: the page's security policy: its own script only, images from data: URLs, nothing inline
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
       "connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@dataclass
class Service:
    """What the app serves with: the model, defaults and limits, the queue, metrics, and the rank count."""

    served: object
    defaults: RunSettings
    limits: Limits
    scheduler: Scheduler
    metrics: object
    api_key: str | None = None
    request_timeout: float = 300.0
    world_size: int = 1
    preview: str = "full"
    #: the replica's name, sent as the X-Hasten-Replica header of every answer (Ray Serve replicas)
    replica: str | None = None
    #: None when ready, else why not (:meth:`hasten.serve.front.Front.readiness`); /health answers 503 then
    readiness: Callable[[], str | None] | None = None


def _context_parallel(served) -> str | None:
    """The served pipeline's context-parallel layout, where its transformer runs in that mode."""
    layout = getattr(served, "context_parallel", None)
    if layout is None or getattr(served, "pipe", None) is None:
        return None
    from hasten.integrations.context import networks_of

    return layout if all(getattr(n, "_parallel_config", None) is not None for n in networks_of(served.pipe)) else None


_error = events.error_response


def _asset(name: str) -> bytes:
    return resources.files("hasten.serve").joinpath("static", name).read_bytes()


#: the response header that names the replica which answered
REPLICA_HEADER = "x-hasten-replica"


class CountRequests:
    """ASGI middleware: every HTTP answer counted by path and status (streamed ones included), and named by
    the replica that gave it (where there is one)."""

    def __init__(self, app, metrics, replica: str | None = None):
        self.app, self.metrics = app, metrics
        self.header = (REPLICA_HEADER.encode(), replica.encode()) if replica else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"

        async def counted(message):
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(path, str(message["status"])).inc()
                if self.header is not None:
                    message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, counted)


KNOWN_PATHS = ("/", "/app.js", "/style.css", "/health", "/metrics", "/v1/models", "/v1/images/generations",
               "/v1/images/edits", "/v1/videos")


def create_app(service: Service) -> Starlette:
    page = _asset("index.html")
    assets = {"/app.js": (_asset("app.js"), "text/javascript"), "/style.css": (_asset("style.css"), "text/css")}
    key = service.api_key.encode() if service.api_key else None

    def authorised(request: Request) -> bool:
        if key is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode("utf-8", "replace"), b"Bearer " + key)

    def refuse_auth() -> JSONResponse:
        return _error(401, "missing or wrong API key: send Authorization: Bearer KEY", "authorization",
                      headers={"WWW-Authenticate": "Bearer"})

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers={"Content-Security-Policy": CSP})

    async def asset(request: Request) -> Response:
        body, kind = assets[request.url.path]
        return Response(body, media_type=kind)

    async def health(request: Request) -> JSONResponse:
        scheduler = service.scheduler
        unready = service.readiness() if service.readiness is not None else None
        status = "draining" if scheduler.draining else "unready" if unready else "ok"
        return JSONResponse({"status": status, **({"reason": unready} if unready else {}),
                             **({"replica": service.replica, "pid": os.getpid()} if service.replica else {}),
                             "model": service.served.name, "queue": scheduler.depth(),
                             "running": len(scheduler.running), "world_size": service.world_size,
                             "context_parallel": _context_parallel(service.served),
                             "needs_key": key is not None, "preview": service.preview,
                             "defaults": service.defaults.to_dict(), "size": "%dx%d" % service.served.size,
                             "inputs": sorted(getattr(service.served, "inputs", {})),  # the page's image pickers
                             "video": getattr(service.served, "frames", 1) > 1},
                            status_code=503 if scheduler.draining or unready else 200)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def models(request: Request) -> JSONResponse:
        if not authorised(request):
            return refuse_auth()
        return JSONResponse({"object": "list", "data": [{"id": service.served.name, "object": "model",
                                                         "created": 0, "owned_by": "hasten",
                                                         "hasten": {"loras": sorted(getattr(
                                                             service.served, "adapters", {}))}}]})

    async def generations(request: Request) -> Response:
        if not authorised(request):
            return refuse_auth()
        if service.scheduler.draining:
            return _error(503, "the server is shutting down", kind="server_error")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return _error(413, f"the body is over {MAX_BODY} bytes", "body")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error(400, "the body must be JSON", "body")
        try:
            image_request = parse_request(data, service.served, service.defaults, service.limits)
        except FieldError as err:
            return _error(400, str(err), err.field)
        job, refused = events.enqueue(service, image_request)
        if refused:
            return refused
        if image_request.stream:
            return StreamingResponse(_stream(job, service), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        return await _answer(job, request, service)

    routes = [Route("/", index), Route("/app.js", asset), Route("/style.css", asset), Route("/health", health),
              Route("/metrics", metrics), Route("/v1/models", models),
              Route("/v1/images/generations", generations, methods=["POST"])]
    from hasten.serve.edits import edits_route
    from hasten.serve.videos import video_routes

    routes.append(edits_route(service, authorised, refuse_auth, _answer, _stream))  # issue 27
    routes.extend(video_routes(service, authorised, refuse_auth))
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.add_middleware(CountRequests, metrics=service.metrics, replica=service.replica)
    return app


async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    """Starlette's own refusals (an unknown path: 404, a wrong method: 405 with Allow) in OpenAI's error shape."""
    if err.status_code == 404:
        message = f"no such path: {request.method} {request.url.path} (see GET /v1/models, POST " \
                  "/v1/images/generations)"
    elif err.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}; allowed: " \
                  f"{(err.headers or {}).get('Allow', 'GET')}"
    else:
        message = str(err.detail)
    return _error(err.status_code, message, headers=dict(err.headers or {}))


async def _answer(job: Job, request: Request, service: Service) -> Response:
    """Wait for a non-streamed job's end; a client that leaves cancels it."""
    try:
        while True:
            try:
                event = await asyncio.wait_for(job.events.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.gone.set()
                    return Response(status_code=499)
                continue
            kind = event[0]
            if kind == "done":
                service.metrics.latency.labels("false").observe(time.monotonic() - job.received)
                return JSONResponse(events.response(job, event[1]))
            if kind == "error":
                _, status, err_kind, message = event
                return _error(status, message, kind=err_kind)
    finally:
        job.gone.set()


async def _stream(job: Job, service: Service):
    """The job's events as server-sent events; leaving (the client closing) cancels its run at the next round."""
    first = True
    try:
        while True:
            event = await job.events.get()
            kind = event[0]
            if first and kind in ("partial", "done"):
                service.metrics.first_image.observe(time.monotonic() - job.received)
                first = False
            if kind == "partial":
                yield events.sse(event[1])
            elif kind == "done":
                for index, png in enumerate(event[1]["pngs"]):
                    yield events.sse(events.completed(job, png, index, event[1]))
                service.metrics.latency.labels("true").observe(time.monotonic() - job.received)
                return
            elif kind == "error":
                _, status, err_kind, message = event
                yield events.sse(events.error_body(status, err_kind, message), "error")
                return
    finally:
        job.gone.set()
