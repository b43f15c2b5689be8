"""Embedded models: ``gmm`` / ``gmm-flow`` (exact, analytic) and ``digits`` (a small trained DDPM)."""

from __future__ import annotations

from hasten.errors import HastenError
from hasten.models.base import EmbeddedModel

MODELS = ("gmm", "gmm-flow", "digits")


def load_model(name: "str | EmbeddedModel") -> EmbeddedModel:
    """An embedded model by name (``gmm``, ``gmm-flow``, ``digits``), or ``name`` itself if it is one."""
    if not isinstance(name, str):
        return name
    if name == "gmm":
        from hasten.models.gmm import GaussianMixture

        return GaussianMixture(kind="vp")
    if name == "gmm-flow":
        from hasten.models.gmm import GaussianMixture

        return GaussianMixture(kind="flow")
    if name == "digits":
        from hasten.models.digits import DigitsModel

        return DigitsModel()
    raise HastenError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")


__all__ = ["EmbeddedModel", "MODELS", "load_model"]
