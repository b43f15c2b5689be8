"""In-memory tokenizers and small random text encoders, built from configs (no download).

Random pipelines (``random:NAME``) pair a real-size denoiser with these small
text encoders, and the tiny test pipelines (:mod:`hasten.testing.pipelines`)
use them too; the vocabulary is a handful of words.
"""

from __future__ import annotations

WORDS = "a cat dog photo of red blue the".split()


def clip_tokenizer(max_length: int = 16):
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for w in WORDS:
        vocab[w + "</w>"] = len(vocab)
    for ch in sorted(set("".join(WORDS))):
        vocab.setdefault(ch, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def t5_tokenizer():
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"\u2581{w}", -1.0) for w in WORDS]
                       + [(c, -2.0) for c in "abcdefghijklmnopqrstuvwxyz"])


def llama_tokenizer(add_bos: bool = False):
    """A Llama-style BPE over :data:`WORDS`; ``add_bos`` prefixes ``<s>`` (so that an empty prompt has a token)."""
    from transformers import LlamaTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for ch in sorted(set("".join(WORDS))):
        vocab.setdefault(ch, len(vocab))
    for w in WORDS:
        vocab.setdefault("\u2581" + w, len(vocab))
    return LlamaTokenizerFast(vocab=vocab, merges=[], pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                              unk_token="<unk>", add_bos_token=add_bos)


def gemma_tokenizer():
    """A Gemma BPE (character level) over :data:`WORDS`, with ``<bos>`` first as Gemma's own tokenizer adds it."""
    from transformers import GemmaTokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for ch in sorted(set("".join(WORDS) + " ")):
        vocab.setdefault(ch, len(vocab))
    return GemmaTokenizer(vocab=vocab, merges=[], add_bos_token=True)


def gemma_text(hidden: int = 8, version: int = 1):
    """A small Gemma (Lumina 2: ``GemmaForCausalLM``) or Gemma 2 (Sana: ``Gemma2Model``) text encoder."""
    from transformers import Gemma2Config, Gemma2Model, GemmaConfig, GemmaForCausalLM

    if version == 1:
        return GemmaForCausalLM(GemmaConfig(head_dim=2, hidden_size=hidden, intermediate_size=37, num_attention_heads=4,
                                            num_hidden_layers=2, num_key_value_heads=4, vocab_size=64)).eval()
    return Gemma2Model(Gemma2Config(head_dim=16, hidden_size=hidden, intermediate_size=64, num_attention_heads=2,
                                    num_hidden_layers=1, num_key_value_heads=2, vocab_size=64,
                                    attn_implementation="eager")).eval()


def qwen_tokenizer():
    """A byte-level BPE without merges (one token per byte) with Qwen's chat tokens, as Qwen-Image's template needs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    vocab = {c: i for i, c in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        vocab[special] = len(vocab)
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    return Qwen2TokenizerFast(tokenizer_object=bpe, unk_token=None, bos_token=None, eos_token="<|endoftext|>",
                              pad_token="<|endoftext|>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])


def qwen_vl_text(hidden: int = 16):
    """A two-layer Qwen2.5-VL (text and a two-block vision tower) over :func:`qwen_tokenizer`'s 259 tokens."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = dict(bos_token_id=256, eos_token_id=256, pad_token_id=256)
    text = dict(hidden_size=hidden, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2, rope_theta=1e6, vocab_size=262,
                rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}, **ids)
    vision = dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=hidden)
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, hidden_size=hidden, vocab_size=262,
                              vision_start_token_id=259, vision_end_token_id=260, vision_token_id=261, **ids)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def clip_text(hidden: int, projection: int | None = None, positions: int = 16, with_projection: bool = False):
    """A two-layer CLIP text encoder (``CLIPTextModelWithProjection`` when ``with_projection``)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    extra = {} if projection is None else {"projection_dim": projection}
    config = CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=hidden,
                            intermediate_size=37, num_attention_heads=2, num_hidden_layers=2,
                            vocab_size=64, max_position_embeddings=positions, **extra)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval()


def t5_text(d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=64, d_model=d_model, d_ff=37, d_kv=8, num_heads=4,
                                   num_layers=2)).eval()


def umt5_text(d_model: int = 32):
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(vocab_size=64, d_model=d_model, d_ff=37, d_kv=8, num_heads=4,
                                       num_layers=2)).eval()


def glm_text(hidden: int = 32):
    """A two-layer GLM (CogView4's text encoder) over :func:`llama_tokenizer`'s vocabulary (pad id 3)."""
    from transformers import GlmConfig, GlmForCausalLM

    return GlmForCausalLM(GlmConfig(hidden_size=hidden, intermediate_size=8, num_hidden_layers=2,
                                    num_attention_heads=4, head_dim=8, vocab_size=64, pad_token_id=3,
                                    bos_token_id=1, eos_token_id=2)).eval()
