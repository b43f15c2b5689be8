"""What a server serves and how: one frozen :class:`ServeConfig`, checked whole before any model loads.

It holds the run description (the model spec, the base call, a
:class:`~hasten.spec.Sampling` and a :class:`~hasten.spec.Placement`: a
request's defaults) and the server's own settings (limits, queue, batching,
previews, auth, timeouts, address). ``hasten serve`` builds it from its flags,
a Ray Serve replica from the same object (:mod:`hasten.serve.ray`), and
:meth:`ServeConfig.from_dict` reads its flat form, one key per flag
(``steps``, ``max_batch``, ``request_timeout``, ...), where values may be text
(``serve run hasten.serve.ray:app steps=20``). Errors name the key; the CLI
rewrites keys into its flags.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from hasten.checks import check_int, check_positive
from hasten.errors import HastenError
from hasten.methods import METHODS
from hasten.serve.previews import PREVIEWS
from hasten.spec import Placement, Sampling

DEFAULT_MODEL = "digits-cond"
#: the base call's keys (``size`` sets width and height, ``frames`` sets num_frames)
CALL_KEYS = ("width", "height", "num_frames")


def _default_sampling() -> Sampling:
    return Sampling("chords", stop="none")  # every core lands: the last preview is the sequential result


@dataclass(frozen=True)
class ServeConfig:
    """A server's run description and settings; validated when built."""

    model: str = DEFAULT_MODEL
    sampling: Sampling = field(default_factory=_default_sampling)
    placement: Placement = field(default_factory=Placement)
    call: Mapping[str, int] = field(default_factory=dict)
    guidance_scale: float | None = None
    local_files_only: bool = False
    methods: tuple[str, ...] = METHODS
    preview: str = "full"
    queue: int = 16
    max_batch: int = 8
    max_n: int = 4
    max_size: int = 1024
    max_steps: int | None = None
    max_cores: int = 16
    max_prompt: int = 1000
    max_seed: int = 2**32 - 1
    request_timeout: float = 300.0
    start_timeout: float = 600.0
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = field(default=None, repr=False)
    #: LoRA adapters to preload, as (name, path, scale); a request picks one by name (``hasten.lora``)
    loras: tuple[tuple[str, str, float], ...] = ()

    #: the flat form's keys that are the server's own (the others are the Sampling's, the Placement's and the call's)
    OWN = ("model", "guidance_scale", "local_files_only", "methods", "preview", "queue", "max_batch", "max_n",
           "max_size", "max_steps", "max_cores", "max_prompt", "max_seed", "request_timeout", "start_timeout", "host",
           "port", "api_key", "loras")
    #: the Placement keys a server takes (rows per forward and torch.compile are not served)
    PLACEMENT = ("executor", "device", "dtype", "backend", "timeout", "context_parallel")

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise HastenError(f"model must name a model, got {self.model!r}")
        if not isinstance(self.sampling, Sampling) or self.sampling.steps is None:
            raise HastenError("sampling must be a hasten.spec.Sampling with its steps")
        if not isinstance(self.placement, Placement):
            raise HastenError("placement must be a hasten.spec.Placement")
        call = dict(self.call or {})
        for key, value in call.items():
            if key not in CALL_KEYS:
                raise HastenError(f"call takes {', '.join(CALL_KEYS)} only, got {key!r}")
            check_int("frames" if key == "num_frames" else "size", value, 1)
        object.__setattr__(self, "call", call)
        if self.guidance_scale is not None and (isinstance(self.guidance_scale, bool) or not isinstance(
                self.guidance_scale, (int, float)) or not 1 <= self.guidance_scale < math.inf):
            raise HastenError(f"guidance_scale must be a finite number >= 1, got {self.guidance_scale}")
        methods = tuple(self.methods)
        unknown = [m for m in methods if m not in METHODS]
        if not methods or unknown:
            raise HastenError(f"methods must list methods among {', '.join(METHODS)}, got "
                              f"{unknown[0] if unknown else 'none'!r}")
        if self.sampling.name not in methods:
            raise HastenError(f"methods must include the default method {self.sampling.name}, got {','.join(methods)}")
        object.__setattr__(self, "methods", methods)
        if self.preview not in PREVIEWS:
            raise HastenError(f"preview must be one of {', '.join(PREVIEWS)}, got {self.preview!r}")
        for key, low in (("queue", 0), ("max_batch", 1), ("max_n", 1), ("max_size", 8), ("max_prompt", 0),
                         ("max_cores", 1), ("max_seed", 0), ("port", 0)):
            check_int(key, getattr(self, key), low, 65535 if key == "port" else None)
        check_int("max_steps", self.max_steps, 1, allow_none=True)
        if self.max_steps is not None and self.sampling.steps > self.max_steps:
            raise HastenError(f"steps {self.sampling.steps} is above max_steps {self.max_steps}")
        for key in ("request_timeout", "start_timeout"):
            check_positive(key, getattr(self, key))
        if not isinstance(self.host, str) or not self.host:
            raise HastenError(f"host must be an address, got {self.host!r}")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise HastenError("api_key must be a non-empty string")
        object.__setattr__(self, "loras", _checked_loras(self.loras))

    def defaults(self):
        """A request's default settings: the Sampling and the guidance scale (a RunSettings)."""
        from hasten.serve.runs import RunSettings

        return RunSettings(self.sampling, self.guidance_scale)

    def limits(self, model_max_steps: int | None = None):
        """The bounds on a request (a :class:`~hasten.serve.request.Limits`), capped by the model's own steps."""
        from hasten.serve.request import Limits
        from hasten.serve.runs import RunLimits

        max_steps = self.max_steps or 1000
        if model_max_steps is not None:
            max_steps = min(max_steps, model_max_steps)
        run = RunLimits(max_steps=max_steps, max_cores=self.max_cores, methods=self.methods)
        return Limits(max_n=self.max_n, max_size=self.max_size, max_prompt=self.max_prompt, max_seed=self.max_seed,
                      run=run)

    def replace(self, **changes: Any) -> "ServeConfig":
        """The same config with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ServeConfig":
        """A config from its flat form: the server's keys (:attr:`OWN`), the Sampling's, the Placement's
        (:attr:`PLACEMENT`), ``size`` (``WIDTHxHEIGHT``) and ``frames``. Text values are read as their key's type."""
        if not isinstance(data, Mapping):
            raise HastenError(f"a serve config must be a mapping of keys to values, got {type(data).__name__}")
        known = cls.OWN + Sampling.KEYS + cls.PLACEMENT + ("size", "frames")
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise HastenError(f"{unknown[0]}: unknown serve key; valid: {', '.join(known)}")
        given = {k: _typed(k, v) for k, v in data.items() if v is not None}
        sampling = Sampling(**{"method": "chords", "stop": "none", **{k: given.pop(k) for k in Sampling.KEYS
                                                                       if k in given}})
        placement = Placement(**{k: given.pop(k) for k in cls.PLACEMENT if k in given})
        call = {}
        if "size" in given:
            call["width"], call["height"] = parse_size(given.pop("size"))
        if "frames" in given:
            call["num_frames"] = given.pop("frames")
        return cls(sampling=sampling, placement=placement, call=call, **given)


