"""Two-dimensional parallelism: time groups across ranks, diffusers' context parallelism inside each group.

torchrun's W ranks become T = W / C *time groups* of C ranks, on one
DeviceMesh with dims ``("time", "ring", "ulysses")`` (the last two, flattened,
are the *context* dim of C = ring x ulysses ranks). Rank r sits in time group
r // C. The distributed executor splits each round's rows over the T groups
and all-gathers over the ``time`` dim only; the C ranks of a group evaluate
the same rows together, through the pipeline's transformer in diffusers' own
context-parallel mode (``ContextParallelConfig`` + ``enable_parallelism``),
handed the group's sub-mesh. hasten writes no attention sharding: diffusers
splits the sequence, runs Ulysses all-to-all / ring attention, and gathers
the output on every rank of the group, so every rank continues with
bitwise-identical data and takes the same method and cache decisions.

diffusers' ``enable_parallelism`` looks up the rank's device as
``rank % torch.accelerator.device_count()``, which divides by zero on a
machine without an accelerator. :func:`_cpu_device_count` answers 1 for that
one call, and only when no accelerator exists: on GPUs nothing changes.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from hasten.errors import HastenError

#: ``ulysses=C``, ``ring=C`` or both, joined by ``:``
GRAMMAR = "ulysses=C, ring=C or both (ulysses=2:ring=2), each C an integer >= 1"
_PART = re.compile(r"^(ulysses|ring)=(\d+)$")  # no spaces, as every other spec
#: per process group: the mesh of each layout, built once (building one is a collective every rank joins)
_MESHES: dict[tuple[int, int, int, int, str], Any] = {}


@dataclass(frozen=True)
class ContextLayout:
    """A context-parallel degree: ``ulysses`` x ``ring`` ranks share one forward."""

    ulysses: int = 1
    ring: int = 1

    @property
    def degree(self) -> int:
        """C: the ranks of one time group."""
        return self.ulysses * self.ring

    @property
    def spec(self) -> str:
        """The canonical spec (``ulysses=2:ring=2``)."""
        parts = [f"ulysses={self.ulysses}"] if self.ulysses > 1 else []
        parts += [f"ring={self.ring}"] if self.ring > 1 else []
        return ":".join(parts)


def parse_context_parallel(spec: Any) -> ContextLayout | None:
    """A ``--context-parallel`` spec as a layout (None for None); refuses anything else, naming the grammar."""
    if spec is None:
        return None
    if isinstance(spec, ContextLayout):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise HastenError(f"context_parallel must be {GRAMMAR}, got {spec!r}")
    degrees: dict[str, int] = {}
    for part in spec.split(":"):
        match = _PART.match(part)
        if match is None:
            raise HastenError(f"context_parallel must be {GRAMMAR}, got {spec!r}")
        name, value = match.group(1), int(match.group(2))
        if name in degrees:
            raise HastenError(f"context_parallel {spec!r} gives {name} twice; give it once")
        if value < 1:
            raise HastenError(f"context_parallel {spec!r}: {name} must be an integer >= 1")
        degrees[name] = value
    layout = ContextLayout(**degrees)
    if layout.degree == 1:
        raise HastenError(f"context_parallel {spec!r} shares no forward (degree 1); leave it out for time "
                          "parallelism alone")
    return layout


def check_world(layout: ContextLayout, world: int) -> int:
    """T = W / C time groups; refuses a world the degree does not divide."""
    if world % layout.degree:
        raise HastenError(f"context_parallel {layout.spec}: the {world} ranks of this launch are not divisible by "
                          f"the context degree {layout.degree}; launch a multiple of {layout.degree} ranks "
                          "(--nproc_per_node x --nnodes)")
    return world // layout.degree


def layout_mesh(layout: ContextLayout, device: torch.device):
    """This launch's DeviceMesh (time, ring, ulysses), built once per layout (every rank must call it)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    world = dist.get_world_size()
    time_groups = check_world(layout, world)
    key = (id(dist.group.WORLD), time_groups, layout.ring, layout.ulysses, device.type)  # a new group: a new mesh
    if key not in _MESHES:
        _MESHES[key] = init_device_mesh(device.type, (time_groups, layout.ring, layout.ulysses),
                                        mesh_dim_names=("time", "ring", "ulysses"))
    return _MESHES[key]


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


def time_group(mesh):
    """The process group of this rank's time dim (its peers at the same context position)."""
    return mesh["time"].get_group()


def prepare_network(pipe, layout: ContextLayout, device: torch.device):
    """Every denoising network of ``pipe`` in context-parallel mode over this rank's group; returns the mesh."""
    mesh = layout_mesh(layout, device)
    nets = networks_of(pipe)
    if not nets:
        raise HastenError(f"context_parallel: {type(pipe).__name__} has no transformer to share")
    for net in nets:
        enable_context_parallel(net, layout, mesh)
    return mesh
