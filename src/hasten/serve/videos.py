"""``/v1/videos``: OpenAI's video jobs, for video pipelines.

``POST /v1/videos`` (a multipart form, as the official client sends, or JSON:
``prompt``, ``model``, ``size``, ``seconds``, ``input_reference`` for
image-to-video pipelines, plus ``seed`` and ``hasten``) queues a job in the
server's one bounded queue and answers its ``video`` object at once;
``GET /v1/videos/{id}`` answers its status and progress (the rounds run,
over the steps); ``GET /v1/videos/{id}/content`` the H.264 MP4
(:mod:`hasten.mp4`); ``DELETE /v1/videos/{id}`` cancels it (the run stops
at its next round, freeing the device) and forgets it. Finished jobs are
kept for :data:`KEEP_S` seconds, at most :data:`KEEP` of them (oldest first
out). The clip's length is the served model's (``--frames`` at ``FPS``);
``seconds`` is answered, not obeyed.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hasten.errors import HastenError
from hasten.serve import events
from hasten.serve.edits import edit_inputs, read_form
from hasten.serve.request import parse_request
from hasten.serve.runs import FieldError
from hasten.serve.scheduler import Job

#: finished jobs kept, and for how long (seconds)
KEEP, KEEP_S = 32, 3600.0
#: frames per second of the MP4s
FPS = 16.0
TEXT_FIELDS = {"model": str, "prompt": str, "size": str, "seconds": str, "seed": int, "hasten": "json"}


@dataclass
class VideoJob:
    """One video job: the queued run and what its answers say."""

    id: str
    job: Job
    prompt: str
    size: str
    steps: int
    created_at: int = field(default_factory=lambda: int(time.time()))
    status: str = "queued"
    progress: int = 0
    completed_at: int | None = None
    finished_at: float | None = None
    mp4: bytes | None = None
    error: dict | None = None
    cost: dict | None = None

    def to_dict(self, served) -> dict:
        frames = getattr(served, "frames", 1)
        return {"id": self.id, "object": "video", "created_at": self.created_at, "status": self.status,
                "model": served.name, "progress": self.progress, "prompt": self.prompt, "size": self.size,
                "seconds": f"{frames / FPS:g}", "completed_at": self.completed_at, "error": self.error,
                "expires_at": None if self.completed_at is None else int(self.completed_at + KEEP_S),
                "remixed_from_video_id": None, "hasten": {"frames": frames, "fps": FPS, "cost": self.cost}}


class VideoStore:
    """The jobs by id: finished ones bounded in count and age."""

    def __init__(self, keep: int = KEEP, keep_s: float = KEEP_S):
        self.keep, self.keep_s = keep, keep_s
        self.jobs: OrderedDict[str, VideoJob] = OrderedDict()

    def prune(self) -> None:
        now = time.monotonic()
        finished = [k for k, v in self.jobs.items() if v.finished_at is not None]
        for k in finished[:max(0, len(finished) - self.keep)]:
            del self.jobs[k]
        for k in [k for k, v in self.jobs.items() if v.finished_at is not None and now - v.finished_at > self.keep_s]:
            del self.jobs[k]

    def get(self, key: str) -> VideoJob | None:
        self.prune()
        return self.jobs.get(key)


_error = events.error_response


async def _follow(video: VideoJob) -> None:
    """Follow the job's events: progress from each hit, the MP4 at the end."""
    from hasten.mp4 import clips, mp4_bytes

    while True:
        event = await video.job.events.get()
        kind = event[0]
        if kind == "partial":
            video.status = "in_progress"
            video.progress = min(99, max(video.progress, int(100 * event[1]["hasten"]["round"] / video.steps)))
            continue
        if kind == "done":
            try:
                clip = clips(event[1]["images"], 1)
                video.mp4 = await asyncio.to_thread(mp4_bytes, clip if clip is not None else event[1]["images"], FPS)
                video.status, video.progress, video.cost = "completed", 100, event[1]["cost"]
            except HastenError as err:
                video.status, video.error = "failed", {"code": "encode_failed", "message": str(err)}
        elif kind == "error":
            video.status, video.error = "failed", {"code": str(event[1]), "message": event[3]}
        video.completed_at, video.finished_at = int(time.time()), time.monotonic()
        return


