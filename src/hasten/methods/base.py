"""What a method exchanges with the engine.

A method is a generator: it yields a *round* (a list of :class:`Eval` requests
that do not depend on each other) and receives the outputs in the same order,
or it yields a :class:`Hit` (a final output it can already deliver) and
receives ``None``. Its return value is its final latent. It never calls the
model and never counts its own cost: the engine does both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generator, Protocol, Union

import torch

from hasten.steps import Step


@dataclass
class Eval:
    """One model evaluation: latent ``x`` (B, ...) at grid index ``index``.

    ``track`` names the trajectory the point belongs to (a CHORDS core); caches
    keep one history per track.
    """

    x: torch.Tensor
    index: int
    track: int = 0


@dataclass
class Hit:
    """A final output delivered while sampling runs.

    ``core`` labels the trajectory (CHORDS core, 1 = slowest). The engine fills
    ``round`` (rounds of model latency so far), ``all_rounds`` (cache-only
    rounds included), ``nfe`` (model evaluations), ``wall_s`` (elapsed since the
    run began) and, when there was an earlier hit, ``residual`` (relative
    change from it).
    """

    core: int
    x: torch.Tensor
    round: int = 0
    nfe: int = 0
    wall_s: float = 0.0
    residual: float | None = None
    all_rounds: int = 0


Yielded = Union[list[Eval], Hit]
MethodRun = Generator[Yielded, Union[list[torch.Tensor], None], torch.Tensor]


class Method(Protocol):
    """A round-based sampling algorithm."""

    name: str

    def validate(self, steps: int) -> None:
        """Raise :class:`hasten.errors.HastenError` if the method cannot run on ``steps`` steps."""

    def cores(self, steps: int) -> int:
        """How many trajectories may produce hits (labels 1..cores)."""

    def max_rounds(self, steps: int) -> int:
        """Upper bound on rounds, for progress bars."""

    def max_width(self, steps: int) -> int | None:
        """Most requests in one round (None: no fixed bound), e.g. to pad forwards for ``torch.compile``."""

    def solve(self, x: torch.Tensor, step: Step) -> MethodRun:
        """Run from initial noise ``x`` (grid point 0) to the end of ``step.grid``."""

    def describe(self, steps: int) -> dict:
        """Parameters worth reporting (JSON-serialisable)."""
