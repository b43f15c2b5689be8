"""Executors run one round of model evaluations; the engine does the accounting."""

from __future__ import annotations

from typing import Protocol

import torch

from hasten.methods.base import Eval


class Executor(Protocol):
    """Evaluate a round of independent requests and return outputs in order."""

    def evaluate(self, evals: list[Eval]) -> list[torch.Tensor]: ...
