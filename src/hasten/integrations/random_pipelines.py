"""Real-size denoising networks with random weights, in real pipelines, for GPU benchmarks without a download.

``--model random:flux-dev`` (or ``random:sd3.5-medium``, ``random:wan2.1-1.3b``)
builds the pipeline's transformer from its published configuration with
random weights, so a forward costs what it costs with the real weights (the
same shapes, layers and kernels), and wraps it in the real diffusers
pipeline class with tiny text encoders (whose outputs have the real widths
and sequence lengths) and a tiny VAE (the real latent channels and scale
factors). Sampling then goes through exactly the code a real checkpoint
takes (``hasten.accelerate`` and the adapters); only the text encoding and
the decoding, which run once per call, are cheap. The samples are noise:
these pipelines measure speed and memory, never quality.

``random:NAME:tiny`` keeps the architecture and shrinks every width and
depth, for a CPU smoke test of the same path.

Weights are drawn on the target device in the target dtype (a 12B-parameter
Flux transformer in bf16 is built on the GPU in seconds, never in float32 on
the host).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch

from hasten.errors import HastenError

# transformer configurations as published with the checkpoints (transformer/config.json)
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
SD35_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                   num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                   pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                   dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
WAN21_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                  out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)


@dataclass(frozen=True)
class RandomSpec:
    """One real-size pipeline: its transformer config, a shrunken one for CPU smoke tests, and its builder."""

    transformer: str
    config: dict
    tiny: dict
    build: Callable


def _flux(transformer, text_dim: int, pooled: int):
    import diffusers as d

    from hasten.integrations.text_encoders import clip_text, clip_tokenizer, t5_text, t5_tokenizer

    vae = d.AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                          down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                          latent_channels=16, norm_num_groups=4, use_quant_conv=False, use_post_quant_conv=False,
                          scaling_factor=0.3611, shift_factor=0.1159)
    scheduler = d.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                  max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    return d.FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip_text(pooled, positions=77),
                          tokenizer=clip_tokenizer(77), text_encoder_2=t5_text(text_dim), tokenizer_2=t5_tokenizer(),
                          transformer=transformer)


def _sd3(transformer, text_dim: int, pooled: int):
    import diffusers as d

    from hasten.integrations.text_encoders import clip_text, clip_tokenizer, t5_text, t5_tokenizer

    # CLIP-L and CLIP-G widths add up to the pooled width (768 + 1280 = 2048 on the real model)
    first = pooled * 3 // 8
    vae = d.AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                          down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                          latent_channels=16, norm_num_groups=4, use_quant_conv=False, use_post_quant_conv=False,
                          scaling_factor=1.5305, shift_factor=0.0609)
    return d.StableDiffusion3Pipeline(
        scheduler=d.FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae, transformer=transformer,
        text_encoder=clip_text(first, first, positions=77, with_projection=True), tokenizer=clip_tokenizer(77),
        text_encoder_2=clip_text(pooled - first, pooled - first, positions=77, with_projection=True),
        tokenizer_2=clip_tokenizer(77), text_encoder_3=t5_text(text_dim), tokenizer_3=t5_tokenizer())


def _wan(transformer, text_dim: int, pooled: int):
    import diffusers as d

    from hasten.integrations.text_encoders import t5_text, t5_tokenizer

    vae = d.AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                             temperal_downsample=[False, True, True])
    return d.WanPipeline(tokenizer=t5_tokenizer(), text_encoder=t5_text(text_dim), vae=vae, transformer=transformer,
                         scheduler=d.FlowMatchEulerDiscreteScheduler(shift=3.0))


SPECS: dict[str, RandomSpec] = {
    "flux-dev": RandomSpec("FluxTransformer2DModel", FLUX_DEV,
                           {**FLUX_DEV, "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16,
                            "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 32,
                            "axes_dims_rope": (4, 4, 8)}, _flux),
    "sd3.5-medium": RandomSpec("SD3Transformer2DModel", SD35_MEDIUM,
                               {**SD35_MEDIUM, "num_layers": 2, "attention_head_dim": 8, "num_attention_heads": 2,
                                "joint_attention_dim": 32, "caption_projection_dim": 16, "pooled_projection_dim": 32,
                                "dual_attention_layers": (0,)}, _sd3),
    "wan2.1-1.3b": RandomSpec("WanTransformer3DModel", WAN21_1_3B,
                              {**WAN21_1_3B, "num_attention_heads": 2, "attention_head_dim": 12, "text_dim": 32,
                               "ffn_dim": 32, "num_layers": 2, "rope_max_seq_len": 32}, _wan),
}


@contextmanager
def _building_on(device: torch.device, dtype: torch.dtype):
    """New tensors are created on ``device`` in ``dtype`` (modules built in place, no host copy)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _keep_in_float32(model: torch.nn.Module) -> None:
    """Cast the parameters a model keeps in float32 (``_keep_in_fp32_modules``), as ``from_pretrained`` does."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, param in model.named_parameters():
        if any(part in name.split(".") for part in keep):
            param.data = param.data.float()


def parse_random_spec(spec: str) -> tuple[str, bool]:
    """``random:NAME`` or ``random:NAME:tiny`` -> (NAME, tiny); refuses unknown names."""
    _, _, rest = spec.partition(":")
    name, _, size = rest.partition(":")
    if name not in SPECS or size not in ("", "tiny"):
        raise HastenError(f"unknown random model {spec!r}; valid: "
                          + ", ".join(f"random:{n}[:tiny]" for n in SPECS))
    return name, size == "tiny"


def random_pipeline(spec: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                    seed: int = 0):
    """The pipeline of ``random:NAME[:tiny]`` with a real-size (or tiny) random transformer on ``device``."""
    import diffusers

    name, tiny = parse_random_spec(spec)
    entry = SPECS[name]
    config = entry.tiny if tiny else entry.config
    device = torch.device(device)
    torch.manual_seed(seed)
    with torch.no_grad(), _building_on(device, dtype):
        transformer = getattr(diffusers, entry.transformer)(**config).eval().requires_grad_(False)
        text_dim = config.get("joint_attention_dim") or config["text_dim"]
        pipe = entry.build(transformer, text_dim, config.get("pooled_projection_dim", 0))
        _keep_in_float32(transformer)
    pipe.to(device)
    for part in pipe.components.values():
        if isinstance(part, torch.nn.Module):
            part.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
