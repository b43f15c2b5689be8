"""The one assembler: every run is built here, whoever asks for it.

``hasten.sample`` / ``hasten.stream`` and the CLI (through :func:`prepare`),
``hasten.accelerate`` (a pipeline call at a time, through :func:`assemble`),
``hasten bench`` and ``hasten tune`` all get their method, stop rule, cache and
executor from :func:`assemble`, which validates the method once, before any
model call. :func:`join` places this process (its own rank's device under the
distributed executor) and :func:`share_conditioning` makes rank 0 alone encode
prompts for a distributed pipeline run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from hasten.caches import Cache, CacheConfig, make_cache
from hasten.denoise import compile_network, denoiser_device
from hasten.errors import HastenError
from hasten.executors import EXECUTORS, make_executor
from hasten.executors.base import Executor
from hasten.methods import Method, make_method
from hasten.steps import NOISY_SOLVERS, Step, make_step
from hasten.stopping import Stop


def default_stop(method: "str | Method") -> str:
    """The stop rule a surface uses when none is given: CHORDS streams to its first hit, the rest run to the end."""
    name = method if isinstance(method, str) else getattr(method, "name", "")
    return "first" if name == "chords" else "none"


def check_executor(executor: str) -> None:
    if executor not in EXECUTORS:
        raise HastenError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")


def join(executor: str, device: "str | torch.device | None" = None, **distributed: Any) -> torch.device:
    """This process's device; under the distributed executor, after joining torchrun's process group.

    ``distributed``: ``backend`` and ``timeout_s`` for :func:`hasten.executors.distributed.init_distributed`.
    """
    check_executor(executor)
    if executor == "distributed":
        from hasten.executors.distributed import init_distributed

        return init_distributed(device=device, **distributed)
    from hasten.devices import resolve_device

    return resolve_device(device)


def share_conditioning(holder, executor: str) -> None:
    """A pipeline run on many ranks encodes its prompts on rank 0 alone and broadcasts them.

    ``holder``: a pipeline model (with ``.adapter``) or an adapter; embedded models have no prompts.
    """
    adapter = getattr(holder, "adapter", holder)
    if hasattr(adapter, "broadcast_conditioning"):
        adapter.broadcast_conditioning = executor == "distributed"


def build_method(method: "str | Method", cores: int | None = None, options: dict | None = None,
                 steps: int | None = None, stop: "str | Stop | None" = None) -> tuple[Method, Stop]:
    """The method (by name, or an object as given) and the stop rule, validated for ``steps`` when known."""
    options = {k: v for k, v in (options or {}).items() if v is not None}
    if isinstance(method, str):
        method = make_method(method, cores=cores, **options)
    elif cores is not None or options:
        raise HastenError("method options go into the method object when a method object is given")
    stop = Stop.parse(stop)
    if steps is not None:
        method.validate(_checked_steps(steps))
        stop.check_cores(method.hit_tracks(steps))
    return method, stop


def build_executor(denoiser, kind: str, method: Method, steps: int, batch: int, max_batch: int | None = None,
                   compiled: bool = False) -> Executor:
    """The executor of a run; a compiled network pads every forward to the method's widest round."""
    check_executor(kind)
    width = method.max_width(steps)
    return make_executor(denoiser, kind, max_batch, compiled, None if width is None else width * batch)


@dataclass
class Setup:
    """Everything a run needs, validated: built by :func:`assemble` before any model call."""

    method: Method
    x: torch.Tensor
    step: Step
    executor: Executor
    stop: Stop
    cache: Cache | None = None
    model: Any = None


def assemble(method: "str | Method", x: torch.Tensor, step: Step, denoiser, *, stop: "str | Stop | None" = None,
             cache: "str | CacheConfig | Cache | None" = None, executor: str = "batched", cores: int | None = None,
             max_batch: int | None = None, compiled: bool = False, model: Any = None, **options: Any) -> Setup:
    """A run from its latents, step and denoiser: method and stop validated once, cache, executor."""
    method, stop = build_method(method, cores, options, step.grid.steps, stop)
    return _complete(method, stop, x, step, denoiser, cache, executor, max_batch, compiled, model)


