"""The one run path: a :class:`Session` holds a model opened once on a placement, and prepares its runs.

Every surface goes through it and none strings the pieces together itself:

* ``hasten.sample`` / ``hasten.stream``: ``Session.open(spec)``, then
  :meth:`Session.prepare` with the description's sampling, seed, batch and call;
* ``hasten.accelerate``: a session on the wrapped pipeline; each call prepares
  a run around the latents, step and denoiser the pipeline's adapter built;
* ``hasten bench``: one session, a grid of runs on the same latents;
* ``hasten tune``: one session, a run per candidate;
* ``hasten serve``: one session per server, a run per request or batch.

:meth:`Session.prepare` returns a :class:`PreparedRun` (method, latents, step,
executor, stop rule, cache: every piece validated, no model called yet), which
the engine iterates. What is given (``x``, ``step``, ``denoiser``) is used as it
is; what is not comes from the model: its grid for the sampling's steps, its
initial latents for the seed, its denoiser and its step.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Generator

import torch

from hasten.caches import Cache, make_cache
from hasten.denoise import compile_network, denoiser_device
from hasten.engine import HitStream, Result, iterate
from hasten.errors import HastenError
from hasten.executors import make_executor
from hasten.executors.base import Executor
from hasten.methods import Method
from hasten.noise import draw_noise, initial_noise
from hasten.opening import bind_model, check_model_source, open_model
from hasten.rounds import Hit
from hasten.spec import Placement, RunSpec, Sampling
from hasten.steps import Step, make_step
from hasten.stopping import Stop


def place(placement: Placement) -> torch.device:
    """This process's device; under the distributed executor after joining torchrun's process group.

    Each rank of a node then runs with its share of the node's threads.
    """
    if placement.executor == "distributed":
        import torch.distributed as dist

        from hasten.executors.context import check_world, layout_mesh
        from hasten.executors.distributed import init_distributed

        layout = placement.layout
        if layout is not None:  # refused before joining, let alone loading
            check_world(layout, dist.get_world_size() if dist.is_initialized() else
                        int(os.environ.get("WORLD_SIZE", "1")))
        joining = not dist.is_initialized()
        device = init_distributed(device=placement.device, backend=placement.backend, timeout_s=placement.timeout)
        if layout is not None:
            layout_mesh(layout, device)  # every rank builds the mesh now, in the same order
        if joining:
            ranks_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
            torch.set_num_threads(max(1, torch.get_num_threads() // ranks_here))
        return device
    from hasten.devices import resolve_device

    return resolve_device(placement.device)


@dataclass
class PreparedRun:
    """A run ready for the engine: every piece validated, no model called yet.

    ``model`` is the model view the run samples (it decodes the result);
    ``record`` the run description's dict form (:meth:`RunSpec.to_dict`), set on
    the result when the run ends.
    """

    method: Method
    x: torch.Tensor
    step: Step
    executor: Executor
    stop: Stop
    cache: Cache | None = None
    model: Any = None
    record: dict | None = None

    def iterate(self, progress: bool = False, step: Step | None = None) -> Generator[Hit, None, Result]:
        """The engine's generator over this run's hits (``step`` replaces the run's, e.g. a callback's wrapper)."""
        return iterate(self.method, self.x, step or self.step, self.executor, self.stop, progress, self.cache)

    def stream(self, progress: bool = False) -> HitStream:
        """A :class:`~hasten.engine.HitStream` over the hits; its ``.result`` is set when it ends."""
        return HitStream(self.iterate(progress), record=self.record)

    def sample(self, on_hit: Callable[[Hit], None] | None = None, progress: bool = False,
               step: Step | None = None) -> Result:
        """Run to the stop rule; ``on_hit`` receives each hit as it lands."""
        hits = HitStream(self.iterate(progress, step), record=self.record)
        for hit in hits:
            if on_hit is not None:
                on_hit(hit)
        return hits.result


def model_grid(model, steps: int):
    """The model's grid for ``steps`` steps (a scheduler's refusal becomes a HastenError)."""
    try:
        return model.grid(steps)
    except ValueError as err:  # e.g. a scheduler refusing more steps than it was trained with
        if isinstance(err, HastenError):
            raise
        raise HastenError(f"steps={steps}: {err}") from None


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


@dataclass
class Session:
    """A model opened once on a placement; :meth:`prepare` builds each of its runs.

    ``model`` is an opened model (embedded, a pipeline model, a served model's
    view) or a pipeline's adapter (``hasten.accelerate``: its runs are prepared
    around the latents, step and denoiser the adapter built for each call).
    Build one with :meth:`open` (from a description, placed first) or around an
    opened model. A distributed placement makes rank 0 alone encode prompts;
    a compile placement compiles the network once, here.
    """

    model: Any
    placement: Placement = field(default_factory=Placement)
    compiled: Any = None  # the network's CompileStats where the placement compiles it

    def __post_init__(self) -> None:
        adapter = getattr(self.model, "adapter", self.model)  # a pipeline model's adapter, or an adapter itself
        if hasattr(adapter, "broadcast_conditioning"):  # rank 0 alone encodes prompts and broadcasts them
            adapter.broadcast_conditioning = self.placement.executor == "distributed"
        if self.placement.compile is not None and self.compiled is None:
            self.compiled = compile_network(self.network, self.placement.compile)

    @classmethod
    def open(cls, spec: RunSpec) -> "Session":
        """The session of a run description: placed (torchrun's group joined where it asks), its model opened.

        An opened model in ``spec.model`` is bound to the spec's call, batch and seed instead.
        """
        placement = spec.placement
        if not isinstance(spec.model, str):
            return cls(bind_model(spec.model, spec.call, spec.batch, spec.seed), placement)
        if placement.layout is not None:
            check_model_source(spec.model, placement.layout, spec.local_files_only)
        model = open_model(spec.model, place(placement), placement.dtype, spec.batch, spec.seed, spec.call,
                           spec.local_files_only)
        return cls(model, dataclasses.replace(placement, device=None, dtype=None))

    @property
    def network(self):
        """The model's denoising network (transformer or UNet), where it has one."""
        pipe = getattr(self.model, "pipe", None)
        if pipe is not None:
            return getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
        return getattr(self.model, "network", None) or getattr(self.model, "transformer", None) or \
            getattr(self.model, "unet", None)

    def with_placement(self, placement: Placement) -> "Session":
        """This session's model under another placement (bench's one-device reference), compiled once."""
        return Session(self.model, placement, self.compiled)

    def prepare(self, sampling: Sampling, *, seed: int = 0, batch: int = 1, call: dict | None = None,
                x: torch.Tensor | None = None, step: Step | None = None, denoiser=None,
                wrap: Callable | None = None, cache: Cache | None = None, record: dict | None = None) -> PreparedRun:
        """A run of ``sampling`` on this session's model, every piece checked before any model call.

        ``call`` (a prompt, a size) re-binds the model for this run; ``x``,
        ``step`` and ``denoiser`` are used as given (``step`` fixes the grid);
        what is missing comes from the model (``wrap`` wraps the model's denoiser:
        the bench's emulated devices). Latents are drawn on the CPU from
        ``seed`` and moved to the denoiser's device, so every device and
        executor starts from the same noise. ``cache``: an existing cache object
        (``hasten.accelerate`` keeps one per wrapped pipeline) instead of a fresh one.
        """
        model = bind_model(self.model, call, batch, seed) if call or x is None or denoiser is None else self.model
        if step is not None:
            grid = step.grid
        elif sampling.steps is None:
            raise HastenError("a run needs steps: an integer >= 1")
        else:
            grid = model_grid(model, sampling.steps)
        if x is None:  # after the grid: a pipeline's latents come from that same call
            x = model_latents(model, batch, seed)
        if denoiser is None:
            denoiser = model.denoiser(grid) if wrap is None else wrap(model.denoiser(grid))
        x = x.to(denoiser_device(denoiser))
        if step is None:
            step = model_step(model, grid, sampling.solver, x, seed)
        self.share_forward(x, denoiser)
        steps = grid.steps
        method, stop = sampling.build(steps)
        width = method.max_width(steps)
        executor = make_executor(denoiser, self.placement.executor, self.placement.max_batch,
                                 self.placement.compile is not None, None if width is None else width * x.shape[0],
                                 context=self.placement.layout)
        return PreparedRun(method, x, step, executor, stop, cache if cache is not None else make_cache(sampling.cache),
                           model, record)

    def share_forward(self, latents: torch.Tensor, denoiser) -> None:
        """Under ``context_parallel``: the networks in diffusers' context-parallel mode, the sequence checked first."""
        layout = self.placement.layout
        if layout is None:
            return
        from hasten.integrations.context import check_sequence, networks_of, prepare_network

        pipe = getattr(self.model, "pipe", self.model)
        cond = getattr(denoiser, "cond", None)
        text = cond.get("text") if isinstance(cond, dict) else None
        for net in networks_of(pipe):
            check_sequence(net, layout, latents, None if text is None else text.shape[1])
        prepare_network(pipe, layout, denoiser_device(denoiser))


def run_spec(spec: RunSpec) -> PreparedRun:
    """The prepared run of a whole description: its session opened, the run prepared (``hasten.sample``'s path)."""
    record = spec.to_dict() if isinstance(spec.sampling.method, str) else None
    return Session.open(spec).prepare(spec.sampling, seed=spec.seed, batch=spec.batch, call=spec.call,
                                      record=record)
