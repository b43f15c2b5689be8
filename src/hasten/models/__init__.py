"""Embedded models: ``gmm`` / ``gmm-flow`` (exact, analytic), ``digits`` (a small trained DDPM) and
``digits-cond`` (the same, conditioned on a digit prompt, with classifier-free guidance); and
``flux-mini``, a diffusers ``FluxPipeline`` trained here (:mod:`.flux_mini`), which opens as a pipeline.

A model spec may carry options as ``name:key=value``: ``gmm-flow:shape=4096x64``
(the mixture in Flux's packed 1024x1024 latent shape), ``gmm:components=2``.
Pipelines and every other spec are opened by :mod:`hasten.opening`, which sits
above this package and the integrations.
"""

from __future__ import annotations

import torch

from hasten.errors import HastenError
from hasten.models.base import EmbeddedModel

MODELS = ("gmm", "gmm-flow", "digits", "digits-cond")
#: pipelines trained here and shipped as saved diffusers folders; they open as pipelines (``--model flux-mini``)
SHIPPED_PIPELINES = ("flux-mini",)
#: adherence scorers by name: images in [0, 1] and their captions -> the fraction that show what they ask
SCORERS = ("shapes",)
#: the scorer each model with a caption grammar is judged by (bench, tune and the race report its adherence)
MODEL_SCORERS = {"flux-mini": "shapes"}
#: options of the embedded models given as ``name:key=value``
MODEL_OPTIONS = {"gmm": ("shape", "components", "dim", "seed"), "gmm-flow": ("shape", "components", "dim", "seed"),
                 "digits": (), "digits-cond": ()}
#: embedded models whose network takes a dtype (the mixtures are exact in float64)
TAKES_DTYPE = ("digits", "digits-cond")


def shipped_pipeline(spec: str):
    """The folder of the shipped pipeline ``spec`` (a :class:`~pathlib.Path`), or None for any other spec."""
    if spec not in SHIPPED_PIPELINES:
        return None
    from hasten.models.flux_mini import pipeline_path

    return pipeline_path()


def adherence(scorer: str | None, images, prompt) -> float | None:
    """``scorer``'s adherence of ``images`` (n, 3, H, W) in [0, 1] to ``prompt`` (one caption for all, or one per
    image); None without a scorer, images or prompt, or where a prompt is not of the scorer's grammar."""
    if scorer is None or images is None or prompt is None:
        return None
    if scorer not in SCORERS:
        raise HastenError(f"adherence scorer must be one of {', '.join(SCORERS)}, got {scorer!r}")
    from hasten.models import shapes

    prompts = [prompt] * images.shape[0] if isinstance(prompt, str) else list(prompt)
    try:
        for p in prompts:
            shapes.parse_caption(p)
    except HastenError:
        return None
    return shapes.adherence(images, prompts)


def configure_shipped(spec: str, pipe) -> None:
    """Give a loaded shipped pipeline the defaults it was trained with and its name (a no-op for any other spec):
    reports, configs and scores then know it as ``spec``, not as its class."""
    if spec in SHIPPED_PIPELINES:
        from hasten.models.flux_mini import configure

        configure(pipe)


def _parse_model_spec(spec: str) -> tuple[str, dict]:
    name, *parts = spec.split(":")
    options: dict = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq or key not in MODEL_OPTIONS.get(name, ()):
            valid = ", ".join(MODEL_OPTIONS.get(name, ())) or "none"
            raise HastenError(f"bad model option {part!r} in {spec!r}; {name} takes: {valid} (as key=value)")
        if key in options:
            raise HastenError(f"model option {key} is given twice in {spec!r}; give it once")
        try:
            options[key] = tuple(int(v) for v in value.split("x")) if key == "shape" else int(value)
        except ValueError:
            raise HastenError(f"model option {key} needs {'sizes like 4096x64' if key == 'shape' else 'an integer'}, "
                              f"got {value!r}") from None
    return name, options


def is_embedded(spec: str) -> bool:
    """Whether ``spec`` names an embedded model (with or without options)."""
    return spec.split(":")[0] in MODELS


def embedded_class(spec: str) -> type:
    """The class of the embedded model ``spec`` names (imported, not instantiated)."""
    base = spec.split(":")[0]
    if base in ("gmm", "gmm-flow"):
        from hasten.models.gmm import GaussianMixture

        return GaussianMixture
    if base == "digits":
        from hasten.models.digits import DigitsModel

        return DigitsModel
    if base == "digits-cond":
        from hasten.models.digits_cond import DigitsCondModel

        return DigitsCondModel
    raise HastenError(f"unknown model {spec!r}; valid: {', '.join(MODELS)}")


def load_embedded(spec: str, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None) -> EmbeddedModel:
    """An embedded model by spec (``gmm``, ``gmm-flow:shape=4096x64``, ``digits``, ``digits-cond``) on ``device``.

    ``dtype`` is the network's (the digits models only; None is float32); the mixtures are
    exact in float64 and refuse any other dtype than float32, which they do not use.
    """
    from hasten.devices import parse_dtype

    base, options = _parse_model_spec(spec)
    cls = embedded_class(base)
    chosen = parse_dtype(dtype)
    if base not in TAKES_DTYPE and chosen not in (None, torch.float32):
        raise HastenError(f"dtype {str(chosen).removeprefix('torch.')} does not apply to {base}: it is computed "
                          f"exactly in float64; dtype applies to {', '.join(TAKES_DTYPE)} and pipelines")
    device = torch.device(device)
    if base in ("gmm", "gmm-flow"):
        return cls(kind="vp" if base == "gmm" else "flow", device=device, **options)
    return cls(device=device, dtype=chosen or torch.float32)


__all__ = ["EmbeddedModel", "MODELS", "embedded_class", "is_embedded", "load_embedded"]
