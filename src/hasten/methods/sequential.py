"""Sequential sampling: one model call per step, N rounds (Eq. 6 of CHORDS).

A multistep step (:mod:`hasten.multistep`) gets the trajectory's history of
data predictions, as the scheduler's own loop keeps it.
"""

from __future__ import annotations

import torch

from hasten.errors import HastenError
from hasten.multistep import remember
from hasten.rounds import Eval, Hit, MethodRun
from hasten.steps import Step


class Sequential:
    """The reference sampler every parallel method is measured against."""

    name = "sequential"
    budget = None  # takes no options

    def validate(self, steps: int) -> None:
        if steps < 1:
            raise HastenError(f"steps must be >= 1, got {steps}")

    def hit_tracks(self, steps: int) -> int:
        return 1

    def max_rounds(self, steps: int) -> int:
        return steps

    def max_width(self, steps: int) -> int:
        return 1

    def describe(self, steps: int) -> dict:
        return {"cores": 1}

    def solve(self, x: torch.Tensor, step: Step) -> MethodRun:
        history: tuple = ()
        for i in range(step.grid.steps):
            (out,) = yield [Eval(x, i)]
            x, history = step(x, out, i, i + 1, history=history), remember(step, history, x, out, i)
        yield Hit(core=1, x=x)
        return x
