"""A serve request becomes a run here, and only here.

The request's ``hasten`` object holds the run's settings (:data:`RUN_FIELDS`);
:func:`run_settings` merges them over the server's defaults within the
operator's limits and validates them (method, stop and cache through the one
assembler's :func:`hasten.assembly.build_method`, before any model call).
:func:`open_run` builds the run of one request, or of a batch of compatible
requests, through :mod:`hasten.assembly`: a lone request goes through
:func:`~hasten.assembly.prepare`, exactly as ``hasten.sample`` does; a batch
concatenates each request's own :func:`~hasten.assembly.initial_noise` and goes
through :func:`~hasten.assembly.assemble`, so every request still gets its own
seed's result. The engine does the counting.

When the validated run description (issue 20) lands, it replaces
:class:`RunSettings`; nothing outside this module names a run field.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from hasten.assembly import (assemble, build_method, initial_noise, model_grid, model_step, prepare)
from hasten.caches import make_cache, parse_cache_spec
from hasten.denoise import denoiser_device
from hasten.errors import HastenError
from hasten.methods import BUDGET_OPTION, METHODS
from hasten.steps import NOISY_SOLVERS
from hasten.stopping import Stop

#: the run fields a request may set under ``hasten`` (each within the operator's limits)
RUN_FIELDS = ("method", "cores", "steps", "cache", "stop", "guidance_scale")
#: methods whose rounds do not depend on the data: a batch of requests runs them exactly as each would alone
BATCHABLE_METHODS = ("sequential", "chords")


class FieldError(HastenError):
    """A request field that is refused; ``field`` names it (``hasten.steps``, ``size``, ...)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class RunSettings:
    """The settings of one run, as a request's ``hasten`` object and the server's flags give them."""

    method: str = "chords"
    cores: int | None = None
    steps: int = 50
    cache: str = "none"
    stop: str = "none"
    guidance_scale: float | None = None
    solver: str | None = None  # the server's --solver; not a request field

    def to_dict(self) -> dict:
        return asdict(self)


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
        if method != defaults.method:
            given["cores"] = None  # another method's budget: its own default unless the request sets one
    if "cores" in fields:
        given["cores"] = _int_field("hasten.cores", fields["cores"], 1, limits.max_cores)
    if "steps" in fields:
        given["steps"] = _int_field("hasten.steps", fields["steps"], 1, limits.max_steps)
    if "cache" in fields:
        given["cache"] = _str_field("hasten.cache", fields["cache"])
    if "stop" in fields:
        given["stop"] = _str_field("hasten.stop", fields["stop"])
    if "guidance_scale" in fields:
        scale = fields["guidance_scale"]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) \
                or not 1 <= scale <= limits.max_guidance:
            raise FieldError("hasten.guidance_scale", f"must be a number in 1..{limits.max_guidance:g}, got {scale!r}")
        given["guidance_scale"] = float(scale)
    settings = replace(defaults, **given)
    check_settings(settings, "hasten.")
    return settings


def check_settings(settings: RunSettings, prefix: str = "--") -> None:
    """Method, cores, stop and cache checked for the steps, as the assembler will build them (no model call)."""
    budget = {} if settings.cores is None or settings.method == "sequential" else {"cores": settings.cores}
    if settings.cores is not None and settings.method == "sequential":
        raise FieldError(f"{prefix}cores", "sequential takes no cores")
    try:
        build_method(settings.method, steps=settings.steps, stop=settings.stop, **budget)
    except HastenError as err:
        raise FieldError(f"{prefix}{_blame(str(err))}", str(err)) from None
    try:
        parse_cache_spec(settings.cache)
    except HastenError as err:
        raise FieldError(f"{prefix}cache", str(err)) from None


def _blame(message: str) -> str:
    """Which setting a method-building error is about."""
    for word in ("stop", "cores", "steps"):
        if word in message:
            return word
    return "method"


def method_cores(settings: RunSettings) -> dict:
    """The method's per-round budget as the assembler takes it (``cores``), or nothing."""
    if settings.cores is None or settings.method not in BUDGET_OPTION:
        return {}
    return {"cores": settings.cores}


def batch_key(settings: RunSettings, size: tuple[int, int]) -> tuple | None:
    """Requests with equal keys may share one batched run; None for a run that must run alone.

    A batch runs every request exactly as alone only where the method's rounds,
    the stop rule and the cache's schedule do not depend on the data (no
    convergence test, residual stop or adaptive cache) and no per-step noise is drawn.
    """
    cache = parse_cache_spec(settings.cache)
    adaptive = cache is not None and cache.tol is not None
    if (settings.method not in BATCHABLE_METHODS or Stop.parse(settings.stop).kind == "residual" or adaptive
            or settings.solver in NOISY_SOLVERS):
        return None
    return (settings, size)


def exact(settings: RunSettings, core: int) -> bool:
    """Whether a hit of ``core`` is the sequential sampler's own result (CHORDS' slowest core, sequential's one)."""
    if parse_cache_spec(settings.cache) is not None:
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
             executor: str = "batched"):
    """The run of ``rows`` (one request, or a batch of compatible ones) on the served model: a Setup.

    One request: its model view and :func:`~hasten.assembly.prepare`, as
    ``hasten.sample`` builds it. A batch: each request's own initial noise,
    concatenated, and :func:`~hasten.assembly.assemble` on one model view
    carrying every sample's prompt.
    """
    options = dict(stop=settings.stop, cache=make_cache(settings.cache), executor=executor,
                   **method_cores(settings))
    prompts = [r.prompt for r in rows for _ in range(r.n)]
    total = len(prompts)
    view = served.view(model_call(settings, prompts, size, served.takes_size), total, rows[0].seed)
    if len(rows) == 1:
        return prepare(view, settings.method, settings.steps, rows[0].seed, rows[0].n, solver=settings.solver,
                       **options)
    if served.is_pipeline:
        raise HastenError("pipeline requests run one at a time (their latents come from the pipeline's own call)")
    x = torch.cat([initial_noise(served.model, r.n, r.seed) for r in rows])
    grid = model_grid(view, settings.steps)
    denoiser = view.denoiser(grid)
    x = x.to(denoiser_device(denoiser))
    step = model_step(view, grid, settings.solver, x, rows[0].seed)
    setup = assemble(settings.method, x, step, denoiser, **options)
    setup.model = view
    return setup


def row_slices(rows: list[Rows]) -> list[slice]:
    """Each request's rows in its run's batch."""
    out, start = [], 0
    for r in rows:
        out.append(slice(start, start + r.n))
        start += r.n
    return out


def settings_from_dict(data: dict) -> RunSettings:
    """A :class:`RunSettings` back from :meth:`RunSettings.to_dict` (how rank 0 tells the other ranks)."""
    return RunSettings(**data)
