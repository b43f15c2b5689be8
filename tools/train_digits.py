"""Train the embedded ``digits`` DDPM and write its weights into the package.

Reproduces ``hasten/models/weights/digits_unet.safetensors`` in about ten minutes
on a 2-core CPU::

    python tools/train_digits.py --steps 1500

Data: scikit-learn's ``load_digits`` (1797 8x8 images, bundled with the package,
no download), upsampled bilinearly to 16x16 and scaled to [-1, 1].
Model: a small diffusers ``UNet2DModel`` (config in ``digits.py``), epsilon
prediction, cosine (``squaredcos_cap_v2``) noise schedule with 1000 training
steps, AdamW with cosine learning-rate decay and an exponential moving average
of the weights, which is what is saved.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from hasten.models.digits import (
    TRAIN_SCHEDULER_CONFIG,
    UNET_CONFIG,
    WEIGHTS_PATH,
    load_digit_images,
)


def train(steps: int, batch_size: int, lr: float, seed: int, out: Path) -> dict:
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    images = load_digit_images()
    model = UNet2DModel(**UNET_CONFIG)
    ema = copy.deepcopy(model).requires_grad_(False)
    scheduler = DDPMScheduler(**TRAIN_SCHEDULER_CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warmup = min(100, steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(seed)
    ema_decay = 0.995
    start = time.time()
    bar = tqdm(range(steps), desc="train digits", unit="step")
    for step in bar:
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=gen)
        x0 = images[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=gen)
        xt = scheduler.add_noise(x0, noise, t)
        loss = torch.nn.functional.mse_loss(model(xt, t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1 - ema_decay)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")

    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in ema.state_dict().items()}
    meta = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
            "final_loss": round(loss.item(), 5), "train_seconds": round(time.time() - start, 1)}
    save_file(state, str(out), metadata={"training": json.dumps(meta)})
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500, help="optimiser steps (default 1500)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step (default 128)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH, help="where to write the safetensors file")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(json.dumps(train(args.steps, args.batch_size, args.lr, args.seed, args.out)))


if __name__ == "__main__":
    main()
