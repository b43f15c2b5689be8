"""Context parallelism per network family: which diffusers networks can share a forward, and putting them in that mode.

The mesh layout (``ContextLayout``, the time groups, the DeviceMesh) is
:mod:`hasten.executors.context`'s; here each pipeline's networks are checked
against the layout (diffusers' ``_cp_plan``, head counts, token counts, the
attention backend) and switched into diffusers' own context-parallel mode
(``ContextParallelConfig`` + ``enable_parallelism``) over a rank's group.

diffusers' ``enable_parallelism`` looks up the rank's device as
``rank % torch.accelerator.device_count()``, which divides by zero on a
machine without an accelerator. :func:`_cpu_device_count` answers 1 for that
one call, and only when no accelerator exists: on GPUs nothing changes.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from hasten.errors import HastenError
from hasten.executors.context import ContextLayout, layout_mesh


def networks_of(pipe) -> list[torch.nn.Module]:
    """The denoising networks of a pipeline (Wan 2.2 has two experts)."""
    nets = [getattr(pipe, name, None) for name in ("transformer", "transformer_2")]
    nets = [n for n in nets if n is not None]
    return nets or [n for n in (getattr(pipe, "unet", None),) if n is not None]


def check_family(network_class: Any, config: dict, layout: ContextLayout) -> None:
    """Refuse a network with no diffusers context-parallel plan, or a head count Ulysses cannot split.

    Takes the class and its config, so that a saved pipeline is checked before its weights load.
    """
    name = getattr(network_class, "__name__", str(network_class))
    if getattr(network_class, "_cp_plan", None) is None:
        raise HastenError(f"context_parallel: {name} has no context-parallel plan in diffusers (_cp_plan); families "
                          f"with one: {', '.join(cp_families())}")
    heads = config.get("num_attention_heads")
    if layout.ulysses > 1 and isinstance(heads, int) and heads % layout.ulysses:
        raise HastenError(f"context_parallel {layout.spec}: {name} has {heads} attention heads, which ulysses="
                          f"{layout.ulysses} cannot split evenly; use a ulysses degree dividing {heads}, or ring=")


def cp_families() -> list[str]:
    """The diffusers network classes that carry a context-parallel plan."""
    import diffusers

    names = []
    for attr in dir(diffusers):
        if attr.endswith("Model") and "Transformer" in attr:
            try:
                cls = getattr(diffusers, attr)
            except Exception:  # noqa: BLE001 - an optional dependency missing: not a family here
                continue
            if getattr(cls, "_cp_plan", None) is not None:
                names.append(attr)
    return sorted(names)


def check_folder(folder, layout: ContextLayout) -> None:
    """A saved pipeline's networks checked from their configs alone, before anything loads."""
    import json
    from pathlib import Path

    import diffusers

    index = json.loads((Path(folder) / "model_index.json").read_text())
    found = False
    for part in ("transformer", "transformer_2", "unet"):
        entry = index.get(part)
        if not isinstance(entry, list) or len(entry) != 2 or entry[1] is None:
            continue
        found = True
        cls = getattr(diffusers, entry[1], None)
        config_file = Path(folder) / part / "config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        check_family(cls if cls is not None else entry[1], config, layout)
    if not found:
        raise HastenError(f"context_parallel: {folder} holds no transformer to share; families with a "
                          f"context-parallel plan: {', '.join(cp_families())}")


def sequence_tokens(network, latents: torch.Tensor) -> int:
    """The image/video tokens one sample puts through ``network``: packed latents (B, S, C), or patches of (B, C, ...)."""
    if latents.ndim == 3:
        return latents.shape[1]
    patch = network.config.get("patch_size", 1)
    patch = tuple(patch) if isinstance(patch, (list, tuple)) else (patch,) * (latents.ndim - 2)
    spatial = latents.shape[2:]
    patch = patch[-len(spatial):] if len(patch) >= len(spatial) else (1,) * (len(spatial) - len(patch)) + patch
    tokens = 1
    for n, p in zip(spatial, patch):
        tokens *= n // p
    return tokens


