"""``flux-mini``: a small Flux text-to-image pipeline trained here on the captioned shapes of :mod:`.shapes`.

The shipped folder (:func:`pipeline_path`) is a saved diffusers ``FluxPipeline``:

- ``transformer``: a ``FluxTransformer2DModel`` (1 double-stream + 3 single-stream blocks, inner width 128,
  4 heads, no guidance embedding), trained by ``tools/train_flux_mini.py`` with Flux's rectified-flow loss
  (Esser et al. 2024, Eq. 1 and 3: ``x_t = (1 - t) x_0 + t eps``, target ``v = eps - x_0``);
- ``vae``: a 3-level ``AutoencoderKL`` (4 latent channels, 64x64 pixels to 16x16 latents), trained first;
- ``text_encoder`` / ``text_encoder_2``: a CLIP and a T5 encoder, random and frozen, over a word-level
  vocabulary of the caption grammar. The T5's relative position bias is zero, so it reads a caption as a
  bag of words (the grammar needs no order) and its padding tokens all come out alike;
- ``scheduler``: ``FlowMatchEulerDiscreteScheduler`` (shift 1), the pipeline's 28-step Euler flow.

This module builds the untrained pipeline (:func:`build_pipeline`) and opens the shipped one
(:func:`load_pipeline`); it imports no hasten integration (models know no pipeline wrapper).
"""

from __future__ import annotations

from pathlib import Path

import torch

from hasten.errors import HastenError
from hasten.models.shapes import VOCABULARY

#: the pixel side of flux-mini's images
IMAGE_SIZE = 64
#: the shipped pipeline folder
PIPELINE_DIR = Path(__file__).resolve().parent / "weights" / "flux-mini"
#: the captions adherence is measured on (``tools/train_flux_mini.py``; with ``--hold-out`` it never trains on
#: them, so that their images appear under partial captions only)
PROMPTS = (
    "a large red circle at the top left",
    "a small blue square at the bottom right",
    "a large green triangle at the top right",
    "a small yellow circle at the bottom left",
    "a large purple square at the bottom left",
    "a small cyan triangle at the top left",
    "a large blue triangle at the bottom right",
    "a small red square at the top right",
    "a large yellow triangle at the bottom left",
    "a small green circle at the top right",
    "a large cyan square at the top left",
    "a small purple circle at the bottom right",
)
#: the CLIP tokenizer's length (the longest caption has 8 words, plus start and end)
CLIP_LENGTH = 16

TRANSFORMER_CONFIG = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=3, attention_head_dim=32,
                          num_attention_heads=4, joint_attention_dim=32, pooled_projection_dim=32,
                          guidance_embeds=False, axes_dims_rope=(8, 12, 12))
VAE_CONFIG = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
                  up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=(8, 16, 32), layers_per_block=1,
                  latent_channels=4, norm_num_groups=4, sample_size=IMAGE_SIZE, use_quant_conv=False,
                  use_post_quant_conv=False, mid_block_add_attention=False, scaling_factor=1.0, shift_factor=0.0)


def pipeline_path() -> Path:
    """The shipped flux-mini pipeline folder; a HastenError naming the trainer where it is missing."""
    if not (PIPELINE_DIR / "model_index.json").is_file():
        raise HastenError(f"flux-mini's weights are missing at {PIPELINE_DIR}; train them with "
                          "`python tools/train_flux_mini.py`")
    return PIPELINE_DIR


def clip_tokenizer():
    """A CLIP BPE tokenizer whose words are the grammar's (each word one token), in memory."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in sorted(set("".join(VOCABULARY))):
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    merges = []
    # each word merges left to right into one token; longer words first, so that no shorter word's merge
    # breaks a longer word's chain (tests/test_flux_mini.py checks every word is one token)
    for word in sorted(VOCABULARY, key=lambda w: (-len(w), w)):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for piece in pieces[1:]:
            if (left, piece) not in merges:
                merges.append((left, piece))
            left += piece
            vocab.setdefault(left, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_LENGTH)


def t5_tokenizer():
    """A T5 unigram tokenizer with one piece per grammar word (characters as the fallback), in memory."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"\u2581{w}", -1.0) for w in VOCABULARY]
    pieces += [("\u2581", -3.0)] + [(c, -4.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=pieces)


def text_encoders(seed: int = 0):
    """The random, frozen CLIP and T5 encoders (32 wide); the T5's relative position bias zeroed."""
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    clip = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32,
                                        intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                                        vocab_size=160, max_position_embeddings=CLIP_LENGTH)).eval()
    t5 = T5EncoderModel(T5Config(vocab_size=96, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2)).eval()
    with torch.no_grad():
        t5.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.zero_()
    return clip.requires_grad_(False), t5.requires_grad_(False)


def build_pipeline(seed: int = 0, vae=None, transformer=None):
    """The flux-mini ``FluxPipeline``, untrained where ``vae`` or ``transformer`` is not given."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    clip, t5 = text_encoders(seed)
    torch.manual_seed(seed + 1)
    vae = vae if vae is not None else AutoencoderKL(**VAE_CONFIG)
    transformer = transformer if transformer is not None else FluxTransformer2DModel(**TRANSFORMER_CONFIG)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae.eval(), text_encoder=clip,
                        tokenizer=clip_tokenizer(), text_encoder_2=t5, tokenizer_2=t5_tokenizer(),
                        transformer=transformer.eval())
    pipe.set_progress_bar_config(disable=True)
    configure(pipe)
    return pipe


def load_pipeline(path: Path | str | None = None, device: str | torch.device = "cpu"):
    """``FluxPipeline.from_pretrained`` of the shipped folder (or ``path``), offline, progress bar off."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(path or pipeline_path()), local_files_only=True).to(device)
    pipe.set_progress_bar_config(disable=True)
    configure(pipe)
    return pipe


def configure(pipe) -> None:
    """Sample at IMAGE_SIZE when no size is given: ``FluxPipeline`` defaults to ``default_sample_size`` (128)
    latent pixels times the VAE's factor, 512 here, a size flux-mini never saw. Name it flux-mini, so that
    reports, tune's best.json and the adherence scorer know it as that, not as its class."""
    pipe.hasten_name = "flux-mini"
    pipe.default_sample_size = IMAGE_SIZE // pipe.vae_scale_factor
