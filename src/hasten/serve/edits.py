"""``POST /v1/images/edits``: OpenAI's image edits (multipart form), for pipelines that take an image.

The form's fields are OpenAI's (``image`` or ``image[]``, ``mask``,
``prompt``, ``n``, ``size``, ``response_format``, ``output_format``,
``stream``, ``partial_images``, ``model``) plus ``seed`` and ``hasten`` (a JSON
object, as in generations). Everything is checked before the job is queued:
the body's length, the content type, each upload with the command line's
limits (:mod:`hasten.integrations.images`: a readable image, at most
``MAX_PIXELS`` pixels, a mask of the image's size), then the generation fields
(:func:`hasten.serve.request.parse_request`). The answer and the streamed
previews are the generations' own, their events named ``image_edit.*``.
"""

from __future__ import annotations

import json

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from hasten.errors import HastenError
from hasten.integrations.images import MAX_PIXELS, check_mask, image_from_bytes
from hasten.serve import events
from hasten.serve.request import parse_request
from hasten.serve.runs import FieldError

#: the largest edits body (the images' files together)
MAX_UPLOAD = 32 * 1024 * 1024
#: the form's text fields and how each becomes a generations field
TEXT_FIELDS = {"model": str, "prompt": str, "n": int, "size": str, "response_format": str, "output_format": str,
               "stream": "bool", "partial_images": int, "seed": int, "hasten": "json"}
FILE_FIELDS = ("image", "image[]", "mask")


_error = events.error_response


def _text(name: str, value: str, fields: dict = TEXT_FIELDS):
    kind = fields[name]
    if kind is str:
        return value
    if kind == "bool":
        if value.lower() not in ("true", "false"):
            raise FieldError(name, f"must be true or false, got {value!r}")
        return value.lower() == "true"
    if kind == "json":
        try:
            return json.loads(value)
        except ValueError:
            raise FieldError(name, "must be a JSON object") from None
    try:
        return int(value)
    except ValueError:
        raise FieldError(name, f"must be an integer, got {value!r}") from None


async def read_form(request: Request, limit: int = MAX_UPLOAD, text_fields: dict = TEXT_FIELDS,
                    file_fields: tuple = FILE_FIELDS) -> tuple[dict, dict[str, list[bytes]]]:
    """The form's text fields (converted) and its files' bytes by field; a malformed form -> FieldError."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        raise FieldError("content-type", f"must be multipart/form-data (OpenAI's image edits form), got {kind!r}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise FieldError("body", f"the body is over {limit} bytes")
    request._body = body  # Starlette parses the form from the body read here
    try:
        form = await request.form(max_files=16, max_fields=32, max_part_size=limit)
    except Exception as err:  # noqa: BLE001 - the multipart parser's own errors
        raise FieldError("body", f"not a readable multipart form ({str(err)[:200]})") from None
    text, files = {}, {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if name not in file_fields:
                raise FieldError(name, f"unknown file field; valid: {', '.join(file_fields)}")
            files.setdefault("image" if name == "image[]" else name, []).append(await value.read())
        elif name in file_fields:
            raise FieldError(name, "must be a file upload, not a text field")
        elif name not in text_fields:
            raise FieldError(name, f"unknown field; valid: {', '.join((*file_fields, *text_fields))}")
        elif name in text:
            raise FieldError(name, "given twice")
        else:
            text[name] = _text(name, value, text_fields)
    await form.close()
    return text, files


def edit_inputs(served, files: dict[str, list[bytes]], max_pixels: int = MAX_PIXELS) -> dict:
    """The uploads as the served pipeline's call inputs, each checked; raises FieldError naming the field."""
    takes = getattr(served, "inputs", {})
    key = takes.get("--image") or takes.get("--control-image")
    if key is None:
        raise FieldError("image", f"the served model {served.name} takes no image; use /v1/images/generations")
    images = files.get("image", [])
    if not images:
        raise FieldError("image", "give one image file (multipart field image)")
    if len(images) > 1:
        raise FieldError("image", f"the served {type(served.pipe).__name__} takes one image, got {len(images)}")
    masks = files.get("mask", [])
    if masks and "--mask" not in takes:
        raise FieldError("mask", f"the served {type(served.pipe).__name__} takes no mask")
    if len(masks) > 1:
        raise FieldError("mask", f"give one mask, got {len(masks)}")
    try:
        image = image_from_bytes(images[0], "image", max_pixels=max_pixels)
    except HastenError as err:
        raise FieldError("image", str(err)) from None
    inputs = {key: image}
    if "--mask" in takes:
        if not masks:
            raise FieldError("mask", f"the served {type(served.pipe).__name__} repaints a mask: give one")
        try:
            mask = image_from_bytes(masks[0], "mask", mode="L", max_pixels=max_pixels)
            check_mask(mask, image, "mask")
        except HastenError as err:
            raise FieldError("mask", str(err)) from None
        inputs[takes["--mask"]] = mask
    return inputs


def edits_route(service, authorised, refuse_auth, answer, stream) -> Route:
    """The route; ``answer`` and ``stream`` are the generations' own (:mod:`hasten.serve.app`)."""

    async def edits(request: Request) -> Response:
        if not authorised(request):
            return refuse_auth()
        if service.scheduler.draining:
            return _error(503, "the server is shutting down", kind="server_error")
        try:
            text, files = await read_form(request)
            inputs = edit_inputs(service.served, files)
            image = next(iter(inputs.values()))
            if text.get("size") in (None, "auto"):  # the image's own size, where the pipeline takes one
                text["size"] = "%dx%d" % image.size if service.served.takes_size else None
            image_request = parse_request(text, service.served, service.defaults, service.limits)
        except FieldError as err:
            status = 413 if "over" in str(err) and err.field == "body" else 400
            return _error(status, str(err), err.field)
        image_request.inputs = inputs
        if not service.served.takes_size:
            image_request.size = image.size
        job, refused = events.enqueue(service, image_request)
        if refused:
            return refused
        if image_request.stream:
            return StreamingResponse(_renamed(stream(job, service)), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        return await answer(job, request, service)

    return Route("/v1/images/edits", edits, methods=["POST"])


async def _renamed(events_stream):
    """The generations' events as OpenAI names an edit's: ``image_edit.partial_image``, ``image_edit.completed``."""
    async for chunk in events_stream:
        yield chunk.replace(b"image_generation.", b"image_edit.")
