"""``hasten.accelerate(pipe, method=..., cache=...)``: any supported diffusers pipeline, any method.

A surface beside :mod:`hasten.api`: each call of the wrapped pipeline is
prepared by the pipeline's adapter (:mod:`hasten.integrations.adapters`) and
assembled into a run by :func:`hasten.assembly.assemble`, like every other run.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from hasten.assembly import assemble, build_method, check_executor, default_stop, join, share_conditioning
from hasten.caches import make_cache
from hasten.checks import check_int
from hasten.denoise import compile_network
from hasten.engine import run
from hasten.errors import HastenError
from hasten.integrations.adapters import adapter_for, bind_call
from hasten.integrations.model import prepare_call
from hasten.methods import Method
from hasten.rounds import Hit


class AcceleratedPipeline:
    """Call it like the pipeline; it returns the pipeline's usual output with a ``hasten`` attribute.

    ``output.hasten`` (and ``self.last_stats``) hold rounds, NFE, speedup and
    wall time. ``on_hit(hit, decode)`` receives each hit as it lands, with a
    ``decode(hit.x)`` that turns its latent into the pipeline's output on request.
    """

    def __init__(self, pipe, method: str | Method = "sequential", cache=None, executor: str = "batched",
                 stop: str | None = None, on_hit: Callable | None = None, cores: int | None = None,
                 max_batch: int | None = None, compile: str | None = None, steps: int | None = None, **options):
        self.pipe = pipe
        self.steps = steps  # num_inference_steps when a call does not give it (from a config file)
        self.adapter = adapter_for(pipe)
        self.cache = make_cache(cache)
        self.method_spec = (method, cores, options)
        build_method(method, cores, options, stop=stop)  # validate now, before any call
        check_executor(executor)
        check_int("max_batch", max_batch, 1, allow_none=True)
        self.executor_kind, self.max_batch, self.compile = executor, max_batch, compile
        share_conditioning(self.adapter, executor)
        if executor == "distributed":
            _join_ranks(pipe)
        self.compile_stats = None
        if compile is not None:
            self.compile_stats = compile_network(getattr(pipe, "transformer", None) or pipe.unet, compile)
        self.stop = stop if stop is not None else default_stop(method)
        self.on_hit = on_hit
        self.last_stats: dict | None = None

    def __call__(self, *args, **kwargs) -> Any:
        kwargs = bind_call(self.pipe, args, kwargs)
        start = time.perf_counter()
        if self.steps is not None:
            kwargs.setdefault("num_inference_steps", self.steps)
        prepared = prepare_call(self.adapter, **kwargs)
        method, cores, options = self.method_spec
        s = assemble(method, prepared.latents, prepared.step(), prepared.denoiser, stop=self.stop, cache=self.cache,
                     executor=self.executor_kind, cores=cores, max_batch=self.max_batch,
                     compiled=self.compile is not None, **options)
        step = s.step
        hits: list[Callable[[Hit], None]] = []
        if prepared.callback is not None:
            if s.method.name == "sequential":  # a step callback, as the pipeline's own loop calls it
                step = prepared.callback.wrap_step(step)
            else:  # once per hit, in landing order
                hits.append(lambda hit, count=iter(range(10**9)): prepared.callback.on_hit(next(count), hit))
        if self.on_hit is not None:
            hits.append(lambda hit: self.on_hit(hit, prepared.decode))

        def each_hit(hit: Hit) -> None:
            for fn in hits:
                fn(hit)

        result = run(s.method, s.x, step, s.executor, s.stop, each_hit if hits else None, cache=s.cache)
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


def _join_ranks(pipe) -> None:
    """Join torchrun's process group for a pipeline already placed on a device, and check the placement.

    Every rank must hold the pipeline on its own device: ``cuda:LOCAL_RANK``
    (``hasten.init_distributed()`` before ``pipe.to("cuda")`` arranges it).
    """
    placed = torch.device(pipe._execution_device)
    rank_device = join("distributed", placed.type)
    if placed.type == "cuda" and placed.index is not None and placed != rank_device:
        raise HastenError(f"the pipeline is on {placed} but this rank owns {rank_device} (LOCAL_RANK); call "
                          "hasten.init_distributed() before pipe.to('cuda'), or move it with "
                          f"pipe.to('{rank_device}')")


def accelerate(pipe, method: str | Method | None = None, cache=None, executor: str = "batched",
               stop: str | None = None, on_hit: Callable | None = None, cores: int | None = None,
               max_batch: int | None = None, compile: str | None = None, config=None,
               **options) -> AcceleratedPipeline:
    """Wrap a diffusers pipeline so that it samples with a hasten method (and cache).

    Example::

        fast = hasten.accelerate(pipe, method="chords", cores=8)
        image = fast(prompt="a cat", num_inference_steps=50).images[0]

    ``executor="distributed"`` inside a torchrun launch spreads every round over
    the ranks (each rank on its own GPU: call ``hasten.init_distributed()``
    before ``pipe.to("cuda")``). ``max_batch`` bounds the network rows of one
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
    steps = None
    if config is not None:
        from hasten.tune import merge_config

        merged = merge_config(config, method, cores, options, cache=cache, stop=stop, steps=None)
        method, cores, options = merged["method"], merged["cores"], merged["options"]
        cache, stop, steps = merged["cache"], merged["stop"], merged["steps"]
    return AcceleratedPipeline(pipe, method if method is not None else "sequential", cache, executor, stop, on_hit,
                               cores, max_batch, compile, steps, **options)
