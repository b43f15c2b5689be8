"""A serve request becomes a run here, and only here.

The request's ``hasten`` object holds keys of the run description's dict form
(:class:`hasten.spec.Sampling`: method, cores, steps, cache, stop) and the one
call key a request may set, ``guidance_scale``. :func:`run_settings` merges
them over the server's defaults (:meth:`Sampling.merged`: another method drops
the default's options) within the operator's limits; the Sampling validates
itself, before any model call. :func:`open_run` builds the run of one request
or of a batch of compatible requests through the one session
(:class:`hasten.session.Session`), exactly as ``hasten.sample`` builds it: a
batch starts from each request's own :func:`~hasten.noise.initial_noise`,
concatenated, so every request still gets its own seed's result. The engine
does the counting.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import torch

from hasten.errors import HastenError
from hasten.methods import METHODS
from hasten.noise import initial_noise
from hasten.session import PreparedRun, Session
from hasten.spec import Placement, Sampling
from hasten.steps import NOISY_SOLVERS
from hasten.stopping import Stop

#: the run description's keys a request may set under ``hasten`` (method options and the solver stay the server's)
SAMPLING_FIELDS = tuple(k for k in Sampling.KEYS if k not in ("options", "solver"))
#: the model call's keys a request may set under ``hasten``
CALL_FIELDS = ("guidance_scale",)
RUN_FIELDS = SAMPLING_FIELDS + CALL_FIELDS
#: methods whose rounds do not depend on the data: a batch of requests runs them exactly as each would alone
BATCHABLE_METHODS = ("sequential", "chords")


class FieldError(HastenError):
    """A request field that is refused; ``field`` names it (``hasten.steps``, ``size``, ...)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class RunSettings:
    """The settings of one request's run: its :class:`~hasten.spec.Sampling` and its guidance scale."""

    sampling: Sampling
    guidance_scale: float | None = None

    def __getattr__(self, name: str) -> Any:  # method, cores, steps, solver, stop: the Sampling's
        if name in Sampling.KEYS:
            return getattr(self.sampling, name)
        raise AttributeError(name)

    def to_dict(self) -> dict:
        """The dict form (JSON): the Sampling's keys and ``guidance_scale``."""
        return {**self.sampling.to_dict(), "guidance_scale": self.guidance_scale}

    @classmethod
    def from_dict(cls, data: dict) -> "RunSettings":
        """Back from :meth:`to_dict` (how rank 0 tells the other ranks)."""
        data = dict(data)
        guidance = data.pop("guidance_scale", None)
        return cls(Sampling.from_dict(data), guidance)

    def key(self) -> str:
        """A hashable form: equal for equal settings."""
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass(frozen=True)
class RunLimits:
    """What the operator lets a request ask for."""

    max_steps: int = 1000
    max_cores: int = 16
    max_guidance: float = 20.0
    methods: tuple[str, ...] = METHODS


def _int_field(field: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FieldError(field, f"must be an integer in {low}..{high}, got {value!r}")
    return value


def _str_field(field: str, value: Any, longest: int = 200) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > longest or any(c in value for c in " /\\\0"):
        raise FieldError(field, f"must be a non-empty spec string without spaces or slashes, got {value!r}")
    return value


def run_settings(defaults: RunSettings, fields: Any, limits: RunLimits) -> RunSettings:
    """The request's ``hasten`` fields over ``defaults``, validated; refuses unknown fields by name."""
    if fields is None:
        fields = {}
    if not isinstance(fields, dict):
        raise FieldError("hasten", f"must be an object with fields among {', '.join(RUN_FIELDS)}")
    unknown = sorted(str(k) for k in fields if k not in RUN_FIELDS)
    if unknown:
        raise FieldError(f"hasten.{unknown[0]}", f"unknown field; valid: {', '.join(RUN_FIELDS)}")
    given: dict[str, Any] = {}
    if "method" in fields:
        method = _str_field("hasten.method", fields["method"])
        if method not in limits.methods:
            raise FieldError("hasten.method", f"must be one of {', '.join(limits.methods)} (method options are "
                                              f"the server's), got {method!r}")
        given["method"] = method
    if "cores" in fields:
        given["cores"] = _int_field("hasten.cores", fields["cores"], 1, limits.max_cores)
    if "steps" in fields:
        given["steps"] = _int_field("hasten.steps", fields["steps"], 1, limits.max_steps)
    if "cache" in fields:
        given["cache"] = _str_field("hasten.cache", fields["cache"])
    if "stop" in fields:
        given["stop"] = _str_field("hasten.stop", fields["stop"])
    guidance = defaults.guidance_scale
    if "guidance_scale" in fields:
        scale = fields["guidance_scale"]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) \
                or not 1 <= scale <= limits.max_guidance:
            raise FieldError("hasten.guidance_scale", f"must be a number in 1..{limits.max_guidance:g}, got {scale!r}")
        guidance = float(scale)
    if given.get("cores") is not None and given.get("method", defaults.method) == "sequential":
        raise FieldError("hasten.cores", "sequential takes no cores")
    try:
        sampling = defaults.sampling.merged(**given)
    except HastenError as err:
        raise FieldError(f"hasten.{_blame(str(err), given)}", str(err)) from None
    return RunSettings(sampling, guidance)