def video_routes(service, authorised, refuse_auth) -> list[Route]:
    """The routes of ``/v1/videos``."""
    store = VideoStore()
    service.videos = store

    async def create(request: Request) -> Response:
        if not authorised(request):
            return refuse_auth()
        if service.scheduler.draining:
            return _error(503, "the server is shutting down", kind="server_error")
        served = service.served
        if getattr(served, "frames", 1) < 2:
            return _error(400, f"the served model {served.name} makes images; use /v1/images/generations", "model")
        try:
            if request.headers.get("content-type", "").startswith("application/json"):
                body = await request.body()
                if len(body) > 64 * 1024:
                    raise FieldError("body", "the body is over 65536 bytes")
                try:
                    text, files = json.loads(body), {}
                except ValueError:
                    raise FieldError("body", "the body must be JSON") from None
                if not isinstance(text, dict):
                    raise FieldError("body", "must be a JSON object")
                unknown = sorted(k for k in text if k not in TEXT_FIELDS)
                if unknown:
                    raise FieldError(unknown[0], f"unknown field; valid: {', '.join(TEXT_FIELDS)}")
            else:
                text, files = await read_form(request, text_fields=TEXT_FIELDS, file_fields=("input_reference",))
            seconds = text.pop("seconds", None)
            if seconds is not None and not str(seconds).replace(".", "", 1).isdigit():
                raise FieldError("seconds", f"must be a number of seconds, got {seconds!r}")
            inputs = {}
            if files.get("input_reference") or "--image" in getattr(served, "inputs", {}):
                inputs = edit_inputs(served, {"image": files.get("input_reference", [])})
            if text.get("size") in (None, "auto"):
                text.pop("size", None)
            video_request = parse_request({**text, "n": 1}, served, service.defaults, service.limits)
        except FieldError as err:
            return _error(413 if err.field == "body" and "over" in str(err) else 400, str(err), err.field)
        video_request.inputs, video_request.stream = inputs, True  # hits give progress
        job, refused = events.enqueue(service, video_request)
        if refused:
            return refused
        store.prune()
        video = VideoJob("video_" + secrets.token_hex(12), job, video_request.prompt, video_request.size_text,
                         video_request.settings.sampling.steps or 50)
        store.jobs[video.id] = video
        video.task = asyncio.get_running_loop().create_task(_follow(video))
        return JSONResponse(video.to_dict(served))

    def found(request: Request):
        """The request's video job, or the answer refusing it (no key, no such job)."""
        if not authorised(request):
            return None, refuse_auth()
        video = store.get(request.path_params["video_id"])
        if video is None:
            return None, _error(404, f"no video job {request.path_params['video_id']!r} (finished jobs are kept "
                                     f"{KEEP_S:g} s, at most {KEEP})", "video_id", kind="not_found_error")
        return video, None

    async def retrieve(request: Request) -> Response:
        video, missing = found(request)
        return missing or JSONResponse(video.to_dict(service.served))

    async def content(request: Request) -> Response:
        video, missing = found(request)
        if missing:
            return missing
        variant = request.query_params.get("variant", "video")
        if variant != "video":
            return _error(400, f"variant must be video (the MP4), got {variant!r}", "variant")
        if video.mp4 is None:
            return _error(409, f"video job {video.id} is {video.status}, not completed", "video_id")
        return Response(video.mp4, media_type="video/mp4")

    async def delete(request: Request) -> Response:
        video, missing = found(request)
        if missing:
            return missing
        video.job.gone.set()  # the run stops at its next round (hasten.serve.runner.Cancellable)
        del store.jobs[video.id]
        return JSONResponse({"id": video.id, "object": "video.deleted", "deleted": True})

    return [Route("/v1/videos", create, methods=["POST"]), Route("/v1/videos/{video_id}", retrieve, methods=["GET"]),
            Route("/v1/videos/{video_id}", delete, methods=["DELETE"]),
            Route("/v1/videos/{video_id}/content", content, methods=["GET"])]
