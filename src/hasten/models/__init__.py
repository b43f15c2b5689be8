"""Embedded models: ``gmm`` / ``gmm-flow`` (exact, analytic) and ``digits`` (a small trained DDPM).

A model spec may carry options as ``name:key=value``: ``gmm-flow:shape=4096x64``
(the mixture in Flux's packed 1024x1024 latent shape), ``gmm:components=2``.
"""

from __future__ import annotations

import torch

from hasten.errors import HastenError
from hasten.models.base import EmbeddedModel

MODELS = ("gmm", "gmm-flow", "digits")
#: options of the embedded models given as ``name:key=value``
MODEL_OPTIONS = {"gmm": ("shape", "components", "dim", "seed"), "gmm-flow": ("shape", "components", "dim", "seed"),
                 "digits": ()}


def _parse_model_spec(spec: str) -> tuple[str, dict]:
    name, *parts = spec.split(":")
    options: dict = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq or key not in MODEL_OPTIONS.get(name, ()):
            valid = ", ".join(MODEL_OPTIONS.get(name, ())) or "none"
            raise HastenError(f"bad model option {part!r} in {spec!r}; {name} takes: {valid} (as key=value)")
        try:
            options[key] = tuple(int(v) for v in value.split("x")) if key == "shape" else int(value)
        except ValueError:
            raise HastenError(f"model option {key} needs {'sizes like 4096x64' if key == 'shape' else 'an integer'}, "
                              f"got {value!r}") from None
    return name, options


def is_embedded(spec: str) -> bool:
    """Whether ``spec`` names an embedded model (with or without options)."""
    return spec.split(":")[0] in MODELS


def load_model(name: "str | EmbeddedModel", device: str | torch.device | None = None,
               dtype: torch.dtype | None = None, *, batch: int = 1, seed: int = 0, call: dict | None = None,
               local_files_only: bool = False) -> EmbeddedModel:
    """Any ``--model``: an embedded model by spec (``gmm``, ``gmm-flow:shape=4096x64``, ``digits``), or ``name`` itself.

    ``device`` (default cpu) is where its latents and network live; ``dtype``
    the network's dtype (digits only; the mixtures are exact in float64).
    A pipeline folder, a Hugging Face model id or ``random:NAME`` opens the
    pipeline called with ``call`` for ``batch`` samples from ``seed``, as
    ``hasten sample --model`` and ``hasten.sample`` do
    (:func:`hasten.integrations.model.open_model`).
    """
    if not isinstance(name, str):
        return name
    device = torch.device(device or "cpu")
    if not is_embedded(name) or call or local_files_only:  # pipelines, and refusing their options elsewhere
        from hasten.integrations.model import open_model

        return open_model(name, device, dtype, batch, seed, call, local_files_only)
    base, options = _parse_model_spec(name)
    if base in ("gmm", "gmm-flow"):
        from hasten.models.gmm import GaussianMixture

        return GaussianMixture(kind="vp" if base == "gmm" else "flow", device=device, **options)
    if base == "digits":
        from hasten.models.digits import DigitsModel

        return DigitsModel(device=device, dtype=dtype or torch.float32)
    raise HastenError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")


__all__ = ["EmbeddedModel", "MODELS", "is_embedded", "load_model"]
