"""The one assembler: every run is built here from its description, whoever asks for it.

:func:`prepare` turns a :class:`~hasten.spec.RunSpec` into a :class:`Setup`
(model opened, latents, step, method, stop rule, cache, executor): the path
of ``hasten.sample`` / ``hasten.stream``, the CLI and tune. :func:`assemble`
does the same around latents, a step and a denoiser that a caller already
has (``hasten.accelerate`` a pipeline call at a time, ``hasten bench`` a grid
of runs, a service's batch of requests). :func:`place` joins torchrun's
process group where the placement asks for it, and :func:`share_conditioning`
makes rank 0 alone encode prompts for a distributed pipeline run. The
method, stop rule and cache were validated when the description was built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from hasten.caches import Cache, make_cache
from hasten.denoise import compile_network, denoiser_device
from hasten.errors import HastenError
from hasten.executors import make_executor
from hasten.executors.base import Executor
from hasten.methods import Method
from hasten.spec import Placement, RunSpec, Sampling
from hasten.steps import NOISY_SOLVERS, Step, make_step
from hasten.stopping import Stop


def place(placement: Placement) -> torch.device:
    """This process's device; under the distributed executor after joining torchrun's process group.

    Each rank of a node then runs with its share of the node's threads.
    """
    if placement.executor == "distributed":
        import torch.distributed as dist

        from hasten.executors.distributed import init_distributed

        layout = placement.layout
        if layout is not None:  # refused before joining, let alone loading
            from hasten.executors.context import check_world

            check_world(layout, dist.get_world_size() if dist.is_initialized() else
                        int(os.environ.get("WORLD_SIZE", "1")))
        joining = not dist.is_initialized()
        device = init_distributed(device=placement.device, backend=placement.backend, timeout_s=placement.timeout)
        if layout is not None:
            from hasten.executors.context import layout_mesh

            layout_mesh(layout, device)  # every rank builds the mesh now, in the same order
        if joining:
            ranks_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
            torch.set_num_threads(max(1, torch.get_num_threads() // ranks_here))
        return device
    from hasten.devices import resolve_device

    return resolve_device(placement.device)


def share_conditioning(holder, executor: str) -> None:
    """A pipeline run on many ranks encodes its prompts on rank 0 alone and broadcasts them.

    ``holder``: a pipeline model (with ``.adapter``) or an adapter; embedded models have no prompts.
    """
    adapter = getattr(holder, "adapter", holder)
    if hasattr(adapter, "broadcast_conditioning"):
        adapter.broadcast_conditioning = executor == "distributed"


def build_executor(denoiser, placement: Placement, method: Method, steps: int, batch: int) -> Executor:
    """The executor of a run; a compiled network pads every forward to the method's widest round.

    With ``context_parallel`` the rows of a round are split over the time
    groups of the launch's mesh (:mod:`hasten.executors.context`).
    """
    width = method.max_width(steps)
    return make_executor(denoiser, placement.executor, placement.max_batch, placement.compile is not None,
                         None if width is None else width * batch, context=placement.layout)


def share_forward(model, placement: Placement, latents: torch.Tensor, denoiser) -> None:
    """Under ``context_parallel``: the model's networks in diffusers' context-parallel mode, the call's sequence checked.

    ``model``: a pipeline model (``.pipe``) or a pipeline. Refuses, before any
    forward, a sequence the degree cannot split.
    """
    layout = placement.layout
    if layout is None:
        return
    from hasten.executors.context import check_sequence, networks_of, prepare_network

    pipe = getattr(model, "pipe", model)
    text = getattr(denoiser, "cond", {}).get("text") if isinstance(getattr(denoiser, "cond", None), dict) else None
    for net in networks_of(pipe):
        check_sequence(net, layout, latents, None if text is None else text.shape[1])
    prepare_network(pipe, layout, denoiser_device(denoiser))


@dataclass
class Setup:
    """Everything a run needs, validated: built by :func:`prepare` or :func:`assemble` before any model call."""

    method: Method
    x: torch.Tensor
    step: Step
    executor: Executor
    stop: Stop
    cache: Cache | None = None
    model: Any = None


def assemble(sampling: Sampling, x: torch.Tensor, step: Step, denoiser, placement: Placement | None = None,
             cache: Cache | None = None, model: Any = None) -> Setup:
    """A run around latents, a step and a denoiser: the method (for the step's grid), stop rule, cache, executor.

    ``cache``: a cache object to use instead of a fresh one from ``sampling.cache``
    (``hasten.accelerate`` keeps one per wrapped pipeline).
    """
    placement = placement or Placement()
    steps = step.grid.steps
    method, stop = sampling.build(steps)
    runner = build_executor(denoiser, placement, method, steps, x.shape[0])
    return Setup(method, x, step, runner, stop, cache if cache is not None else make_cache(sampling.cache), model)


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


def model_grid(model, steps: int):
    """The model's grid for ``steps`` steps (a scheduler's refusal becomes a HastenError)."""
    try:
        return model.grid(steps)
    except ValueError as err:  # e.g. a scheduler refusing more steps than it was trained with
        if isinstance(err, HastenError):
            raise
        raise HastenError(f"steps={steps}: {err}") from None


def open_for(spec: RunSpec, model: Any = None) -> Any:
    """The model of a run: opened from the spec (placed first), or ``model`` bound to the run's call, batch and seed."""
    from hasten.opening import bind_model, open_model

    if model is None and not isinstance(spec.model, str):
        model = spec.model
    if model is not None:
        return bind_model(model, spec.call, spec.batch, spec.seed)
    if spec.placement.layout is not None:
        from hasten.executors.context import check_model_source

        check_model_source(spec.model, spec.placement.layout, spec.local_files_only)
    return open_model(spec.model, place(spec.placement), spec.placement.dtype, spec.batch, spec.seed, spec.call,
                      spec.local_files_only)


def prepare(spec: RunSpec, model: Any = None) -> Setup:
    """Open the model of ``spec`` (or take ``model``, already opened) and assemble the run on it.

    Latents are drawn on the CPU from the spec's seed and moved to the
    denoiser's device, so every device and executor starts from the same
    noise. The description was validated when it was built; the model checks
    what only it can (a pipeline's call arguments, a scheduler's step limit).
    """
    sampling, placement = spec.sampling, spec.placement
    if spec.steps is None:
        raise HastenError("a run needs steps: an integer >= 1")
    model = open_for(spec, model)
    share_conditioning(model, placement.executor)
    grid = model_grid(model, spec.steps)
    x = model_latents(model, spec.batch, spec.seed)  # after the grid: a pipeline's latents come from that same call
    denoiser = model.denoiser(grid)
    x = x.to(denoiser_device(denoiser))
    step = model_step(model, grid, sampling.solver, x, spec.seed)
    share_forward(model, placement, x, denoiser)
    if placement.compile is not None:
        compile_network(getattr(model, "network", None), placement.compile)
    return assemble(sampling, x, step, denoiser, placement, model=model)
