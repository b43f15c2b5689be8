"""Entry points for processes the distributed tests spawn (importable by child processes)."""

import datetime
import json
import os
import time

import torch
import torch.distributed as dist

import hasten
from hasten.executors.distributed import DistributedExecutor

CASES = [
    ("sequential", {}),
    ("chords", {"cores": 4, "stop": "none"}),
    ("chords", {"cores": 8, "stop": "first", "cache": "abcache:2:interval=2"}),
    ("paradigms", {"cores": 8}),
    ("srds", {"cores": 3}),
    ("parasolver-turbo", {"cores": 4}),
]


def _init(rank: int, world: int, port: int, timeout_s: float) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))


def run_cases(rank: int, world: int, port: int, out_dir: str) -> None:
    """Every case with the distributed executor; rank 0 saves the results."""
    _init(rank, world, port, 30)
    try:
        results = {}
        for k, (name, opts) in enumerate(CASES):
            opts = dict(opts)
            stop = opts.pop("stop", None)
            r = hasten.sample("gmm", name, steps=30, batch=3, seed=5, stop=stop, executor="distributed", **opts)
            results[f"{k}-{name}"] = (r.x, r.rounds, r.nfe)
        if rank == 0:
            torch.save(results, os.path.join(out_dir, "results.pt"))
    finally:
        dist.destroy_process_group()


class Faulty:
    """A denoiser whose rank ``bad_rank`` dies or hangs at its ``at``-th call."""

    def __init__(self, inner, rank: int, bad_rank: int, mode: str, at: int = 3):
        self.inner, self.rank, self.bad_rank, self.mode, self.at, self.calls = inner, rank, bad_rank, mode, at, 0

    def __call__(self, x, index):
        self.calls += 1
        if self.rank == self.bad_rank and self.calls == self.at:
            if self.mode == "die":
                os._exit(17)
            time.sleep(600)
        return self.inner(x, index)


def run_faulty(rank: int, world: int, port: int, out_dir: str, mode: str, timeout_s: float) -> None:
    """Rank 1 dies or hangs; the others must fail within the timeout and say so."""
    _init(rank, world, port, timeout_s)
    model = hasten.load_model("gmm")
    grid = model.grid(30)
    x = hasten.initial_noise(model, 3, 0)
    executor = DistributedExecutor(Faulty(model.denoiser(grid), rank, 1, mode))
    start = time.monotonic()
    try:
        hasten.run(hasten.Chords(4), x, hasten.make_step(grid), executor, "none")
        outcome = "finished"
    except Exception as err:  # noqa: BLE001 - the test inspects whatever surfaced
        outcome = f"{type(err).__name__}: {err}"
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as fh:
        fh.write(f"{time.monotonic() - start:.2f}\n{outcome}\n")
    os._exit(0)


def run_pipeline(rank: int, world: int, port: int, out_dir: str) -> None:
    """hasten.accelerate with the distributed executor on a tiny Stable Diffusion pipeline."""
    from hasten.testing.pipelines import tiny_pipeline

    _init(rank, world, port, 60)
    try:
        pipe = tiny_pipeline("sd")
        calls = []
        pipe.text_encoder.register_forward_hook(lambda *_: calls.append(1))
        out = hasten.accelerate(pipe, "chords", cores=3, stop="none", executor="distributed")(
            prompt=["a photo of a cat", "a red dog"], num_images_per_prompt=2, guidance_scale=4.0,
            num_inference_steps=10, output_type="latent", generator=torch.Generator().manual_seed(0))
        with open(os.path.join(out_dir, f"text_encoder_calls_rank{rank}.txt"), "w") as fh:
            fh.write(str(len(calls)))
        if rank == 0:
            torch.save(out.images, os.path.join(out_dir, "pipeline.pt"))
    finally:
        dist.destroy_process_group()


def run_config_timed(rank: int, world: int, port: int, out_dir: str, config_path: str, batch: int,
                     repeats: int) -> None:
    """A tune config (best.json) with the distributed executor, one warm-up then ``repeats`` timed runs."""
    from hasten.tune import load_config

    _init(rank, world, port, 60)
    try:
        c = load_config(config_path)
        model = hasten.load_model("digits")
        runs = [hasten.sample(model, c["method"], steps=c["steps"], batch=batch, seed=0, stop=c["stop"],
                              cores=c["cores"], cache=c["cache"], executor="distributed", **c["options"])
                for _ in range(repeats + 1)]
        if rank == 0:
            with open(os.path.join(out_dir, "timed.json"), "w") as fh:
                json.dump([[r.rounds, r.nfe, r.wall_s] for r in runs[1:]], fh)
        dist.barrier()  # leave together: gloo aborts a rank whose peer tears down mid-connection
    finally:
        dist.destroy_process_group()
