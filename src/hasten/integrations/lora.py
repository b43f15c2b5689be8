"""LoRA adapters on a diffusers pipeline, through diffusers' ``load_lora_weights`` and peft (``hasten[lora]``).

``--lora PATH[:SCALE]`` (``hasten sample``) and ``--lora NAME=PATH[:SCALE]``
(``hasten serve``) are parsed here (:func:`parse_lora`, :func:`parse_named_lora`)
and their files checked before any model loads (:func:`check_lora_file`: it
exists, it is a safetensors file, it holds LoRA weights). :func:`load_lora`
loads one under a name and refuses, in one line naming the file, one that
adapts no layer of the pipeline's network or whose shapes do not fit it;
:func:`use_lora` picks the adapter (or none) a run samples with. The
adapted network is called as any other, so every method and cache runs on it;
a LoRA at scale 0 is the base model.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from hasten.errors import HastenError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _scale(text: str, flag: str, whole: str) -> float:
    try:
        scale = float(text)
    except ValueError:
        raise HastenError(f"{flag} {whole}: the scale after ':' must be a number, got {text!r}") from None
    if not -16 <= scale <= 16:
        raise HastenError(f"{flag} {whole}: the scale must be in [-16, 16], got {scale}")
    return scale


def parse_lora(text: str, flag: str = "--lora") -> tuple[str, float]:
    """``PATH[:SCALE]`` -> (path, scale); the scale defaults to 1 (a path holding ':' needs an explicit scale)."""
    path, sep, tail = text.rpartition(":")
    if sep and tail and re.fullmatch(r"[-+0-9.eE]+", tail):
        return path, _scale(tail, flag, text)
    return text, 1.0


def parse_named_lora(text: str, flag: str = "--lora") -> tuple[str, str, float]:
    """``NAME=PATH[:SCALE]`` -> (name, path, scale)."""
    name, sep, rest = text.partition("=")
    if not sep or not rest:
        raise HastenError(f"{flag} {text}: give NAME=PATH[:SCALE]")
    if not NAME.match(name):
        raise HastenError(f"{flag} {text}: the name must be letters, digits, '_', '-' or '.', 1-64 characters")
    return (name, *parse_lora(rest, flag))


def check_lora_file(path: str, flag: str = "--lora") -> None:
    """Refuse a missing, unreadable or non-LoRA file in one line naming it (reads the safetensors header only)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise HastenError(f"{flag} {path}: no such file")
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            keys = list(f.keys())
    except Exception as err:  # noqa: BLE001 - a corrupt header or a file of another format: one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HastenError(f"{flag} {path}: not a readable safetensors file ({first})") from None
    if not any("lora" in k for k in keys):
        raise HastenError(f"{flag} {path}: holds no LoRA weights (no lora_A / lora_down keys)")


def _network(pipe):
    return getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)


def _adapted_layers(pipe, name: str) -> int:
    network = _network(pipe)
    return sum(1 for m in network.modules() if name in getattr(m, "lora_A", {}) or name in getattr(m, "lora_B", {}))


def load_lora(pipe, path: str, name: str, flag: str = "--lora") -> None:
    """Load the LoRA at ``path`` into ``pipe`` as adapter ``name``; a file that does not fit it -> one line."""
    try:
        import peft  # noqa: F401
    except ImportError:
        raise HastenError("LoRA needs peft: pip install 'hasten[lora]'") from None
    check_lora_file(path, flag)
    if not hasattr(pipe, "load_lora_weights"):
        raise HastenError(f"{flag} {path}: {type(pipe).__name__} does not load LoRA weights")
    quiet = logging.getLogger("diffusers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "No LoRA keys associated to CLIPTextModel": noise for a network-only LoRA
    try:
        pipe.load_lora_weights(str(Path(path).expanduser()), adapter_name=name)
    except Exception as err:  # noqa: BLE001 - key, shape and format mismatches all become one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        _drop(pipe, name)
        raise HastenError(f"{flag} {path}: does not fit {type(pipe).__name__} ({first[:300]})") from None
    finally:
        quiet.setLevel(level)
    if _adapted_layers(pipe, name) == 0:
        _drop(pipe, name)
        raise HastenError(f"{flag} {path}: adapts no layer of {type(_network(pipe)).__name__} (a LoRA of another "
                          "model?)")


def _drop(pipe, name: str) -> None:
    try:
        pipe.delete_adapters([name])
    except Exception:  # noqa: BLE001 - nothing was loaded under that name
        pass


def use_lora(pipe, name: str | None, scale: float = 1.0) -> None:
    """Sample with adapter ``name`` at ``scale`` (None: the base model, every loaded adapter off)."""
    if name is None:
        if getattr(_network(pipe), "_hf_peft_config_loaded", False):
            pipe.disable_lora()
        return
    pipe.enable_lora()
    pipe.set_adapters([name], [scale])
