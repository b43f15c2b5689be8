"""The run description: one validated shape of a run, built by every surface.

``hasten.sample`` / ``hasten.stream``, the CLI (``sample``, ``bench``, ``tune``,
``serve``), ``hasten.accelerate``, ``--config`` files and serve requests all
describe a run with these objects, and each object checks itself once, when
it is built, before any model is opened. Composed like diffrax's solve, from
small frozen pieces:

* :class:`Sampling`: *what* is computed: method and its options, steps,
  solver, stop rule, cache.
* :class:`Placement`: *where*: executor, device, dtype, rows per forward,
  ``torch.compile``, process-group backend and timeout.
* :class:`RunSpec`: a model, a Sampling, a Placement, the pipeline call
  (prompt, size, ...), seed and batch.

Their dict form is flat, one key per command-line flag (``method``, ``cores``,
``options``, ``steps``, ``solver``, ``stop``, ``cache``, ``executor``, ...,
``model``, ``call``, ``seed``, ``batch``): :meth:`RunSpec.to_dict` writes it,
:meth:`RunSpec.from_dict` reads it, and config files (:mod:`hasten.config`),
reports (``Result.summary()["run"]``) and serve requests speak a subset of it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from hasten.caches import CacheConfig, parse_cache_spec
from hasten.checks import check_finite, check_int, check_nonempty
from hasten.errors import HastenError
from hasten.methods import BUDGET_OPTION, METHODS, Method, parse_method_spec
from hasten.stopping import Stop

#: the largest seed: the per-step noise of ddpm is drawn from ``seed + 1``, and torch takes seeds below 2**64
MAX_SEED = 2**63 - 1
#: pipeline call keys with a value check here (the pipeline's adapter checks the rest and refuses unknown ones)
CALL_SIZES = ("height", "width", "num_frames")


def default_stop(method: "str | Method") -> str:
    """The stop rule when none is given: CHORDS streams to its first hit, the rest run to the end."""
    name = method if isinstance(method, str) else getattr(method, "name", "")
    return "first" if name == "chords" else "none"


@dataclass(frozen=True)
class Sampling:
    """What a run computes: ``method`` with its ``options``, on ``steps`` steps of ``solver``, to ``stop``, with ``cache``.

    ``method`` is a name, a spec with options (``"paradigms:window=8:tol=0.05"``)
    or a method object. ``cores`` is the per-round budget, which each method
    names its own way (:data:`hasten.methods.BUDGET_OPTION`); a spec or an
    option naming it (``chords:cores=8``, ``paradigms:window=8``) sets ``cores``,
    so ``options`` never holds it. ``stop`` defaults per method
    (:func:`default_stop`); ``cache`` is a spec (``"abcache:2:interval=3"``), a
    :class:`~hasten.caches.CacheConfig` or None. ``steps=None`` leaves the step
    count to each call (``hasten.accelerate``): checks that need it run then.
    """

    method: "str | Method" = "chords"
    cores: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    steps: int | None = 50
    solver: str | None = None
    stop: str | None = None
    cache: "str | CacheConfig | None" = None
    _validated: Any = field(default=None, init=False, repr=False, compare=False)  # the method object checked for steps

    #: the keys of the dict form
    KEYS = ("method", "cores", "options", "steps", "solver", "stop", "cache")

    def __post_init__(self) -> None:
        from hasten.steps import SOLVERS

        method, options = self.method, dict(self.options or {})
        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            raise HastenError(f"options must be a mapping of option names to values, got {self.options!r}")
        options = {k: v for k, v in options.items() if v is not None}
        check_int("cores", self.cores, 1, allow_none=True)
        if isinstance(method, str):
            if not method.strip():
                raise HastenError(f"method must name one of {', '.join(METHODS)}, got an empty string")
            name, from_spec = parse_method_spec(method)
            for key, value in from_spec.items():
                if key in options and options[key] != value:
                    raise HastenError(f"method {method!r} sets {key}={value} and the options set {key}="
                                      f"{options[key]}; give it once")
                options[key] = value
            method = name
            budget = BUDGET_OPTION.get(name)
            cores = self.cores
            if budget in options:  # the budget by its own name: it is the cores
                value = options.pop(budget)
                if cores is not None and cores != value:
                    raise HastenError(f"{name} takes its per-round budget as {budget}: {budget}={value} and "
                                      f"cores={cores} disagree; give it once")
                cores = value
            object.__setattr__(self, "cores", cores)
        elif not hasattr(method, "solve"):
            raise HastenError(f"method must be a name ({', '.join(METHODS)}) or a method object, got {method!r}")
        elif self.cores is not None or options:
            raise HastenError("method options go into the method object when a method object is given")
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "options", options)
        if self.steps is not None:
            check_int("steps", self.steps, 1)
        if self.solver is not None and self.solver not in SOLVERS:
            raise HastenError(f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        stop = Stop.parse(default_stop(method) if self.stop is None else self.stop)
        object.__setattr__(self, "stop", str(stop))
        cache = self.cache
        if isinstance(cache, str):
            cache = parse_cache_spec(check_nonempty("cache", cache))
        elif cache is not None and not isinstance(cache, CacheConfig):
            raise HastenError(f"cache must be a spec such as 'abcache:2:interval=3', a CacheConfig or None, got "
                              f"{cache!r}")
        object.__setattr__(self, "cache", cache)
        # the method's own checks (its declared options), and with the steps those that need them: cores
        # against steps, init, stop core:K
        object.__setattr__(self, "_validated", self.build()[0])

    @property
    def name(self) -> str:
        """The method's name."""
        return self.method if isinstance(self.method, str) else getattr(self.method, "name", "")

    def build(self, steps: int | None = None) -> tuple[Method, Stop]:
        """A fresh method object and the stop rule, validated for ``steps`` (default: this run's)."""
        from hasten.methods import make_method

        steps = self.steps if steps is None else steps
        if self._validated is not None and steps == self.steps:
            return self._validated, Stop.parse(self.stop)  # checked when this sampling was built
        method = make_method(self.method, cores=self.cores, **self.options) if isinstance(self.method, str) \
            else self.method
        stop = Stop.parse(self.stop)
        if steps is not None:
            check_int("steps", steps, 1)
            method.validate(steps)
            stop.check_cores(method.hit_tracks(steps))
        return method, stop

    def with_steps(self, steps: int) -> "Sampling":
        """The same sampling on ``steps`` steps (validated again)."""
        return dataclasses.replace(self, steps=steps)

    def merged(self, **given: Any) -> "Sampling":
        """This sampling under what a caller gave (values that are not None win).

        A ``method`` of another name drops this one's cores and options (they
        belong to the old method), unless ``cores`` / ``options`` are given too;
        given options are added to the kept ones.
        """
        unknown = sorted(set(given) - set(self.KEYS))
        if unknown:
            raise HastenError(f"unknown sampling key {unknown[0]!r}; valid: {', '.join(self.KEYS)}")
        given = {k: v for k, v in given.items() if v is not None}
        method = given.get("method", self.method)
        new_name = method.split(":")[0].strip() if isinstance(method, str) else getattr(method, "name", None)
        same = new_name == self.name and (isinstance(method, str) == isinstance(self.method, str))
        base = {"cores": self.cores, "options": dict(self.options)} if same else {"cores": None, "options": {}}
        if not same and "stop" not in given:
            given["stop"] = None  # the old method's default stop does not carry over
        options = {**base["options"], **(given.pop("options", None) or {})}
        values = {**self.to_dict(raw=True), **base, **given, "options": options, "method": method}
        return Sampling(**values)

    def to_dict(self, raw: bool = False) -> dict[str, Any]:
        """The dict form (JSON-ready: the cache as its spec); ``raw`` keeps the method and cache objects."""
        out = {key: getattr(self, key) for key in self.KEYS}
        out["options"] = dict(self.options)
        if not raw:
            if not isinstance(self.method, str):
                raise HastenError(f"method object {self.name!r} has no dict form; give the method by name")
            out["cache"] = None if self.cache is None else self.cache.spec()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "sampling") -> "Sampling":
        """A Sampling from its dict form; unknown keys are refused, naming ``where``."""
        return cls(**_pick(data, cls.KEYS, where))


