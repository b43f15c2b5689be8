"""The Python API: ``hasten.sample`` and ``hasten.stream`` over embedded models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from hasten.caches import ABCache, CacheConfig, make_cache
from hasten.engine import HitStream, Result, iterate
from hasten.errors import HastenError
from hasten.denoise import compile_network, denoiser_device
from hasten.devices import resolve_device
from hasten.executors import EXECUTORS, make_executor
from hasten.executors.base import Executor
from hasten.executors.distributed import init_distributed
from hasten.methods import Hit, Method, make_method
from hasten.models import EmbeddedModel
from hasten.steps import NOISY_SOLVERS, Step, make_step
from hasten.stopping import Stop


def initial_noise(model: EmbeddedModel, batch: int, seed: int) -> torch.Tensor:
    """Standard normal noise (batch, *latent_shape) from ``torch.Generator().manual_seed(seed)``."""
    if not isinstance(batch, int) or batch < 1:
        raise HastenError(f"batch must be an integer >= 1, got {batch!r}")
    try:
        return torch.randn((batch, *model.latent_shape), generator=torch.Generator().manual_seed(seed))
    except RuntimeError as err:  # the host cannot hold even the initial latents
        size = batch * 4
        for n in model.latent_shape:
            size *= n
        raise HastenError(f"batch={batch}: the initial latents alone need {size / 2**30:.1f} GiB, more than this "
                          f"machine can allocate ({str(err).splitlines()[0][:80]})") from None


@dataclass
class Setup:
    """Everything a run needs, validated: built by :func:`prepare` before any model call."""

    model: EmbeddedModel
    method: Method
    x: torch.Tensor
    step: Step
    executor: Executor
    stop: Stop
    cache: ABCache | None = None


def model_latents(model, batch: int, seed: int) -> torch.Tensor:
    """The model's own initial latents where it has them (pipelines), else standard normal noise."""
    if hasattr(model, "initial_latents"):
        return model.initial_latents(batch, seed)
    return initial_noise(model, batch, seed)


def model_step(model, grid, solver: str | None, x: torch.Tensor, seed: int) -> Step:
    """The model's own step where it dictates one (a pipeline's scheduler), else ``make_step``."""
    if hasattr(model, "step"):
        return model.step(grid, solver)
    return make_step(grid, solver, draw_noise(x, grid.steps, solver, seed))


def draw_noise(x: torch.Tensor, steps: int, solver: str | None, seed: int) -> torch.Tensor | None:
    """The per-step noise of ddpm or euler-stochastic (steps, *x.shape), drawn once before sampling; None for ODE solvers.

    Drawn on the CPU from a generator seeded ``seed + 1`` (the initial noise is the same for every
    solver and device), then moved to the latents' device.
    """
    if solver not in NOISY_SOLVERS:
        return None
    return torch.randn((steps, *x.shape), generator=torch.Generator().manual_seed(seed + 1)).to(x.device)


def prepare(model, method, steps, seed, batch, stop=None, solver=None, cores=None, cache=None,
            executor: str = "batched", device=None, dtype=None, max_batch: int | None = None,
            compile: str | None = None, call: dict | None = None, local_files_only: bool = False,
            **options) -> Setup:
    """Validate the arguments and build the run's pieces (used by the API and the CLI).

    ``executor``: ``"batched"`` (one forward per round on this process) or
    ``"distributed"`` (the round spread over the torch.distributed ranks of the
    current process group; every rank calls this with the same arguments).
    ``device``/``dtype``: where the model runs and in which dtype (see
    :mod:`hasten.devices`; an already built model keeps its own). Latents are
    drawn on the CPU from ``seed`` and moved to the device, so every device and
    executor starts from the same noise.
    """
    if executor not in EXECUTORS:
        raise HastenError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    cache = make_cache(cache)
    if isinstance(model, str):
        from hasten.integrations.model import open_model

        dev = resolve_device(device) if executor != "distributed" else init_distributed(device=device)
        model = open_model(model, dev, dtype, batch, seed, call, local_files_only)
    if isinstance(method, str):
        method = make_method(method, cores=cores, **options)
    elif cores is not None or any(v is not None for v in options.values()):
        raise HastenError("method options go into the method object when a method object is given")
    if not isinstance(steps, int) or steps < 1:
        raise HastenError(f"steps must be an integer >= 1, got {steps!r}")
    stop = Stop.parse(stop)
    method.validate(steps)
    stop.check_cores(method.hit_tracks(steps))
    if executor == "distributed" and hasattr(model, "adapter"):  # a pipeline: encode prompts on rank 0 only
        model.adapter.broadcast_conditioning = True
    try:
        grid = model.grid(steps)
    except ValueError as err:  # e.g. a scheduler refusing more steps than it was trained with
        raise HastenError(f"steps={steps}: {err}") from None
    x = model_latents(model, batch, seed)  # after the grid: a pipeline's latents come from that same call
    denoiser = model.denoiser(grid)
    x = x.to(denoiser_device(denoiser))
    step = model_step(model, grid, solver, x, seed)
    if compile is not None:
        compile_network(getattr(model, "network", None), compile)
    width = method.max_width(steps)
    runner = make_executor(denoiser, executor, max_batch, compile is not None,
                           None if width is None else width * x.shape[0])
    return Setup(model, method, x, step, runner, stop, cache)


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
