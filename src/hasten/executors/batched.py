"""The batched executor: one forward per round, batch = requests x samples."""

from __future__ import annotations

import time

import torch

from hasten.denoise import Denoiser, denoiser_device
from hasten.devices import synchronize
from hasten.executors.base import denoise_round, flatten_round, input_rows
from hasten.rounds import Eval


class BatchedExecutor:
    """Concatenate a round's requests along the batch and call the denoiser once.

    ``max_batch`` (optional) bounds the network rows of one forward (with
    batched classifier-free guidance a sample is two rows); a larger round is
    split into chunks and still counts as one round of model latency.
    ``pad_rows`` (set by :meth:`fix_shape` for ``torch.compile``) pads every
    forward to one fixed number of rows.

    ``model_seconds`` sums the time inside the denoiser, for overhead reports.
    On an accelerator that needs a device synchronisation per forward, so it
    is measured only when ``time_model`` is set (default: on the CPU).
    """

    def __init__(self, denoiser: Denoiser, max_batch: int | None = None, time_model: bool | None = None):
        self.denoiser = denoiser
        self.device = denoiser_device(denoiser)
        self.max_rows = input_rows(denoiser, max_batch)
        self.max_batch = max_batch
        self.pad_rows: int | None = None
        self.time_model = self.device.type == "cpu" if time_model is None else time_model
        self.model_seconds = 0.0

    def fix_shape(self, round_rows: int | None) -> int:
        """Pad every forward to the rows of the widest round, capped by ``max_batch``; returns that size."""
        self.pad_rows = min(v for v in (round_rows, self.max_rows) if v is not None)
        return self.pad_rows

    def evaluate(self, evals: list[Eval]) -> list[torch.Tensor]:
        x, index, sizes = flatten_round(evals)
        if self.time_model:
            synchronize(x.device)
            start = time.perf_counter()
        out = denoise_round(self.denoiser, x, index, sizes, slice(None), self.max_rows, self.pad_rows)
        if self.time_model:
            synchronize(x.device)
            self.model_seconds += time.perf_counter() - start
        return list(out.split(sizes))