@dataclass(frozen=True)
class Placement:
    """Where a run computes.

    ``executor``: ``batched`` (one forward per round here) or ``distributed``
    (each round spread over the ranks of a torchrun launch; ``backend`` gloo or
    nccl, ``timeout`` seconds any rank waits for the others). ``device``
    (``cpu``, ``cuda``, ``cuda:N``, ``mps``; None picks one) and ``dtype``
    (``float32``, ``bfloat16``, ``float16``; None: float32 on the CPU, the
    checkpoint's own on a GPU) place the network. ``max_batch`` bounds the
    network rows of one forward; ``compile`` names a ``torch.compile`` backend.
    ``context_parallel`` (distributed only: ``ulysses=C``, ``ring=C``,
    ``ulysses=2:ring=2``) makes groups of C ranks share each forward through
    diffusers' context parallelism (:mod:`hasten.executors.context`).
    """

    executor: str = "batched"
    device: str | None = None
    dtype: str | None = None
    max_batch: int | None = None
    compile: str | None = None
    backend: str | None = None
    timeout: float = 30.0
    context_parallel: str | None = None

    KEYS = ("executor", "device", "dtype", "max_batch", "compile", "backend", "timeout", "context_parallel")

    def __post_init__(self) -> None:
        from hasten.devices import parse_dtype
        from hasten.executors import EXECUTORS

        if self.executor not in EXECUTORS:
            raise HastenError(f"executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if self.device is not None:
            device = str(self.device)
            try:
                torch.device(device)
            except (RuntimeError, TypeError):
                raise HastenError(f"device {device!r} is not a device; valid: cpu, cuda, cuda:N, mps") from None
            object.__setattr__(self, "device", device)
        if self.dtype is not None:
            object.__setattr__(self, "dtype", str(parse_dtype(self.dtype)).removeprefix("torch."))
        check_int("max_batch", self.max_batch, 1, allow_none=True)
        if self.compile is not None and (not isinstance(self.compile, str) or not self.compile.strip()):
            raise HastenError(f"compile must name a torch.compile backend such as 'inductor', got {self.compile!r}")
        if self.backend is not None:
            if self.backend not in ("gloo", "nccl"):
                raise HastenError(f"backend must be gloo or nccl, got {self.backend!r}")
            if self.executor != "distributed":
                raise HastenError("backend applies to the distributed executor only")
        check_finite("timeout", self.timeout)
        if self.timeout <= 0:
            raise HastenError(f"timeout must be a number of seconds > 0, got {self.timeout!r}")
        object.__setattr__(self, "timeout", float(self.timeout))
        if self.context_parallel is not None:
            from hasten.executors.context import parse_context_parallel

            layout = parse_context_parallel(self.context_parallel)
            if self.executor != "distributed":
                raise HastenError("context_parallel applies to the distributed executor only (executor=distributed "
                                  "under torchrun)")
            if self.compile is not None:
                raise HastenError("context_parallel does not mix with compile; leave one out")
            object.__setattr__(self, "context_parallel", layout.spec)

    @property
    def layout(self):
        """The :class:`~hasten.executors.context.ContextLayout` of ``context_parallel`` (None without one)."""
        from hasten.executors.context import parse_context_parallel

        return parse_context_parallel(self.context_parallel)

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.KEYS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "placement") -> "Placement":
        return cls(**_pick(data, cls.KEYS, where))


