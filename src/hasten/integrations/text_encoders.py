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


def llama_tokenizer():
    from transformers import LlamaTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for ch in sorted(set("".join(WORDS))):
        vocab.setdefault(ch, len(vocab))
    for w in WORDS:
        vocab.setdefault("\u2581" + w, len(vocab))
    return LlamaTokenizerFast(vocab=vocab, merges=[], pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                              unk_token="<unk>")


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
