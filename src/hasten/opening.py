"""Opening any ``--model`` spec: embedded models and diffusers pipelines, above both.

``hasten.models`` knows the embedded models, ``hasten.integrations.model`` the
pipelines; neither imports the other. What a spec names is decided here
(:func:`model_source`), and :func:`open_model` turns it into a model for a
run: an embedded model, or a pipeline called with the run's prompt, size,
batch and seed. :func:`bind_model` gives an already opened model a run's call
(a prompt for ``digits-cond``, a new pipeline call on the loaded pipeline), so
a service keeps one model loaded for many requests.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from hasten.errors import HastenError

MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def model_source(spec: str) -> str:
    """What ``--model`` names: ``embedded``, ``random`` (``random:NAME``), ``folder`` or ``id``.

    A spec that is neither an embedded name, nor an existing folder, nor
    shaped like a Hugging Face id (``owner/name``) is refused here, with the
    reason, before anything is loaded.
    """
    from hasten.models import MODELS, SHIPPED_PIPELINES, is_embedded

    if is_embedded(spec):
        return "embedded"
    if spec in SHIPPED_PIPELINES:  # a folder inside the package
        return "folder"
    if spec.startswith("random:"):
        return "random"
    path = Path(spec).expanduser()
    if path.is_dir():
        return "folder"
    if path.exists():
        raise HastenError(f"model {spec}: this is a file; give a pipeline folder saved with save_pretrained")
    if MODEL_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return "id"
    if os.sep in spec or spec.startswith((".", "~")):
        raise HastenError(f"model {spec}: no such folder")
    raise HastenError(f"model {spec!r} is not an embedded model ({', '.join(MODELS)}), a shipped pipeline "
                      f"({', '.join(SHIPPED_PIPELINES)}), a random real-size network (random:flux-dev, "
                      "random:sd3.5-medium, random:wan2.1-1.3b), a pipeline folder, or a Hugging Face model id "
                      "(owner/name)")


def shipped_or_spec(spec: str) -> str:
    """The folder of a shipped pipeline (``flux-mini``), else ``spec`` unchanged: what the pipeline loaders take."""
    from hasten.models import shipped_pipeline

    folder = shipped_pipeline(spec)
    return spec if folder is None else str(folder)


def load_spec_pipeline(spec: str, device, dtype=None, local_files_only: bool = False):
    """The diffusers pipeline ``spec`` names, loaded; a shipped one with the size it was trained at (flux-mini
    samples 64x64 by default, where a plain ``FluxPipeline`` folder would default to 512)."""
    from hasten.integrations.model import load_pipeline
    from hasten.models import configure_shipped

    pipe = load_pipeline(shipped_or_spec(spec), device, dtype, local_files_only)
    configure_shipped(spec, pipe)
    return pipe


def check_not_embedded(model: Any, layout) -> None:
    """Context parallelism splits a pipeline's attention: refuse an embedded model (a spec or an opened one)."""
    name = model if isinstance(model, str) else getattr(model, "name", type(model).__name__)
    embedded = model_source(model) == "embedded" if isinstance(model, str) else not hasattr(model, "pipe")
    if embedded:
        raise HastenError(f"context_parallel {layout.spec}: {name} is an embedded model with no attention to split; "
                          "it applies to diffusers pipelines with a transformer (a folder, a model id, random:NAME)")


def check_model_source(spec: str, layout, local_files_only: bool = False) -> None:
    """A ``--model`` spec checked for a context-parallel ``layout`` before its weights load.

    An embedded model is refused; a random network is checked by its class, a
    folder or model id by the network class its ``model_index.json`` names.
    """
    from hasten.integrations.context import check_backend, check_family, check_folder

    check_not_embedded(spec, layout)
    source = model_source(spec)
    check_backend(layout)
    if source == "random":
        import diffusers

        from hasten.integrations.random_pipelines import SPECS, parse_random_spec

        name, tiny = parse_random_spec(spec)
        entry = SPECS[name]
        check_family(getattr(diffusers, entry.transformer), entry.tiny if tiny else entry.config, layout)
    elif source in ("folder", "id"):
        from hasten.integrations.model import pipeline_folder

        check_folder(pipeline_folder(shipped_or_spec(spec), local_files_only), layout)


