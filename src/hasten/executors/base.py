"""Executors run one round of model evaluations; the engine does the accounting."""

from __future__ import annotations

from typing import Protocol

import torch

from hasten.methods.base import Eval


class Executor(Protocol):
    """Evaluate a round of independent requests and return outputs in order."""

    def evaluate(self, evals: list[Eval]) -> list[torch.Tensor]: ...


def flatten_round(evals: list[Eval]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """A round as one batch: latents (rows, ...), grid index per row, and rows per request."""
    sizes = [e.x.shape[0] for e in evals]
    x = torch.cat([e.x for e in evals])
    index = torch.cat([torch.full((n,), e.index, dtype=torch.long) for e, n in zip(evals, sizes)])
    return x, index, sizes


def call_denoiser(denoiser, x: torch.Tensor, index: torch.Tensor, sizes: list[int], rows: slice) -> torch.Tensor:
    """Call a denoiser on ``rows`` of a flattened round.

    Denoisers with per-sample conditioning (``needs_sample_ids = True``, e.g. a
    prompt per sample) also get each row's sample number within its request.
    """
    if getattr(denoiser, "needs_sample_ids", False):
        sample = torch.cat([torch.arange(n) for n in sizes])
        return denoiser(x[rows], index[rows], sample[rows])
    return denoiser(x[rows], index[rows])
