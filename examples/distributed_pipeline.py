"""A diffusers pipeline on every GPU of a node (or several nodes) with CHORDS, through torchrun.

    torchrun --nproc_per_node 8 examples/distributed_pipeline.py --model black-forest-labs/FLUX.1-dev \
        --prompt "a lighthouse at dawn" --cores 8 --steps 50 --out lighthouse.png

Every rank loads the pipeline on its own GPU and runs the same method on the same seed; each round's
evaluations are split over the ranks (NCCL on GPUs, gloo on CPUs) and only rank 0 writes.
"""

import argparse

import torch
import torch.distributed as dist
from diffusers import DiffusionPipeline

import hasten


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="black-forest-labs/FLUX.1-dev", help="model id or saved pipeline folder")
    parser.add_argument("--prompt", default="a lighthouse at dawn")
    parser.add_argument("--cores", type=int, default=8, help="CHORDS cores (one or more per rank)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="sample.png")
    args = parser.parse_args()

    device = hasten.init_distributed()  # joins torchrun's group and takes cuda:LOCAL_RANK (or the CPU)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    pipe = DiffusionPipeline.from_pretrained(args.model, dtype=dtype).to(device)  # onto this rank's own GPU
    pipe.set_progress_bar_config(disable=True)
    fast = hasten.accelerate(pipe, method="chords", cores=args.cores, executor="distributed")
    # the same seed on every rank: all ranks start from the same noise and make the same decisions
    out = fast(prompt=args.prompt, num_inference_steps=args.steps,
               generator=torch.Generator().manual_seed(args.seed))
    if dist.get_rank() == 0:
        out.images[0].save(args.out)
        stats = out.hasten
        print(f"{args.out}: {stats['rounds']} rounds for {stats['steps']} steps ({stats['speedup']:.2f}x), "
              f"{stats['wall_s']:.2f} s on {dist.get_world_size()} ranks")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
