"""The Python API: ``hasten.sample`` and ``hasten.stream`` over embedded models, pipeline folders and model ids.

Both build one :class:`~hasten.spec.RunSpec` from their keywords (or take one,
or read one from a config file) and run it through the one session
(:mod:`hasten.session`).
"""

from __future__ import annotations

from typing import Any, Callable

from hasten.config import merge_config
from hasten.engine import HitStream, Result
from hasten.errors import HastenError
from hasten.methods import Method
from hasten.rounds import Hit
from hasten.session import run_spec
from hasten.spec import RunSpec

__all__ = ["sample", "stream"]

SETTINGS_DOC = """
    Settings (any key of a run description, :class:`hasten.spec.RunSpec`):
    ``steps`` (50), ``seed`` (0), ``batch`` (1), ``stop`` (``first`` for CHORDS,
    else ``none``), ``solver`` (``ddim``, ``ddpm``, ``euler``, ...), ``cores``
    (each method's per-round budget), ``cache`` (``"abcache:2:interval=3"``, a
    :class:`hasten.caches.CacheConfig`), ``executor`` (``batched`` or
    ``distributed``), ``device`` (cuda when available, else cpu; ``cuda:LOCAL_RANK``
    under torchrun), ``dtype``, ``max_batch`` (network rows of one forward),
    ``compile`` (a ``torch.compile`` backend; every forward padded to one size),
    ``call`` (a pipeline's call: ``{"prompt": "a cat", "height": 512}``),
    ``local_files_only``; ``config``: a file written by ``hasten tune`` under
    these keywords. Any other keyword is an option of the method (``init``,
    ``speedup``, ``window``, ``tol``, ``rho``, ... see ``hasten.methods.OPTIONS``).
"""


def _spec(model: Any, method: "str | Method | None", default: str, settings: dict) -> RunSpec:
    """The run: ``model`` itself when it is a RunSpec (with ``method`` and ``settings`` applied), else built
    (under a ``config`` file's run where one is given)."""
    config = settings.pop("config", None)
    if config is not None and not isinstance(model, RunSpec):
        own = {k: settings.pop(k) for k in list(settings) if k in RunSpec.KEYS}
        options = {**(own.pop("options", None) or {}), **settings}
        return merge_config(config, model=model, method=method, options=options or None, **own)
    if config is not None:
        raise HastenError("config applies when the run is built from keywords; a RunSpec is a whole run already "
                          "(read a file's run with hasten.config.merge_config)")
    if isinstance(model, RunSpec):
        keys = {k: settings.pop(k) for k in list(settings) if k in RunSpec.KEYS}
        if settings:  # method options, added to the spec's own
            keys["options"] = {**model.sampling.options, **keys.get("options", {}), **settings}
        return model.replace(**({} if method is None else {"method": method}), **keys)
    return RunSpec.build(model, default if method is None else method, **settings)


def sample(model: Any = "gmm", method: "str | Method | None" = None, *,
           on_hit: Callable[[Hit], None] | None = None, progress: bool = False, **settings: Any) -> Result:
    """Sample ``batch`` latents with a method (default sequential); ``model`` is a spec, an opened model or a RunSpec.

    Example::

        result = hasten.sample("digits", "chords", cores=8, steps=50, stop="first")
        result.x, result.rounds, result.speedup

    ``on_hit`` receives every hit (CHORDS core landing) while sampling runs.
    """
    return run_spec(_spec(model, method, "sequential", settings)).sample(on_hit, progress)


def stream(model: Any = "gmm", method: "str | Method | None" = None, *, progress: bool = False,
           **settings: Any) -> HitStream:
    """Iterate over hits as they land; the stream's ``.result`` is set when it ends.

    Takes what :func:`sample` takes (the method defaults to chords). The run is validated and opened here,
    before the first round.
    """
    return run_spec(_spec(model, method, "chords", settings)).stream(progress)


sample.__doc__ += SETTINGS_DOC
stream.__doc__ += SETTINGS_DOC
