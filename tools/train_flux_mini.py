"""Train flux-mini: a tiny Flux pipeline on the captioned shapes of ``hasten.models.shapes`` (issue 26).

    OMP_NUM_THREADS=2 PYTHONPATH=src python tools/train_flux_mini.py --seed 0

Two stages, both seeded. First the VAE (``AutoencoderKL``, 64x64 -> 4x16x16) learns to reconstruct the shapes
(MSE + L1 weighted 10x on the shapes' pixels, + a small KL). Then its latent means, shifted and scaled to unit variance (the VAE's ``shift_factor``
and ``scaling_factor``), train the ``FluxTransformer2DModel`` with Flux's rectified-flow loss (Esser et al.
2024, Eq. 1 and 3: ``x_t = (1 - t) x_0 + t eps``, ``v = eps - x_0``, t logit-normal as their Eq. 19) while the
CLIP and T5 encoders stay random and frozen.

The pipeline pads T5 to 512 tokens and attends to them all. The T5 has no position bias, so its padding
tokens come out identical, and in the transformer they stay identical (they carry text position 0 like every
text token). Attention over ``m`` identical keys equals attention over one with ``log m`` added to its
logit, so training keeps ``TEXT_SLOTS`` text tokens and adds ``log(pad count / pad slots)`` to the padding
keys' logits: the same function the pipeline computes at 512, at a sixth of the cost.

70% of the captions name all of an image's attributes; the others a random subset (3% of all are empty), so a short
prompt ("a red circle") means something too. Adherence is measured on the full captions of
``flux_mini.PROMPTS`` at seeds no training image used (``--hold-out`` also keeps those captions out of
training, to measure how the model composes unseen attribute combinations). The result is saved with
``FluxPipeline.save_pretrained`` (safetensors) and evaluated with the loaded pipeline's default 28 steps.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from hasten.models import flux_mini, shapes

TEXT_SLOTS = 12
T5_LENGTH = 512


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def cosine_lr(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_vae(pixels: torch.Tensor, steps: int, batch: int, seed: int, crop: int = 32):
    """The AutoencoderKL, trained to reconstruct ``pixels`` (n, 3, 64, 64) in [-1, 1] from random ``crop``-pixel
    crops on the latent grid (it is all convolutions, so the crops train it for the whole image at a quarter
    of the cost)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**flux_mini.VAE_CONFIG).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, 2e-3, 10)
        x = pixels[torch.randint(len(pixels), (batch,), generator=gen)]
        oy, ox = (4 * torch.randint((x.shape[-1] - crop) // 4 + 1, (2,), generator=gen)).tolist()
        x = x[..., oy:oy + crop, ox:ox + crop]
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        # the shapes cover a few percent of an image: weight their pixels 10x, or the white background
        # dominates the loss and the colours drift (red decoded as purple)
        weight = 1 + 9 * (x < 0.9).any(1, keepdim=True).float()
        err = recon - x
        loss = (weight * err.pow(2)).mean() + 0.5 * (weight * err.abs()).mean() + 1e-6 * dist.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae {step}/{steps} loss {loss.item():.4f}")
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor) -> torch.Tensor:
    return torch.cat([vae.encode(pixels[i:i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)])


def sample_caption(attrs: shapes.Attributes, rng: np.random.Generator, held_out: set[str], full: float) -> str:
    """The full caption of ``attrs`` a fraction ``full`` of the time (unless held out), else a random subset of it
    (empty a tenth of those times), never one of ``held_out``."""
    if rng.random() < full and attrs.caption() not in held_out:
        return attrs.caption()
    if rng.random() < 0.1:
        return ""
    while True:
        place = rng.choice(4, p=[0.6, 0.1, 0.1, 0.2])
        row, col = [(attrs.row, attrs.col), (attrs.row, None), (None, attrs.col), (None, None)][place]
        text = shapes.caption(attrs.colour if rng.random() < 0.8 else None,
                              attrs.shape if rng.random() < 0.8 else None, row, col,
                              attrs.size if rng.random() < 0.7 else None)
        if text and text not in held_out:
            return text


@torch.no_grad()
def text_table(pipe, captions: list[str]):
    """Per caption: the first TEXT_SLOTS T5 embeddings (of the 512 the pipeline makes), CLIP's pooled output,
    and the attention bias that stands the padding slots in for all 512's padding."""
    embeds, pooled, biases = [], [], []
    for i in range(0, len(captions), 64):
        chunk = captions[i:i + 64]
        e, p, _ = pipe.encode_prompt(chunk, prompt_2=None, max_sequence_length=T5_LENGTH)
        ids = pipe.tokenizer_2(chunk, padding="max_length", max_length=T5_LENGTH, truncation=True,
                               return_tensors="pt").input_ids
        real = (ids != pipe.tokenizer_2.pad_token_id).sum(1)
        assert int(real.max()) < TEXT_SLOTS, real.max()
        assert torch.allclose(e[:, TEXT_SLOTS - 1:], e[:, -1:].expand_as(e[:, TEXT_SLOTS - 1:]), atol=1e-5)
        bias = torch.zeros(len(chunk), TEXT_SLOTS)
        for k, n in enumerate(real.tolist()):
            bias[k, n:] = math.log((T5_LENGTH - n) / (TEXT_SLOTS - n))
        embeds.append(e[:, :TEXT_SLOTS])
        pooled.append(p)
        biases.append(bias)
    return torch.cat(embeds), torch.cat(pooled), torch.cat(biases)


def train_transformer(pipe, latents: torch.Tensor, attrs: list, args) -> torch.nn.Module:
    from diffusers import FluxPipeline, FluxTransformer2DModel

    captions = shapes.all_captions()
    index = {c: i for i, c in enumerate(captions)}
    embeds, pooled, biases = text_table(pipe, captions)
    torch.manual_seed(args.seed + 2)
    model = FluxTransformer2DModel(**flux_mini.TRANSFORMER_CONFIG).train()
    ema = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    rng = np.random.default_rng(args.seed + 3)
    gen = torch.Generator().manual_seed(args.seed + 4)
    held_out = set(flux_mini.PROMPTS) if args.hold_out else set()
    channels, side = latents.shape[1], latents.shape[2]
    img_ids = FluxPipeline._prepare_latent_image_ids(1, side // 2, side // 2, "cpu", torch.float32)
    txt_ids = torch.zeros(TEXT_SLOTS, 3)
    image_bias = torch.zeros(args.batch, img_ids.shape[0])
    t0 = time.time()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, args.steps, args.lr, 30)
        pick = rng.integers(len(latents), size=args.batch)
        rows = [index[sample_caption(attrs[i], rng, held_out, args.full_captions)] for i in pick]
        x0 = FluxPipeline._pack_latents(latents[pick], args.batch, channels, side, side)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.sigmoid(torch.randn(args.batch, generator=gen))
        xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
        mask = torch.cat([biases[rows], image_bias], 1)[:, None, None, :]
        out = model(hidden_states=xt, timestep=t, pooled_projections=pooled[rows], encoder_hidden_states=embeds[rows],
                    txt_ids=txt_ids, img_ids=img_ids, joint_attention_kwargs={"attention_mask": mask},
                    return_dict=False)[0]
        loss = (out - (noise - x0)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 1 - decay)
        if step % 250 == 0 or step == args.steps - 1:
            log(f"transformer {step}/{args.steps} loss {loss.item():.4f} ({time.time() - t0:.0f} s)")
    with torch.no_grad():
        for p, e in zip(model.parameters(), ema):
            p.copy_(e)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def evaluate(folder: Path, seeds: int, steps: int = 28, batch: int = 24) -> dict:
    """Adherence of the saved pipeline on flux_mini.PROMPTS, ``seeds`` samples each, ``steps`` Euler steps."""
    pipe = flux_mini.load_pipeline(folder)
    prompts = [p for p in flux_mini.PROMPTS for _ in range(seeds)]
    images = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        gen = [torch.Generator().manual_seed(1000 + i + k) for k in range(len(chunk))]
        images.append(pipe(chunk, num_inference_steps=steps, height=64, width=64, generator=gen,
                           output_type="pt").images)
    images = torch.cat(images)
    score = shapes.adherence_breakdown(images, prompts)
    return {"steps": steps, "seeds": seeds, **score}, images, prompts


def save_grid(images: torch.Tensor, prompts: list[str], seeds: int, path: Path) -> None:
    """One row per caption (its text on the left, each sample marked by whether the score reads it right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(prompts) // seeds
    fig, axes = plt.subplots(rows, seeds, figsize=(1.3 * seeds + 3.2, 1.3 * rows), squeeze=False)
    for k, (image, prompt) in enumerate(zip(images, prompts)):
        ax = axes[k // seeds][k % seeds]
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
        ax.set_xticks([]), ax.set_yticks([])
        ok = shapes.adherence(image[None], [prompt]) == 1.0
        for spine in ax.spines.values():
            spine.set_edgecolor("tab:green" if ok else "tab:red"), spine.set_linewidth(2)
        if k % seeds == 0:
            ax.set_ylabel(prompt.removeprefix("a "), rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=6000, help="training images drawn by shapes.generate")
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--vae-batch", type=int, default=32)
    parser.add_argument("--vae-crop", type=int, default=64, help="VAE training crop side (64: whole images)")
    parser.add_argument("--steps", type=int, default=9000, help="transformer steps")
    parser.add_argument("--full-captions", type=float, default=0.7,
                        help="fraction of training captions that name every attribute (the rest name a subset)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--hold-out", action="store_true", help="keep flux_mini.PROMPTS' captions out of training")
    parser.add_argument("--vae", type=Path, default=None, help="reuse a trained VAE folder (skips stage 1)")
    parser.add_argument("--stage", choices=("all", "vae"), default="all")
    parser.add_argument("--work", type=Path, default=Path("/tmp/flux-mini-train"))
    parser.add_argument("--out", type=Path, default=flux_mini.PIPELINE_DIR)
    parser.add_argument("--eval-seeds", type=int, default=16, help="samples per evaluation caption (0: no evaluation)")
    parser.add_argument("--eval-only", action="store_true", help="evaluate the --out folder, train nothing")
    parser.add_argument("--grid", type=Path, default=Path("docs/flux_mini.png"), help="where the sample grid goes")
    args = parser.parse_args(argv)
    start = time.time()
    if not args.eval_only:
        train(args)
    if args.eval_seeds:
        result, images, prompts = evaluate(args.out, args.eval_seeds)
        log(f"adherence (28 steps, flux_mini.PROMPTS): {json.dumps(result)}")
        args.work.mkdir(parents=True, exist_ok=True)
        (args.work / "eval.json").write_text(json.dumps(result, indent=1))
        save_grid(images, prompts, args.eval_seeds, args.grid)
    log(f"done after {time.time() - start:.0f} s")


def train(args) -> None:
    from diffusers import AutoencoderKL

    start = time.time()
    images, attrs = shapes.generate(args.images, seed=args.seed)
    pixels = images * 2 - 1
    log(f"{len(images)} images drawn")
    if args.vae is not None:
        vae = AutoencoderKL.from_pretrained(str(args.vae)).eval().requires_grad_(False)
    else:
        vae = train_vae(pixels, args.vae_steps, args.vae_batch, args.seed, args.vae_crop)
        vae.save_pretrained(str(args.work / "vae"))
    with torch.no_grad():
        held, held_attrs = shapes.generate(144, seed=args.seed + 10)
        recon = vae.decode(encode_latents(vae, held * 2 - 1)).sample.clamp(-1, 1).add(1).div(2)
    log(f"vae reconstructions of 144 new images read right: "
        f"{shapes.adherence_breakdown(recon, [a.caption() for a in held_attrs])}")
    if args.stage == "vae":
        raise SystemExit(0)
    latents = encode_latents(vae, pixels)
    shift, scale = latents.mean().item(), 1 / latents.std().item()
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    log(f"latents {tuple(latents.shape)}: shift {shift:.4f}, scale {scale:.4f}")
    pipe = flux_mini.build_pipeline(args.seed, vae=vae)
    transformer = train_transformer(pipe, (latents - shift) * scale, attrs, args)
    pipe = flux_mini.build_pipeline(args.seed, vae=vae, transformer=transformer)
    pipe.save_pretrained(str(args.out), safe_serialization=True)
    log(f"saved {args.out} after {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