def _blame(message: str, given: dict) -> str:
    """Which field a sampling error is about."""
    for word in ("cache", "stop", "cores", "steps"):
        if word in message and word in given:
            return word
    for word in ("cache", "stop", "cores", "steps"):
        if word in message:
            return word
    return "method"


def batch_key(settings: RunSettings, size: tuple[int, int]) -> tuple | None:
    """Requests with equal keys may share one batched run; None for a run that must run alone.

    A batch runs every request exactly as alone only where the method's rounds,
    the stop rule and the cache's schedule do not depend on the data (no
    convergence test, residual stop or adaptive cache) and no per-step noise is drawn.
    """
    cache = settings.sampling.cache
    adaptive = cache is not None and cache.tol is not None
    if (settings.method not in BATCHABLE_METHODS or Stop.parse(settings.stop).kind == "residual" or adaptive
            or settings.solver in NOISY_SOLVERS):
        return None
    return (settings.key(), size)


def exact(settings: RunSettings, core: int) -> bool:
    """Whether a hit of ``core`` is the sequential sampler's own result (CHORDS' slowest core, sequential's one)."""
    if settings.sampling.cache is not None:
        return False
    return settings.method == "sequential" or (settings.method == "chords" and core == 1)


def last_hit(settings: RunSettings, core: int) -> bool:
    """Whether a hit of ``core`` is the run's last whatever the stop rule (CHORDS' slowest core lands last)."""
    return settings.method in ("sequential", "chords") and core == 1


@dataclass
class Rows:
    """One request's share of a run: its prompt, samples and seed."""

    prompt: str
    n: int
    seed: int


def model_call(settings: RunSettings, prompts: list[str], size: tuple[int, int] | None, takes_size: bool) -> dict:
    """The model's call: one prompt per sample (one string where all agree), guidance, and a pipeline's size."""
    call: dict[str, Any] = {"prompt": prompts[0] if len(set(prompts)) == 1 else prompts}
    if settings.guidance_scale is not None:
        call["guidance_scale"] = settings.guidance_scale
    if takes_size and size is not None:
        call["width"], call["height"] = size
    return call


def open_run(served, settings: RunSettings, rows: list[Rows], size: tuple[int, int] | None,
             executor: str = "batched", inputs: dict | None = None, lora: str | None = None) -> PreparedRun:
    """The run of ``rows`` (one request, or a batch of compatible ones) on the served model.

    One model view carries every sample's prompt; a lone request starts from its
    own seed's latents (a pipeline's own ``prepare_latents``), a batch from each
    request's own initial noise, concatenated.
    """
    # the process group, where one is used, was joined at start; context parallelism is the server's
    layout = getattr(served, "context_parallel", None) if executor == "distributed" else None
    prompts = [r.prompt for r in rows for _ in range(r.n)]
    call = {**model_call(settings, prompts, size, served.takes_size), **(inputs or {})}  # an edit's images
    if hasattr(served, "use_adapter"):
        served.use_adapter(lora)  # the runs take turns: each sets its own adapter (or none)
    view = served.view(call, len(prompts), rows[0].seed)
    x = None
    if len(rows) > 1:
        if served.is_pipeline:
            raise HastenError("pipeline requests run one at a time (their latents come from the pipeline's own call)")
        x = torch.cat([initial_noise(served.model, r.n, r.seed) for r in rows])
    session = Session(view, Placement(executor, context_parallel=layout))
    return session.prepare(settings.sampling, seed=rows[0].seed, batch=len(prompts), x=x)


def row_slices(rows: list[Rows]) -> list[slice]:
    """Each request's rows in its run's batch."""
    out, start = [], 0
    for r in rows:
        out.append(slice(start, start + r.n))
        start += r.n
    return out


def settings_from_dict(data: dict) -> RunSettings:
    """A :class:`RunSettings` back from :meth:`RunSettings.to_dict` (how rank 0 tells the other ranks)."""
    return RunSettings.from_dict(data)
