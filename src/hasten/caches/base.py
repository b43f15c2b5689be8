"""The :class:`Cache` protocol, beside :class:`hasten.executors.base.Executor` and :class:`hasten.methods.base.Method`.

The engine tells a cache when a request's trajectory was corrected
(``rebase``, CHORDS' rectification), asks it, per request of a round, whether the model must answer
(``wants_model``); it takes the other answers from ``predict`` and shows the
cache every answer (``record``). A cache never calls the model and never counts
cost; a round in which it answers every request costs no model latency.
"""

from __future__ import annotations

from typing import Protocol

import torch

from hasten.grid import Grid
from hasten.rounds import Eval


class Cache(Protocol):
    """Answers some model evaluations from earlier outputs."""

    def reset(self, grid: Grid) -> None:
        """Forget every trajectory; called at the start of each run."""

    def wants_model(self, ev: Eval, round_number: int) -> bool:
        """Whether request ``ev`` of round ``round_number`` (1-based) must reach the model."""

    def rebase(self, track: int) -> None:
        """The trajectory ``track`` was moved onto a more accurate one: forget what is kept of it."""

    def predict(self, ev: Eval) -> torch.Tensor:
        """The cache's answer to ``ev`` (called only when ``wants_model`` said no)."""

    def record(self, ev: Eval, output: torch.Tensor, computed: bool) -> None:
        """Show the cache the answer to ``ev``, computed by the model or predicted."""

    def label(self) -> str:
        """A short description for reports."""

    def stats(self) -> dict:
        """What the last run computed and predicted (JSON-serialisable)."""
