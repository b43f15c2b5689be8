"""The batched executor: one forward per round, batch = requests x samples."""

from __future__ import annotations

import time

import torch

from hasten.denoise import Denoiser
from hasten.errors import HastenError
from hasten.executors.base import call_denoiser, flatten_round
from hasten.methods.base import Eval


class BatchedExecutor:
    """Concatenate a round's requests along the batch and call the denoiser once.

    ``max_batch`` (optional) splits very large rounds into chunks to bound memory;
    a chunked round still counts as one round of model latency.
    """

    def __init__(self, denoiser: Denoiser, max_batch: int | None = None):
        if max_batch is not None and max_batch < 1:
            raise HastenError(f"max_batch must be >= 1, got {max_batch}")
        self.denoiser = denoiser
        self.max_batch = max_batch
        self.model_seconds = 0.0  # time spent inside the denoiser, for overhead reports

    def evaluate(self, evals: list[Eval]) -> list[torch.Tensor]:
        x, index, sizes = flatten_round(evals)
        start = time.perf_counter()
        step = self.max_batch or x.shape[0]
        out = torch.cat([call_denoiser(self.denoiser, x, index, sizes, slice(a, a + step))
                         for a in range(0, x.shape[0], step)])
        self.model_seconds += time.perf_counter() - start
        return list(out.split(sizes))