def _pick(data: Mapping[str, Any], keys: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise HastenError(f"{where} must be a mapping with keys {', '.join(keys)}, got {type(data).__name__}")
    unknown = [k for k in data if k not in keys]
    if unknown:
        raise HastenError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(keys)}")
    return dict(data)


def check_call(call: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline call's generic values checked (sizes, guidance, prompts); the adapter checks the rest."""
    if not isinstance(call, Mapping) or not all(isinstance(k, str) for k in call):
        raise HastenError(f"call must be a mapping of pipeline argument names to values, got {call!r}")
    call = {k: v for k, v in call.items() if v is not None}
    for key in CALL_SIZES:
        value = call.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise HastenError(f"{key} must be a positive integer, got {value!r}")
    for key in ("guidance_scale", "true_cfg_scale", "guidance_rescale"):
        if key in call:
            check_finite(key, call[key], 0.0)
    for key in ("prompt", "negative_prompt"):
        value = call.get(key)
        if value is not None and not isinstance(value, str) and not (
                isinstance(value, (list, tuple)) and all(isinstance(p, str) for p in value)):
            raise HastenError(f"{key} must be a string or a list of strings, got {type(value).__name__}")
    return call


@dataclass(frozen=True)
class RunSpec:
    """A whole run: ``model``, its :class:`Sampling`, its :class:`Placement`, the pipeline ``call``, ``seed``, ``batch``.

    ``model`` is a spec (an embedded name such as ``digits`` or
    ``gmm-flow:shape=4096x64``, a pipeline folder, a Hugging Face model id,
    ``random:NAME``) or a model already opened (then ``device`` / ``dtype``
    must be left to it). ``call`` holds a pipeline's call arguments (prompt,
    negative_prompt, guidance_scale, height, width, num_frames, ...).
    ``seed`` (0..2**63-1) seeds the initial noise on the CPU, so every device and
    executor starts from the same noise; ``batch`` samples are drawn together.

    Example::

        spec = RunSpec.build("digits", "chords", cores=8, steps=50, cache="abcache:2")
        result = hasten.sample(spec)
    """

    model: Any = "digits"
    sampling: Sampling = field(default_factory=Sampling)
    placement: Placement = field(default_factory=Placement)
    call: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    batch: int = 1
    local_files_only: bool = False

    #: keys of the flat dict form besides the Sampling's and Placement's
    OWN_KEYS = ("model", "call", "seed", "batch", "local_files_only")
    KEYS = ("model", *Sampling.KEYS, *Placement.KEYS, "call", "seed", "batch", "local_files_only")

    def __post_init__(self) -> None:
        if not isinstance(self.sampling, Sampling) or not isinstance(self.placement, Placement):
            raise HastenError("RunSpec takes a Sampling and a Placement; build one from keywords with RunSpec.build")
        if isinstance(self.model, str):
            from hasten.opening import model_source

            model_source(check_nonempty("model", self.model))  # the spec's form, before anything is loaded
        elif self.model is None or not hasattr(self.model, "grid"):
            raise HastenError(f"model must be a model spec (e.g. 'digits') or an opened model, got {self.model!r}")
        elif self.placement.device is not None or self.placement.dtype is not None or self.local_files_only:
            raise HastenError("device, dtype and local_files_only apply when the model is given by name; an opened "
                              "model keeps its own placement")
        object.__setattr__(self, "call", check_call(self.call))
        if self.placement.layout is not None:
            from hasten.opening import check_not_embedded

            check_not_embedded(self.model, self.placement.layout)
        check_int("seed", self.seed, 0, MAX_SEED)
        check_int("batch", self.batch, 1)
        if not isinstance(self.local_files_only, bool):
            raise HastenError(f"local_files_only must be True or False, got {self.local_files_only!r}")

    @classmethod
    def build(cls, model: Any = "digits", method: "str | Method | None" = None, **settings: Any) -> "RunSpec":
        """A run from keywords, as ``hasten.sample`` takes them.

        ``settings`` holds any key of the dict form (``steps``, ``seed``,
        ``batch``, ``stop``, ``cache``, ``executor``, ``device``, ``call``, ...)
        and, besides them, the method's own options (``init``, ``window``,
        ``tol``, ...). A config file's run is read by :func:`hasten.config.merge_config`.
        """
        if method is not None:
            settings["method"] = method
        own = {k: settings.pop(k) for k in list(settings) if k in cls.KEYS}
        options = {**(own.pop("options", None) or {}), **settings}
        return cls.from_dict({"model": model, **own, "options": options})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "run") -> "RunSpec":
        """A RunSpec from its flat dict form (every key optional); unknown keys are refused, naming ``where``."""
        data = _pick(data, cls.KEYS, where)
        sampling = Sampling(**{k: data.pop(k) for k in Sampling.KEYS if k in data})
        placement = Placement(**{k: data.pop(k) for k in Placement.KEYS if k in data})
        return cls(sampling=sampling, placement=placement, **data)

    def to_dict(self) -> dict[str, Any]:
        """The flat dict form (JSON-ready); an opened model is written by its name."""
        model = self.model if isinstance(self.model, str) else getattr(self.model, "name", type(self.model).__name__)
        return {"model": model, **self.sampling.to_dict(), **self.placement.to_dict(), "call": dict(self.call),
                "seed": self.seed, "batch": self.batch, "local_files_only": self.local_files_only}

    def replace(self, **changes: Any) -> "RunSpec":
        """A copy with keys of the dict form changed (validated again); sampling keys merge as :meth:`Sampling.merged`."""
        unknown = sorted(set(changes) - set(self.KEYS))
        if unknown:
            raise HastenError(f"unknown run key {unknown[0]!r}; valid: {', '.join(self.KEYS)}")
        sampling = {k: changes.pop(k) for k in Sampling.KEYS if k in changes}
        placement = {k: changes.pop(k) for k in Placement.KEYS if k in changes}
        return dataclasses.replace(
            self, sampling=self.sampling.merged(**sampling) if sampling else self.sampling,
            placement=dataclasses.replace(self.placement, **placement) if placement else self.placement, **changes)

    @property
    def steps(self) -> int:
        return self.sampling.steps
