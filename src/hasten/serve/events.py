"""What the client receives, in OpenAI's shapes: image responses, streamed events, errors.

Streaming (``stream: true``) follows OpenAI's images streaming: server-sent
events named by their ``type``, ``image_generation.partial_image`` (``b64_json``,
``partial_image_index``) per hit as it lands, fastest core first, then one
``image_generation.completed`` per image. hasten adds one key ``hasten`` to each
event: the hit's core, round (rounds of model latency so far), NFE, the run's
clock (``wall_s``), the time since the request arrived (``elapsed_s``), when
the hit landed (``landed_at``, Unix time), and whether the image is the exact
sequential result (``exact``).
"""

from __future__ import annotations

import json
import time

from hasten.report import json_safe

#: OpenAI's fixed descriptors of an image
STYLE = {"background": "opaque", "output_format": "png", "quality": "auto"}
#: the usage block OpenAI's completed event carries; hasten counts no tokens
USAGE = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
         "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}}


def _now() -> int:
    return int(time.time())


def partial_image(job, b64_png: str, partial_index: int, image_index: int, hit, exact: bool, landed: float) -> dict:
    return {"type": "image_generation.partial_image", "b64_json": b64_png, "created_at": _now(),
            "size": job.request.size_text, **STYLE, "partial_image_index": partial_index,
            "hasten": {"image_index": image_index, "core": hit.core, "round": hit.round, "nfe": hit.nfe,
                       "wall_s": hit.wall_s, "elapsed_s": time.monotonic() - job.received, "landed_at": landed,
                       "exact": exact}}


def completed(job, b64_png: str, image_index: int, done: dict) -> dict:
    cost = done["cost"]
    return {"type": "image_generation.completed", "b64_json": b64_png, "created_at": _now(),
            "size": job.request.size_text, **STYLE, "usage": USAGE,
            "hasten": {"image_index": image_index, "round": cost["rounds"], "nfe": cost["nfe"],
                       "wall_s": cost["wall_s"], "elapsed_s": time.monotonic() - job.received,
                       "exact": done["exact"], "seed": job.request.seed, "cost": cost}}


def latents_field(latents) -> dict:
    """A sample's float32 latents as base64 of their little-endian bytes, with the shape."""
    import base64

    return {"shape": list(latents.shape), "dtype": "float32",
            "b64": base64.b64encode(latents.contiguous().numpy().astype("<f4").tobytes()).decode("ascii")}


def response(job, done: dict) -> dict:
    """The non-streamed answer: OpenAI's ImagesResponse, plus the run's cost under ``hasten``."""
    data = []
    for index, png in enumerate(done["pngs"]):
        item = {"b64_json": png}
        if done["latents"] is not None:
            item["hasten_latents"] = latents_field(done["latents"][index])
        data.append(item)
    return {"created": _now(), "data": data, "size": job.request.size_text, **STYLE, "usage": USAGE,
            "hasten": {"seed": job.request.seed, "exact": done["exact"], "settings": job.request.settings.to_dict(),
                       "elapsed_s": time.monotonic() - job.received, "cost": done["cost"]}}


def error_body(status: int, kind: str, message: str, param: str | None = None) -> dict:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def error_response(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                   headers: dict | None = None):
    """A JSON response in OpenAI's error shape (:func:`error_body`), the one every route answers with."""
    from starlette.responses import JSONResponse

    return JSONResponse(error_body(status, kind, message, param), status_code=status, headers=headers)


def sse(event: dict, name: str | None = None) -> bytes:
    """One server-sent event: ``event: TYPE`` and its JSON ``data``."""
    kind = name or event.get("type", "message")
    return f"event: {kind}\ndata: {json.dumps(json_safe(event), separators=(',', ':'))}\n\n".encode()


def enqueue(service, request):
    """Queue ``request`` as a Job on ``service``'s scheduler, its deadline ``request_timeout`` from now.

    Returns (job, None), or (None, the error response): a full queue answers 429 with Retry-After, a draining
    server 503."""
    import asyncio

    from hasten.serve.scheduler import Draining, Job, QueueFull

    job = Job(request, asyncio.get_running_loop())
    job.deadline = job.received + service.request_timeout
    try:
        service.scheduler.submit(job)
    except QueueFull as err:
        return None, error_response(429, str(err), kind="rate_limit_error",
                                    headers={"Retry-After": str(err.retry_after)})
    except Draining:
        return None, error_response(503, "the server is shutting down", kind="server_error")
    return job, None
