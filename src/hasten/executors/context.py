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

This module holds the mesh layout; what each network family needs to run in
context-parallel mode lives with the families, in :mod:`hasten.integrations.context`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

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


def time_group(mesh):
    """The process group of this rank's time dim (its peers at the same context position)."""
    return mesh["time"].get_group()
