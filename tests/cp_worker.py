"""Entry points for the context-parallel tests' spawned ranks (importable by child processes)."""

import datetime
import json
import os
import time

import torch
import torch.distributed as dist

import hasten

#: (method, options) run on every pipeline and layout, each with and without AB-Cache
METHODS = [
    ("sequential", {}),
    ("chords", {"cores": 3, "stop": "none"}),
    ("paradigms", {"cores": 4}),
    ("parasolver-turbo", {"cores": 3}),
]
CACHES = [None, "abcache:2:interval=2"]
PIPELINES = ("flux", "wan")
STEPS = 8


def call_of(kind: str) -> dict:
    """The pipeline call of each tiny pipeline: two samples, image tokens and text tokens even."""
    if kind == "flux":
        return dict(prompt="a cat", height=32, width=32, max_sequence_length=8, num_images_per_prompt=2,
                    guidance_scale=3.5)
    return dict(prompt="a cat", negative_prompt="a dog", height=16, width=16, num_frames=5, max_sequence_length=8,
                guidance_scale=3.0)


def cases():
    return [(kind, name, opts, cache) for kind in PIPELINES for name, opts in METHODS for cache in CACHES]


def key(kind, name, cache) -> str:
    return f"{kind}/{name}/{cache or 'nocache'}"


def sample(pipe, kind, name, opts, cache, **placement):
    opts = dict(opts)
    stop = opts.pop("stop", None)
    fast = hasten.accelerate(pipe, name, cache=cache, stop=stop, **opts, **placement)
    out = fast(**call_of(kind), num_inference_steps=STEPS, output_type="latent",
               generator=torch.Generator().manual_seed(3))
    latents = out.frames if kind == "wan" else out.images
    s = out.hasten
    return latents, {"rounds": s["rounds"], "nfe": s["nfe"], "cache": s["cache"]}


def _init(rank: int, world: int, port: int, timeout_s: float) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))


def run_layout(rank: int, world: int, port: int, out_dir: str, layout: str) -> None:
    """Every case on ``layout``; each rank saves its own latents and counts (the test compares ranks too)."""
    from hasten.testing.pipelines import tiny_pipeline

    _init(rank, world, port, 120)
    try:
        results = {}
        for kind in PIPELINES:
            pipe = tiny_pipeline(kind)
            for k, n, o, c in (case for case in cases() if case[0] == kind):
                results[key(k, n, c)] = sample(pipe, k, n, o, c, executor="distributed", context_parallel=layout)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


class DyingForward:
    """A forward pre-hook that ends rank ``bad_rank``'s process inside its ``at``-th network call."""

    def __init__(self, rank: int, bad_rank: int, at: int = 3):
        self.rank, self.bad_rank, self.at, self.calls = rank, bad_rank, at, 0

    def __call__(self, module, args, kwargs):
        self.calls += 1
        if self.rank == self.bad_rank and self.calls == self.at:
            os._exit(17)


def run_dying(rank: int, world: int, port: int, out_dir: str, timeout_s: float) -> None:
    """Rank 1 dies inside a context-parallel forward; the others must fail within the timeout."""
    from hasten.testing.pipelines import tiny_pipeline

    _init(rank, world, port, timeout_s)
    pipe = tiny_pipeline("flux")
    fast = hasten.accelerate(pipe, "chords", cores=3, stop="none", executor="distributed",
                             context_parallel="ulysses=2")
    # inside the transformer's blocks, after diffusers has split the sequence: the peers are mid-forward
    pipe.transformer.transformer_blocks[0].register_forward_pre_hook(DyingForward(rank, 1), with_kwargs=True)
    start = time.monotonic()
    try:
        fast(**call_of("flux"), num_inference_steps=STEPS, output_type="latent",
             generator=torch.Generator().manual_seed(3))
        outcome = "finished"
    except Exception as err:  # noqa: BLE001 - the test inspects whatever surfaced
        outcome = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump({"elapsed": time.monotonic() - start, "outcome": outcome}, fh)
    os._exit(0)
