"""``hasten.accelerate(pipe, method=..., cache=...)``: any supported diffusers pipeline, any method.

A surface beside :mod:`hasten.api`: each call of the wrapped pipeline is
prepared by the pipeline's adapter (:mod:`hasten.integrations.adapters`) and
run through the one session (:mod:`hasten.session`), like every other run.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from hasten.caches import make_cache
from hasten.errors import HastenError
from hasten.integrations.adapters import adapter_for, bind_call
from hasten.integrations.model import prepare_call
from hasten.methods import Method
from hasten.rounds import Hit
from hasten.session import Session, place
from hasten.spec import Placement, Sampling


class AcceleratedPipeline:
    """Call it like the pipeline; it returns the pipeline's usual output with a ``hasten`` attribute.

    ``output.hasten`` (and ``self.last_stats``) hold rounds, NFE, speedup and
    wall time. ``on_hit(hit, decode)`` receives each hit as it lands, with a
    ``decode(hit.x)`` that turns its latent into the pipeline's output on request.
    """

    def __init__(self, pipe, sampling: Sampling, placement: Placement | None = None, on_hit: Callable | None = None):
        self.pipe = pipe
        self.adapter = adapter_for(pipe)
        self.sampling = sampling  # validated; steps (when set) is num_inference_steps of a call that gives none
        placement = placement or Placement()
        if placement.executor == "distributed":
            _join_ranks(pipe, placement)
        self.session = Session(self.adapter, placement)  # compiles the network once, where asked
        self.placement = placement
        self.cache = make_cache(sampling.cache)
        self.on_hit = on_hit
        self.last_stats: dict | None = None

    @property
    def compile_stats(self):
        return self.session.compiled

    def __call__(self, *args, **kwargs) -> Any:
        call = bind_call(self.pipe, args, kwargs)
        start = time.perf_counter()
        if self.sampling.steps is not None:
            call.setdefault("num_inference_steps", self.sampling.steps)
        prepared = prepare_call(self.adapter, **call)
        run = self.session.prepare(self.sampling, x=prepared.latents, step=prepared.step(),
                                   denoiser=prepared.denoiser, cache=self.cache)
        step = None
        hits: list[Callable[[Hit], None]] = []
        if prepared.callback is not None:
            if run.method.name == "sequential":  # a step callback, as the pipeline's own loop calls it
                step = prepared.callback.wrap_step(run.step)
            else:  # once per hit, in landing order
                hits.append(lambda hit, count=iter(range(10**9)): prepared.callback.on_hit(next(count), hit))
        if self.on_hit is not None:
            hits.append(lambda hit: self.on_hit(hit, prepared.decode))

        def each_hit(hit: Hit) -> None:
            for fn in hits:
                fn(hit)

        result = run.sample(each_hit if hits else None, step=step)
        output = prepared.decode(result.x)
        self.last_stats = {
            **result.summary(), "solver": prepared.solver, "scheduler": prepared.scheduler,
            "total_s": time.perf_counter() - start, "latents": result.x,
            "compiled_graphs": None if self.compile_stats is None else self.compile_stats.graphs,
        }
        try:
            output.hasten = self.last_stats
        except AttributeError:  # tuple outputs (return_dict=False)
            pass
        return output


def _join_ranks(pipe, placement: Placement) -> None:
    """Join torchrun's process group for a pipeline already placed on a device, and check the placement.

    Every rank must hold the pipeline on its own device: ``cuda:LOCAL_RANK``
    (``hasten.init_distributed()`` before ``pipe.to("cuda")`` arranges it).
    """
    placed = torch.device(pipe._execution_device)
    rank_device = place(Placement("distributed", device=placed.type, backend=placement.backend,
                                  timeout=placement.timeout, context_parallel=placement.context_parallel))
    if placed.type == "cuda" and placed.index is not None and placed != rank_device:
        raise HastenError(f"the pipeline is on {placed} but this rank owns {rank_device} (LOCAL_RANK); call "
                          "hasten.init_distributed() before pipe.to('cuda'), or move it with "
                          f"pipe.to('{rank_device}')")


def accelerate(pipe, method: str | Method | None = None, cache=None, executor: str = "batched",
               stop: str | None = None, on_hit: Callable | None = None, cores: int | None = None,
               max_batch: int | None = None, compile: str | None = None, config=None,
               context_parallel: str | None = None, **options) -> AcceleratedPipeline:
    """Wrap a diffusers pipeline so that it samples with a hasten method (and cache).

    Example::

        fast = hasten.accelerate(pipe, method="chords", cores=8)
        image = fast(prompt="a cat", num_inference_steps=50).images[0]

    ``executor="distributed"`` inside a torchrun launch spreads every round over
    the ranks (each rank on its own GPU: call ``hasten.init_distributed()``
    before ``pipe.to("cuda")``); ``context_parallel="ulysses=2"`` (or ``ring=C``,
    ``ulysses=2:ring=2``) makes groups of C ranks share each forward through
    diffusers' context parallelism, the round split over the groups. ``max_batch`` bounds the network rows of one
    forward (cores x samples x 2 with classifier-free guidance); ``compile``
    names a ``torch.compile`` backend for the pipeline's network, with every
    forward padded to one size. ``enable_model_cpu_offload()`` works with every
    method (the network stays on the GPU while sampling); it does not mix with
    ``compile``. Supported pipelines: see ``hasten.integrations.adapters.ADAPTERS``.

    ``config``: a config file written by ``hasten tune`` (``best.json``) or its
    dict: method, cores, method options, cache, stop, and steps as the default
    ``num_inference_steps``; arguments given here override it (a ``method``
    other than the file's drops its cores and options). The pipeline's
    scheduler, not the file's ``solver``, decides the step.
    """
    keys = {"method": method, "cache": cache, "stop": stop, "cores": cores, "options": options}
    if config is not None:
        from hasten.config import merged_keys

        merged = merged_keys(config, **keys, model=type(pipe).__name__)
        keys = {**{k: merged.get(k) for k in Sampling.KEYS}, "solver": None}  # the scheduler decides the step
    else:
        keys["method"] = "sequential" if method is None else method
        keys["steps"] = None
    return AcceleratedPipeline(pipe, Sampling(**keys), Placement(executor, max_batch=max_batch, compile=compile,
                                                                   context_parallel=context_parallel),
                               on_hit)
