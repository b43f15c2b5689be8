"""Every tiny random diffusers pipeline by name, for tests, docs and ``hasten make-tiny``; never used when sampling.

No download: networks are built from small configs with random weights (seeded) and tokenizers in
memory, after the pattern of diffusers' own ``get_dummy_components``: the text-to-image and video
ones in :mod:`hasten.testing.text_to_image`, the image-input ones in :mod:`hasten.testing.workflows`.
"""

from __future__ import annotations

from pathlib import Path

from hasten.errors import HastenError
from hasten.testing.text_to_image import (TEXT_TO_IMAGE_KINDS, TINY_CALLS, cogvideox_scheduler,
                                          text_to_image_pipeline, tiny_image, tiny_unet2d)
from hasten.testing.workflows import WORKFLOW_KINDS, workflow_pipeline

KINDS = TEXT_TO_IMAGE_KINDS + WORKFLOW_KINDS

__all__ = ["KINDS", "TINY_CALLS", "cogvideox_scheduler", "save_tiny_pipeline", "tiny_image", "tiny_pipeline",
           "tiny_unet2d"]


def tiny_pipeline(kind: str, prediction: str = "epsilon", scheduler_cls=None, seed: int = 0):
    """A tiny pipeline of one of :data:`KINDS`; ``prediction`` and ``scheduler_cls`` apply to the UNet families."""
    if kind not in KINDS:
        raise HastenError(f"unknown tiny pipeline {kind!r}; valid: {', '.join(KINDS)}")
    if kind in WORKFLOW_KINDS:
        return workflow_pipeline(kind, seed=seed, prediction=prediction, scheduler_cls=scheduler_cls)
    return text_to_image_pipeline(kind, prediction, scheduler_cls, seed)


def save_tiny_pipeline(kind: str, path: Path | str) -> Path:
    """Build a tiny pipeline and ``save_pretrained`` it to ``path``."""
    path = Path(path)
    tiny_pipeline(kind).save_pretrained(str(path))
    return path
