"""A small random LoRA for a tiny pipeline (``hasten make-tiny --lora``), for tests and docs; never used when sampling.

The adapter is built with peft on the tiny pipeline's denoising network (the
attention projections), its B matrices drawn at random (peft starts them at
zero, a LoRA that changes nothing), and saved with the pipeline class's own
``save_lora_weights``, so ``pipe.load_lora_weights(path)`` reads it as it reads a
LoRA from the hub.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hasten.errors import HastenError

#: the attention projections the tiny LoRAs adapt (their names in diffusers' UNet and transformer blocks)
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def network_name(pipe) -> str:
    """``transformer`` or ``unet``: the network a LoRA of this pipeline adapts."""
    for name in ("transformer", "unet"):
        if getattr(pipe, name, None) is not None:
            return name
    raise HastenError(f"{type(pipe).__name__} has no transformer or UNet to adapt")


def tiny_lora(pipe, rank: int = 4, seed: int = 0, std: float = 0.5) -> dict[str, torch.Tensor]:
    """A random LoRA's weights for ``pipe``'s network, in diffusers' key layout; ``pipe`` is left unchanged."""
    try:
        from peft import LoraConfig
        from peft.utils import get_peft_model_state_dict
    except ImportError:
        raise HastenError("LoRA needs peft: pip install 'hasten[lora]'") from None
    network = getattr(pipe, network_name(pipe))
    network.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights=True),
                        adapter_name="tiny")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in network.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std / param.shape[-1] ** 0.5)
    weights = {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(network, adapter_name="tiny").items()}
    network.delete_adapters("tiny")
    return weights


def save_tiny_lora(pipe, path: Path | str, rank: int = 4, seed: int = 0) -> Path:
    """Write :func:`tiny_lora` of ``pipe`` to ``path`` (a ``.safetensors`` file) with the pipeline's ``save_lora_weights``."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise HastenError(f"--lora {path}: name a .safetensors file")
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = tiny_lora(pipe, rank, seed)
    type(pipe).save_lora_weights(str(path.parent), weight_name=path.name,
                                 **{f"{network_name(pipe)}_lora_layers": weights})
    return path