def check_sequence(network, layout: ContextLayout, latents: torch.Tensor, text_tokens: int | None) -> None:
    """Refuse a call whose image tokens (or text tokens, where the plan splits them) the degree does not divide."""
    c = layout.degree
    tokens = sequence_tokens(network, latents)
    name = type(network).__name__
    if tokens % c:
        raise HastenError(f"context_parallel {layout.spec}: this call puts {tokens} image tokens through {name}, "
                          f"which {c} ranks cannot split evenly; choose a size whose token count is a multiple of {c}")
    splits_text = "encoder_hidden_states" in (network._cp_plan or {}).get("", {})
    if splits_text and text_tokens is not None and text_tokens % c:
        raise HastenError(f"context_parallel {layout.spec}: {name} splits the text too, and this call has "
                          f"{text_tokens} text tokens, which {c} ranks cannot split evenly; set a max sequence "
                          f"length that is a multiple of {c}")


#: attention backends whose context-parallel forward returns the log-sum-exp ring attention merges by
RING_BACKENDS = ("_native_cudnn", "flash", "flash_hub", "flash_varlen_hub", "_flash_3_hub", "_flash_3_varlen_hub",
                 "sage", "sage_hub")


def network_backend(network=None) -> str:
    """The attention backend ``network`` runs (its processors' own, else diffusers' active one)."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    for module in (network.modules() if network is not None else ()):
        backend = getattr(getattr(module, "processor", None), "_attention_backend", None)
        if backend is not None:
            return str(getattr(backend, "value", backend))
    active, _ = _AttentionBackendRegistry.get_active_backend()
    return str(getattr(active, "value", active))


def check_backend(layout: ContextLayout, network=None) -> None:
    """Refuse ring attention on a backend without the log-sum-exp it needs (diffusers' default, native)."""
    if layout.ring == 1:
        return
    backend = network_backend(network)
    if backend not in RING_BACKENDS:
        raise HastenError(f"context_parallel {layout.spec}: ring attention needs an attention backend that returns "
                          f"the log-sum-exp ({', '.join(RING_BACKENDS[:3])}, sage: CUDA), and this network uses "
                          f"{backend!r}; set DIFFUSERS_ATTN_BACKEND=_native_cudnn (or flash) on GPUs, or use "
                          "ulysses=C, which works with every backend")


@contextlib.contextmanager
def _cpu_device_count() -> Iterator[None]:
    """On a machine without an accelerator, ``torch.accelerator.device_count()`` answers 1 inside the block.

    diffusers' ``_resolve_parallel_config`` computes ``rank % device_count()``
    for the rank's device, which divides by zero on CPU ranks. With any
    accelerator present the block changes nothing.
    """
    if torch.accelerator.device_count() > 0:
        yield
        return
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda *args, **kwargs: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original


def enable_context_parallel(network, layout: ContextLayout, mesh) -> None:
    """Put ``network`` in diffusers' context-parallel mode over this rank's group of ``mesh`` (idempotent per layout)."""
    current = getattr(network, "_parallel_config", None)
    if current is not None:
        cp = getattr(current, "context_parallel_config", None)
        if cp is not None and (cp.ulysses_degree, cp.ring_degree) == (layout.ulysses, layout.ring) and \
                cp.mesh is mesh:
            return
        raise HastenError(f"{type(network).__name__} already runs with another parallel layout; load the pipeline "
                          "again for a new --context-parallel")
    check_family(type(network), dict(network.config), layout)
    check_backend(layout, network)
    from diffusers import ContextParallelConfig
    from diffusers.utils import logging

    config = ContextParallelConfig(ulysses_degree=layout.ulysses, ring_degree=layout.ring, mesh=mesh)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the "experimental feature" warning, once per rank and network
    try:
        with _cpu_device_count():
            network.enable_parallelism(config=config)
    except ValueError as err:  # e.g. an attention backend without context parallelism
        raise HastenError(f"context_parallel {layout.spec}: {type(network).__name__}: {err}") from None
    finally:
        logging.set_verbosity(verbosity)


def prepare_network(pipe, layout: ContextLayout, device: torch.device):
    """Every denoising network of ``pipe`` in context-parallel mode over this rank's group; returns the mesh."""
    mesh = layout_mesh(layout, device)
    nets = networks_of(pipe)
    if not nets:
        raise HastenError(f"context_parallel: {type(pipe).__name__} has no transformer to share")
    for net in nets:
        enable_context_parallel(net, layout, mesh)
    return mesh
