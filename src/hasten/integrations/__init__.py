"""``hasten.accelerate(pipe, method=..., cache=...)``: any supported diffusers pipeline, any method."""

from __future__ import annotations

import time
from typing import Any, Callable


from hasten.caches import make_cache
from hasten.engine import run
from hasten.errors import HastenError
from hasten.executors.batched import BatchedExecutor
from hasten.integrations.adapters import ADAPTERS, adapter_for
from hasten.methods import Hit, Method, make_method
from hasten.steps import make_step
from hasten.stopping import Stop


class AcceleratedPipeline:
    """Call it like the pipeline; it returns the pipeline's usual output with a ``hasten`` attribute.

    ``output.hasten`` (and ``self.last_stats``) hold rounds, NFE, speedup and
    wall time. ``on_hit(hit, decode)`` receives each hit as it lands, with a
    ``decode(hit.x)`` that turns its latent into the pipeline's output on request.
    """

    def __init__(self, pipe, method: str | Method = "sequential", cache=None, executor: str = "batched",
                 stop: str | None = None, on_hit: Callable | None = None, cores: int | None = None, **options):
        self.pipe = pipe
        self.adapter = adapter_for(pipe)
        self.cache = make_cache(cache)
        self.method_spec = (method, cores, options)
        if isinstance(method, str):
            make_method(method, cores=cores, **options)  # validate now, before any call
        if executor not in ("batched", "distributed"):
            raise HastenError(f"executor must be 'batched' or 'distributed', got {executor!r}")
        self.executor_kind = executor
        self.adapter.broadcast_conditioning = executor == "distributed"
        self.stop = Stop.parse(stop if stop is not None else ("first" if method == "chords" else "none"))
        self.on_hit = on_hit
        self.last_stats: dict | None = None

    def _method(self) -> Method:
        method, cores, options = self.method_spec
        return make_method(method, cores=cores, **options) if isinstance(method, str) else method

    def __call__(self, *args, **kwargs) -> Any:
        if args:
            kwargs = {"prompt": args[0], **kwargs} if "prompt" not in kwargs else kwargs
        start = time.perf_counter()
        prepared = self.adapter.prepare(**kwargs)
        method = self._method()
        step = make_step(prepared.grid, prepared.solver, prepared.noise)
        if self.executor_kind == "distributed":
            from hasten.executors.distributed import DistributedExecutor

            executor = DistributedExecutor(prepared.denoiser)
        else:
            executor = BatchedExecutor(prepared.denoiser)
        callback = None
        if self.on_hit is not None:
            def callback(hit: Hit) -> None:
                self.on_hit(hit, prepared.decode)
        result = run(method, prepared.latents, step, executor, self.stop, callback, cache=self.cache)
        output = prepared.decode(result.x)
        self.last_stats = {
            "method": result.method, "steps": result.steps, "solver": prepared.solver, "rounds": result.rounds,
            "all_rounds": result.all_rounds, "nfe": result.nfe, "speedup": result.speedup,
            "wall_s": result.wall_s, "total_s": time.perf_counter() - start, "params": result.params,
            "cache": result.cache, "hits": [vars(h) for h in result.hits], "latents": result.x,
        }
        try:
            output.hasten = self.last_stats
        except AttributeError:  # tuple outputs (return_dict=False)
            pass
        return output


def accelerate(pipe, method: str | Method = "sequential", cache=None, executor: str = "batched",
               stop: str | None = None, on_hit: Callable | None = None, cores: int | None = None,
               **options) -> AcceleratedPipeline:
    """Wrap a diffusers pipeline so that it samples with a hasten method (and cache).

    Example::

        fast = hasten.accelerate(pipe, method="chords", cores=8)
        image = fast(prompt="a cat", num_inference_steps=50).images[0]

    Supported pipelines: see ``hasten.integrations.adapters.ADAPTERS``.
    """
    return AcceleratedPipeline(pipe, method, cache, executor, stop, on_hit, cores, **options)


__all__ = ["ADAPTERS", "AcceleratedPipeline", "accelerate"]
