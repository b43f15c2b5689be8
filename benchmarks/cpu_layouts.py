"""Two CPU ranks as 2 x 1 (time parallel) against 1 x 2 (Ulysses-2 context parallel), real processes, gloo.

A Flux transformer of real width (3072 = 24 heads x 128) with few blocks, so
that its forward dominates a round, at a few latent sizes; CHORDS on each
layout, and sequential for the round speedup. Per size and layout: wall time
of the run, rounds, round speedup (steps / rounds), and the time inside
collectives per round, measured with torch.profiler (gloo all-gather of the
time dim; Ulysses all-to-alls and the output gather inside the forward).

    python benchmarks/cpu_layouts.py --sizes 64,128,256 --out /tmp/layouts.json

runs ``torchrun --nproc_per_node 2`` once per layout (one thread per rank)
and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

#: collective ops as torch.profiler names them on gloo (c10d ops and functional collectives' waits)
COMM_MARKERS = ("c10d::", "gloo:", "_c10d_functional", "all_to_all", "all_gather", "allgather", "alltoall")


def flux_pipe(width_heads: int, double: int, single: int):
    import diffusers
    import torch

    from hasten.integrations.random_pipelines import _flux

    torch.manual_seed(0)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=double, num_single_layers=single, attention_head_dim=128,
        num_attention_heads=width_heads, joint_attention_dim=64, pooled_projection_dim=32,
        axes_dims_rope=(16, 56, 56), guidance_embeds=True).eval().requires_grad_(False)
    pipe = _flux(transformer, 64, 32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def comm_seconds(prof) -> float:
    total = 0.0
    for e in prof.key_averages():
        if any(m in e.key for m in COMM_MARKERS):
            total += e.self_cpu_time_total / 1e6
    return total


def worker(args) -> None:
    import torch
    import torch.distributed as dist
    from torch.profiler import ProfilerActivity, profile

    import hasten

    hasten.init_distributed(timeout_s=600)
    torch.set_num_threads(1)
    pipe = flux_pipe(args.heads, args.double, args.single)
    cp = None if args.layout == "2x1" else "ulysses=2"
    rows = []
    for size in args.sizes:
        call = dict(prompt="a cat", height=size, width=size, max_sequence_length=args.text_tokens,
                    output_type="latent")
        runs = {}
        for name, opts in (("sequential", {}), ("chords", {"cores": args.cores})):
            fast = hasten.accelerate(pipe, name, executor="distributed", context_parallel=cp, **opts)
            fast(**call, num_inference_steps=args.cores + 1,
                 generator=torch.Generator().manual_seed(0))  # warm-up
            dist.barrier()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                t0 = time.perf_counter()
                out = fast(**call, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0))
                wall = time.perf_counter() - t0
            s = out.hasten
            runs[name] = {"wall_s": wall, "rounds": s["rounds"], "nfe": s["nfe"],
                          "comm_ms_per_round": 1000 * comm_seconds(prof) / s["rounds"]}
        tokens = (size // 16) ** 2
        rows.append({"size": size, "image_tokens": tokens, "text_tokens": args.text_tokens, "layout": args.layout,
                     **{f"{k}_{n}": v for n, r in runs.items() for k, v in r.items()},
                     "round_speedup": args.steps / runs["chords"]["rounds"],
                     "speedup_vs_sequential_here": runs["sequential"]["wall_s"] / runs["chords"]["wall_s"]})
    if dist.get_rank() == 0:
        with open(args.result, "w") as fh:
            json.dump(rows, fh)
    dist.barrier()
    dist.destroy_process_group()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="64,128,256", type=lambda t: [int(v) for v in t.split(",")])
    p.add_argument("--heads", type=int, default=24, help="attention heads of 128 (24: Flux.1's width, 3072)")
    p.add_argument("--double", type=int, default=1, help="double-stream blocks (Flux.1: 19)")
    p.add_argument("--single", type=int, default=1, help="single-stream blocks (Flux.1: 38)")
    p.add_argument("--text-tokens", type=int, default=16)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--out", default="cpu_layouts.json")
    p.add_argument("--layout", choices=["2x1", "1x2"], help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.layout is not None:
        worker(args)
        return 0
    import socket

    rows = []
    for layout in ("2x1", "1x2"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        result = f"{args.out}.{layout}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(port), __file__, "--layout", layout, "--result", result,
               "--sizes", ",".join(map(str, args.sizes)), "--heads", str(args.heads), "--double", str(args.double),
               "--single", str(args.single), "--text-tokens", str(args.text_tokens), "--steps", str(args.steps),
               "--cores", str(args.cores)]
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        with open(result) as fh:
            rows += json.load(fh)
    with open(args.out, "w") as fh:
        json.dump({"uptime": os.popen("uptime").read().strip(), "args": vars(args), "rows": rows}, fh, indent=1)
    cols = ["size", "image_tokens", "layout", "wall_s_chords", "rounds_chords", "round_speedup",
            "comm_ms_per_round_chords", "wall_s_sequential", "comm_ms_per_round_sequential",
            "speedup_vs_sequential_here"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in sorted(rows, key=lambda r: (r["size"], r["layout"])):
        print("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
