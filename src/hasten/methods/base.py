"""The :class:`Method` protocol: a round-based sampling algorithm.

A method speaks the round vocabulary of :mod:`hasten.rounds`; it never calls
the model and never counts its own cost: the engine does both.
"""

from __future__ import annotations

from typing import Protocol

import torch

from hasten.rounds import Eval, Hit, MethodRun
from hasten.steps import Step

__all__ = ["Eval", "Hit", "Method", "MethodRun"]


class Method(Protocol):
    """A round-based sampling algorithm."""

    name: str

    def validate(self, steps: int) -> None:
        """Raise :class:`hasten.errors.HastenError` if the method cannot run on ``steps`` steps."""

    def hit_tracks(self, steps: int) -> int:
        """How many trajectories may produce hits (their labels, ``Hit.core``, run 1..hit_tracks)."""

    def max_rounds(self, steps: int) -> int:
        """Upper bound on rounds, for progress bars."""

    def max_width(self, steps: int) -> int | None:
        """Most requests in one round (None: no fixed bound), e.g. to pad forwards for ``torch.compile``."""

    def solve(self, x: torch.Tensor, step: Step) -> MethodRun:
        """Run from initial noise ``x`` (grid point 0) to the end of ``step.grid``."""

    def describe(self, steps: int) -> dict:
        """Parameters worth reporting (JSON-serialisable)."""