#: the flat keys whose text is read as a number, a flag or a list
INTS = ("cores", "steps", "frames", "queue", "max_batch", "max_n", "max_size", "max_steps", "max_cores", "max_prompt",
        "max_seed", "port")
FLOATS = ("guidance_scale", "timeout", "request_timeout", "start_timeout")


def _typed(key: str, value: Any) -> Any:
    """``value`` as ``key``'s type where it is text (a Ray Serve ``key=value`` argument); other values as given."""
    if key == "methods":
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return tuple(value) if isinstance(value, (list, tuple)) else value
    if not isinstance(value, str):
        return value
    try:
        if key in INTS:
            return int(value)
        if key in FLOATS:
            return float(value)
    except ValueError:
        raise HastenError(f"{key} must be a number, got {value!r}") from None
    if key == "local_files_only":
        if value.lower() not in ("true", "false", "1", "0"):
            raise HastenError(f"local_files_only must be true or false, got {value!r}")
        return value.lower() in ("true", "1")
    return value


def _checked_loras(loras: Any) -> tuple[tuple[str, str, float], ...]:
    """``loras`` as (name, path, scale) triples with distinct names; ``NAME=PATH[:SCALE]`` text is parsed."""
    from hasten.integrations.lora import parse_named_lora

    if isinstance(loras, str):
        loras = [v for v in loras.split(",") if v.strip()]
    if not isinstance(loras, (list, tuple)):
        raise HastenError(f"loras must be a list of NAME=PATH[:SCALE], got {type(loras).__name__}")
    triples = []
    for item in loras:
        if isinstance(item, str):
            item = parse_named_lora(item.strip(), "loras")
        if not (isinstance(item, (list, tuple)) and len(item) == 3 and all(isinstance(v, str) for v in item[:2])
                and isinstance(item[2], (int, float)) and not isinstance(item[2], bool)):
            raise HastenError(f"loras: each adapter is NAME=PATH[:SCALE] or (name, path, scale), got {item!r}")
        triples.append((item[0], item[1], float(item[2])))
    names = [name for name, _, _ in triples]
    if len(set(names)) != len(names):
        raise HastenError("loras: each adapter needs its own NAME")
    return tuple(triples)


def parse_size(text: Any) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` as (width, height)."""
    width, sep, height = str(text).partition("x")
    if not (sep and width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise HastenError(f"size must be WIDTHxHEIGHT, e.g. 512x512; got {text!r}")
    return int(width), int(height)