def _complete(method: Method, stop: Stop, x: torch.Tensor, step: Step, denoiser, cache, executor: str,
              max_batch: int | None, compiled: bool, model: Any) -> Setup:
    """The rest of a run around a validated method: its cache and executor."""
    runner = build_executor(denoiser, executor, method, step.grid.steps, x.shape[0], max_batch, compiled)
    return Setup(method, x, step, runner, stop, make_cache(cache), model)


def initial_noise(model, batch: int, seed: int) -> torch.Tensor:
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


def model_latents(model, batch: int, seed: int) -> torch.Tensor:
    """The model's own initial latents where it has them (pipelines), else standard normal noise."""
    if hasattr(model, "initial_latents"):
        return model.initial_latents(batch, seed)
    return initial_noise(model, batch, seed)


def draw_noise(x: torch.Tensor, steps: int, solver: str | None, seed: int) -> torch.Tensor | None:
    """The per-step noise of ddpm or euler-stochastic (steps, *x.shape), drawn once before sampling; None for ODE solvers.

    Drawn on the CPU from a generator seeded ``seed + 1`` (the initial noise is the same for every
    solver and device), then moved to the latents' device.
    """
    if solver not in NOISY_SOLVERS:
        return None
    return torch.randn((steps, *x.shape), generator=torch.Generator().manual_seed(seed + 1)).to(x.device)


def model_step(model, grid, solver: str | None, x: torch.Tensor, seed: int) -> Step:
    """The model's own step where it dictates one (a pipeline's scheduler), else ``make_step``."""
    if hasattr(model, "step"):
        return model.step(grid, solver)
    return make_step(grid, solver, draw_noise(x, grid.steps, solver, seed))


def _checked_steps(steps: int) -> int:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise HastenError(f"steps must be an integer >= 1, got {steps!r}")
    return steps


def model_grid(model, steps: int):
    """The model's grid for ``steps`` steps (a scheduler's refusal becomes a HastenError)."""
    try:
        return model.grid(steps)
    except ValueError as err:  # e.g. a scheduler refusing more steps than it was trained with
        raise HastenError(f"steps={steps}: {err}") from None


def prepare(model, method, steps, seed, batch, stop=None, solver=None, cores=None, cache=None,
            executor: str = "batched", device=None, dtype=None, max_batch: int | None = None,
            compile: str | None = None, call: dict | None = None, local_files_only: bool = False,
            **options) -> Setup:
    """Open the model and assemble a run on it (the API's and the CLI's path).

    ``model``: an embedded model or pipeline model, or a spec (embedded name, pipeline
    folder, model id, ``random:NAME``). ``executor``: ``"batched"`` (one forward per
    round on this process) or ``"distributed"`` (the round spread over the
    torch.distributed ranks of the current process group; every rank calls this with
    the same arguments). ``device``/``dtype``: where the model runs and in which dtype
    (see :mod:`hasten.devices`; an already built model keeps its own). Latents are drawn
    on the CPU from ``seed`` and moved to the device, so every device and executor
    starts from the same noise. Method, stop and cache are validated before the model opens.
    """
    check_executor(executor)
    cache = make_cache(cache)
    method, stop = build_method(method, cores, options, _checked_steps(steps), stop)
    if isinstance(model, str):
        from hasten.integrations.model import open_model

        model = open_model(model, join(executor, device), dtype, batch, seed, call, local_files_only)
    share_conditioning(model, executor)
    grid = model_grid(model, steps)
    x = model_latents(model, batch, seed)  # after the grid: a pipeline's latents come from that same call
    denoiser = model.denoiser(grid)
    x = x.to(denoiser_device(denoiser))
    step = model_step(model, grid, solver, x, seed)
    if compile is not None:
        compile_network(getattr(model, "network", None), compile)
    return _complete(method, stop, x, step, denoiser, cache, executor, max_batch, compile is not None, model)
