"""The embedded ``digits-cond`` model: the digits DDPM conditioned on its class, with classifier-free guidance.

Its prompt is a digit (``"7"``), or empty for an unconditional sample; one
prompt per sample is a list. The network is the ``digits`` UNet with a class
embedding, trained with the label dropped to a "no digit" class 10 for 15% of
the examples (Ho & Salimans 2022, Alg. 1), so one network gives both the
conditional and the unconditional prediction. Guidance is
``eps = eps(x, none) + w (eps(x, digit) - eps(x, none))`` (their Eq. 6 with
``w = 1 + their w``), computed by :class:`~hasten.integrations.denoisers.PipelineDenoiser`
as for every pipeline, the two rows batched in one forward.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from hasten.errors import HastenError
from hasten.models.digits import COND_UNET_CONFIG, COND_WEIGHTS_PATH, NULL_CLASS, DigitsModel, _load_unet

#: the guidance scale when a call gives none (chosen from tools/train_digits.py --conditional's evaluation)
DEFAULT_GUIDANCE = 2.0
PROMPTS = tuple(str(d) for d in range(10))


def digit_label(prompt: Any, where: str = "prompt") -> int:
    """The class of one prompt: ``"0"``..``"9"`` (surrounding spaces ignored), or the null class for ``""``."""
    if not isinstance(prompt, str):
        raise HastenError(f"{where} must be a digit 0-9 as a string, or empty for unconditional, "
                          f"got {type(prompt).__name__}")
    text = prompt.strip()
    if text == "":
        return NULL_CLASS
    if text not in PROMPTS:
        shown = prompt if len(prompt) <= 40 else prompt[:40] + "..."
        raise HastenError(f"{where} must be one digit 0-9, or empty for unconditional, got {shown!r}")
    return int(text)


class DigitsCondModel(DigitsModel):
    """The embedded class-conditional digits DDPM (16x16 grey, epsilon, the ``digits`` DDIM grid).

    ``with_call({"prompt": "7", "guidance_scale": 2.0})`` is a view of the same
    network for one run; a list prompt gives one digit per sample. Without a
    call it samples unconditionally.
    """

    name = "digits-cond"
    CALL_KEYS = ("prompt", "guidance_scale")

    def __init__(self, weights: Path | str = COND_WEIGHTS_PATH, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, *, _unet=None):
        self.unet = _unet if _unet is not None else _load_unet(COND_UNET_CONFIG, Path(weights), device, dtype,
                                                               " --conditional")
        self.device = torch.device(device) if _unet is None else next(_unet.parameters()).device
        self.labels: tuple[int, ...] = (NULL_CLASS,)
        self.guidance_scale = DEFAULT_GUIDANCE

    @classmethod
    def check_call(cls, call: dict[str, Any], batch: int | None = None) -> tuple[tuple[int, ...], float]:
        """``call``'s labels (one, or one per sample) and guidance scale, or a HastenError naming the bad value.

        Needs no weights: ``hasten.opening`` calls it before the model loads.
        """
        unknown = sorted(set(call) - set(cls.CALL_KEYS))
        if unknown:
            raise HastenError(f"{', '.join(unknown)} apply to diffusers pipelines; the embedded model {cls.name} "
                              f"takes {' and '.join(cls.CALL_KEYS)}")
        prompt = call.get("prompt", "")
        if isinstance(prompt, (list, tuple)):
            if not prompt:
                raise HastenError("prompt: a list of prompts needs one per sample, got an empty list")
            if batch is not None and len(prompt) != batch:
                raise HastenError(f"prompt: a list of prompts needs one per sample: {batch} samples, "
                                  f"{len(prompt)} prompts")
            labels = tuple(digit_label(p, f"prompt[{k}]") for k, p in enumerate(prompt))
        else:
            labels = (digit_label(prompt),)
        scale = call.get("guidance_scale", DEFAULT_GUIDANCE)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 1:
            raise HastenError(f"guidance_scale must be a finite number >= 1 (1 is no guidance), got {scale!r}")
        return labels, float(scale)

    def with_call(self, call: dict[str, Any], batch: int | None = None) -> "DigitsCondModel":
        """A view sharing this network, for ``call``'s prompt(s) and guidance scale; ``batch`` checks a list prompt."""
        view = DigitsCondModel(_unet=self.unet)
        view.labels, view.guidance_scale = self.check_call(call, batch)
        return view

    @property
    def guided(self) -> bool:
        """Whether a run makes two network rows per sample (some digit given, guidance above 1)."""
        return self.guidance_scale != 1.0 and any(label != NULL_CLASS for label in self.labels)

    def denoiser(self, grid):
        from hasten.guidance import PipelineDenoiser

        labels = torch.tensor(self.labels, device=self.device)
        unet = self.unet

        def call(x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
            return unet(x, t, class_labels=cond["label"]).sample

        dtype = next(unet.parameters()).dtype
        uncond = {"label": torch.full_like(labels, NULL_CLASS)} if self.guided else None
        return _PerSampleLabels(PipelineDenoiser(call, grid, {"label": labels}, uncond, self.guidance_scale,
                                                 dtype=dtype, device=self.device), len(self.labels))


class _PerSampleLabels:
    """A digits denoiser whose one label serves every sample, or whose list gives one per sample."""

    needs_sample_ids = True

    def __init__(self, inner, count: int):
        self.inner, self.count = inner, count
        self.device = inner.device
        self.grid = inner.grid

    @property
    def rows_per_input(self) -> int:
        return self.inner.rows_per_input

    def __call__(self, x: torch.Tensor, index: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        return self.inner(x, index, sample if self.count > 1 else torch.zeros_like(sample))

