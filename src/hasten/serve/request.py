"""``POST /v1/images/generations``: the body checked field by field before any work.

The OpenAI fields (``model``, ``prompt``, ``n``, ``size``, ``response_format``,
``output_format``, ``stream``, ``partial_images``), ``seed``, and one object
``hasten``: the run's settings (:mod:`hasten.serve.runs`) and ``latents``
(return each sample's float32 latents too). Unknown fields are refused by
name; every number is bounded by the operator's :class:`Limits`. Nothing a
request holds names a file, a path or another model.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from hasten.errors import HastenError
from hasten.serve.runs import FieldError, RunLimits, RunSettings, batch_key, run_settings

FIELDS = ("model", "prompt", "n", "size", "response_format", "output_format", "stream", "partial_images", "seed",
          "hasten")
#: the ``hasten`` fields about the response rather than the run
RESPONSE_FIELDS = ("latents", "lora")


@dataclass(frozen=True)
class Limits:
    """The operator's bounds on a request (``hasten serve --max-*``)."""

    max_n: int = 4
    max_size: int = 1024
    max_prompt: int = 1000
    max_seed: int = 2**32 - 1
    max_partial: int = 64
    run: RunLimits = field(default_factory=RunLimits)


@dataclass
class ImageRequest:
    """A validated request."""

    prompt: str
    n: int
    size: tuple[int, int]
    stream: bool
    partial_images: int | None
    seed: int
    settings: RunSettings
    latents: bool = False
    #: the pipeline's image inputs (``/v1/images/edits``: image, mask_image), PIL images by call key
    inputs: dict = field(default_factory=dict)
    #: the preloaded LoRA adapter the run uses (``hasten.lora``; None: the base model)
    lora: str | None = None

    @property
    def size_text(self) -> str:
        return f"{self.size[0]}x{self.size[1]}"

    @property
    def key(self) -> tuple | None:
        """Requests with the same key may run as one batch (None: alone)."""
        if self.inputs:  # an edit runs alone: its latents come from its own image
            return None
        key = batch_key(self.settings, self.size)
        return None if key is None else (*key, self.lora)  # batches hold one adapter


def _int(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FieldError(name, f"must be an integer in {low}..{high}, got {value!r}")
    return value


def _size(text, served, limits: Limits) -> tuple[int, int]:
    if text is None or text == "auto":
        return served.size
    if not isinstance(text, str):
        raise FieldError("size", f"must be a string WIDTHxHEIGHT or auto, got {text!r}")
    width, sep, height = text.partition("x")
    if not (sep and width.isdigit() and height.isdigit() and len(text) <= 11):
        raise FieldError("size", f"must be WIDTHxHEIGHT (e.g. {served.size[0]}x{served.size[1]}) or auto, "
                                 f"got {text!r}")
    size = (int(width), int(height))
    if not served.takes_size:
        if size != served.size:
            raise FieldError("size", f"the served model {served.name} makes {served.size[0]}x{served.size[1]} "
                                     f"images only, got {text!r}")
        return size
    for side in size:
        if not 8 <= side <= limits.max_size or side % 8:
            raise FieldError("size", f"each side must be a multiple of 8 in 8..{limits.max_size}, got {text!r}")
    return size


def _prompt(value, served, limits: Limits) -> str:
    if not isinstance(value, str):
        raise FieldError("prompt", f"must be a string, got {type(value).__name__}")
    if len(value) > limits.max_prompt:
        raise FieldError("prompt", f"must be at most {limits.max_prompt} characters, got {len(value)}")
    if any(ord(c) < 32 and c not in "\n\t" for c in value):
        raise FieldError("prompt", "must not hold control characters")
    try:
        served.check_prompt(value)
    except FieldError:
        raise
    except HastenError as err:
        raise FieldError("prompt", str(err)) from None
    return value


def parse_request(body, served, defaults: RunSettings, limits: Limits) -> ImageRequest:
    """The request in ``body`` (decoded JSON), validated; raises :class:`FieldError` naming the field."""
    if not isinstance(body, dict):
        raise FieldError("body", "must be a JSON object")
    unknown = sorted(str(k) for k in body if k not in FIELDS)
    if unknown:
        raise FieldError(unknown[0], f"unknown field; valid: {', '.join(FIELDS)}")
    model = body.get("model")
    if model is not None and model != served.name:
        raise FieldError("model", f"this server serves {served.name!r} only (GET /v1/models); got {model!r}")
    for name, allowed in (("response_format", ("b64_json",)), ("output_format", ("png",))):
        if body.get(name) is not None and body[name] not in allowed:
            raise FieldError(name, f"must be {' or '.join(allowed)}, got {body[name]!r}")
    stream = body.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise FieldError("stream", f"must be true or false, got {stream!r}")
    n = _int("n", body["n"], 1, limits.max_n) if body.get("n") is not None else 1
    partial = body.get("partial_images")
    if partial is not None:
        partial = _int("partial_images", partial, 0, limits.max_partial)
    seed = body.get("seed")
    seed = secrets.randbelow(limits.max_seed + 1) if seed is None else _int("seed", seed, 0, limits.max_seed)
    if "prompt" in body and body["prompt"] is None:  # OpenAI's API requires a string; "" asks for no condition
        raise FieldError("prompt", 'must be a string, got null (send "" for no prompt)')
    prompt = _prompt(body.get("prompt", ""), served, limits)
    size = _size(body.get("size"), served, limits)
    extra = body.get("hasten")
    if extra is not None and not isinstance(extra, dict):
        raise FieldError("hasten", "must be an object")
    extra = dict(extra or {})
    latents = extra.pop("latents", False)
    lora = extra.pop("lora", None)
    adapters = getattr(served, "adapters", {})
    if lora is not None and (not isinstance(lora, str) or lora not in adapters):
        raise FieldError("hasten.lora", f"must name a preloaded adapter ({', '.join(adapters) or 'none loaded'}), "
                                        f"got {lora!r}")
    if not isinstance(latents, bool):
        raise FieldError("hasten.latents", f"must be true or false, got {latents!r}")
    settings = run_settings(defaults, extra, limits.run)
    if settings.guidance_scale is not None and not served.takes_guidance:
        raise FieldError("hasten.guidance_scale", f"the served model {served.name} takes no guidance")
    return ImageRequest(prompt, n, size, stream, partial, seed, settings, latents, lora=lora)
