"""The Python API: ``hasten.sample`` and ``hasten.stream`` over embedded models, pipeline folders and model ids.

Runs are built by :func:`hasten.assembly.prepare`, the one assembler every surface uses.
"""

from __future__ import annotations

from typing import Callable

import torch

from hasten.assembly import prepare
from hasten.caches import CacheConfig
from hasten.engine import HitStream, Result, iterate
from hasten.methods import Method
from hasten.models import EmbeddedModel
from hasten.rounds import Hit
from hasten.stopping import Stop

__all__ = ["prepare", "sample", "stream"]


def sample(
    model: str | EmbeddedModel = "gmm",
    method: str | Method = "sequential",
    *,
    steps: int = 50,
    seed: int = 0,
    batch: int = 1,
    stop: str | Stop | None = None,
    on_hit: Callable[[Hit], None] | None = None,
    solver: str | None = None,
    cores: int | None = None,
    cache: str | CacheConfig | None = None,
    executor: str = "batched",
    progress: bool = False,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    max_batch: int | None = None,
    compile: str | None = None,
    call: dict | None = None,
    local_files_only: bool = False,
    **options,
) -> Result:
    """Sample ``batch`` latents from an embedded model with a method.

    Example::

        result = hasten.sample("digits", "chords", cores=8, steps=50, stop="first")
        result.x, result.rounds, result.speedup

    ``on_hit`` receives every hit (CHORDS core landing) while sampling runs.
    ``cores`` and ``options`` (``init``, ``speedup``, ``window``, ``tol``, ``rho``,
    ...) configure a method given by name (see ``hasten.methods.OPTIONS``);
    ``solver`` is ``ddim``, ``ddpm`` or ``euler``. ``cache`` is a
    :class:`hasten.caches.CacheConfig` or a spec (``"abcache:2:interval=3"``,
    ``"reuse"``); it works with every method.

    ``device`` (default: cuda when available, else cpu; ``cuda:LOCAL_RANK`` under
    torchrun) and ``dtype`` (default float32; e.g. ``"bfloat16"``) place the
    model; ``max_batch`` bounds the network rows of one forward; ``compile``
    names a ``torch.compile`` backend (``"inductor"``) and pads every forward to
    one size so one graph serves the run.

    ``model`` may also be a diffusers pipeline folder, a Hugging Face model id
    or ``random:NAME``, called with ``call`` (``{"prompt": "a cat", "height": 512}``),
    as on the command line.
    """
    hits = stream(model, method, steps=steps, seed=seed, batch=batch, stop=stop, solver=solver, cores=cores,
                  cache=cache, executor=executor, progress=progress, device=device, dtype=dtype,
                  max_batch=max_batch, compile=compile, call=call, local_files_only=local_files_only, **options)
    for hit in hits:
        if on_hit is not None:
            on_hit(hit)
    return hits.result


def stream(
    model: str | EmbeddedModel = "gmm",
    method: str | Method = "chords",
    *,
    steps: int = 50,
    seed: int = 0,
    batch: int = 1,
    stop: str | Stop | None = None,
    solver: str | None = None,
    cores: int | None = None,
    cache: str | CacheConfig | None = None,
    executor: str = "batched",
    progress: bool = False,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    max_batch: int | None = None,
    compile: str | None = None,
    call: dict | None = None,
    local_files_only: bool = False,
    **options,
) -> HitStream:
    """Iterate over hits as they land; the stream's ``.result`` is set when it ends.

    Validation happens here, before the first round.
    """
    s = prepare(model, method, steps, seed, batch, stop, solver, cores, cache, executor, device, dtype, max_batch,
                compile, call, local_files_only, **options)
    return HitStream(iterate(s.method, s.x, s.step, s.executor, s.stop, progress, s.cache))