def bind_model(model: Any, call: dict[str, Any] | None = None, batch: int = 1, seed: int = 0) -> Any:
    """``model`` (already opened) for a run with ``call``, ``batch`` samples and ``seed``.

    A pipeline model is re-bound to the call on the same loaded pipeline; a
    model that takes a prompt (``with_call``, e.g. ``digits-cond``) gets a view
    sharing its network; any other model refuses call arguments.
    """
    from hasten.integrations.model import PipelineModel

    call = {k: v for k, v in (call or {}).items() if v is not None}
    if isinstance(model, PipelineModel):
        return model.bind(call, batch, seed)
    if not call:
        return model
    keys = getattr(model, "CALL_KEYS", None)
    if keys is None or not hasattr(model, "with_call"):
        raise HastenError(f"{', '.join(sorted(call))} apply to diffusers pipelines (a folder, a model id or "
                          f"random:NAME), not to the embedded model {getattr(model, 'name', model)}")
    return model.with_call(call, batch)  # the model refuses what it does not take


def open_model(spec: Any, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None,
               batch: int = 1, seed: int = 0, call: dict[str, Any] | None = None, local_files_only: bool = False):
    """Any ``--model``: an embedded model, or a pipeline (folder, model id, ``random:NAME``) called with ``call``.

    The one way a spec becomes a model (``hasten sample/bench --model``,
    ``hasten.sample``, ``hasten.load_model``). ``call`` holds the pipeline's
    call arguments (prompt, guidance_scale, height, ...); embedded models take
    only those they declare (``CALL_KEYS``). A model object is bound to the call.
    """
    from hasten.devices import resolve_device, resolve_dtype

    if not isinstance(spec, str):
        return bind_model(spec, call, batch, seed)
    dev = resolve_device(device)
    if model_source(spec) == "embedded":
        from hasten.models import load_embedded

        if local_files_only:
            raise HastenError("local_files_only applies to Hugging Face model ids, not to embedded models")
        given = {k: v for k, v in (call or {}).items() if v is not None}
        cls = _embedded_class(spec)
        if given and not hasattr(cls, "with_call"):  # refused before the weights load
            raise HastenError(f"{', '.join(sorted(given))} apply to diffusers pipelines (a folder, a model id or "
                              f"random:NAME), not to the embedded model {spec}")
        if given and hasattr(cls, "check_call"):  # a prompted model checks its call before its weights load
            cls.check_call(given, batch)
        return bind_model(load_embedded(spec, dev, resolve_dtype(dtype, dev)), given, batch, seed)
    from hasten.integrations.model import PipelineModel

    pipe = load_spec_pipeline(spec, dev, dtype, local_files_only)
    return PipelineModel(pipe, call, batch=batch, seed=seed)


def _embedded_class(spec: str):
    from hasten.models import embedded_class

    return embedded_class(spec)


def load_model(name: Any, device: str | torch.device | None = None, dtype: torch.dtype | str | None = None, *,
               batch: int = 1, seed: int = 0, call: dict | None = None, local_files_only: bool = False):
    """Any model spec opened (``hasten.load_model``): ``digits``, ``gmm-flow:shape=4096x64``, a pipeline folder, ...

    ``device`` (default cpu) is where its latents and network live; ``dtype``
    the network's dtype. A pipeline is opened for ``call`` with ``batch``
    samples from ``seed``. A model object is returned as it is (bound to ``call``
    when one is given).
    """
    if not isinstance(name, str):
        return bind_model(name, call, batch, seed) if call else name
    return open_model(name, device or "cpu", dtype, batch, seed, call, local_files_only)
