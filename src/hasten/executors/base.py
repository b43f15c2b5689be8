"""Executors run one round of model evaluations; the engine does the accounting.

What every executor shares lives here: a round flattened into one batch of
rows on the latents' device, and :func:`forward_rows`, which calls the
denoiser on rows in chunks of at most ``max_rows`` and, for ``torch.compile``,
pads every chunk to one fixed number of rows so that a single compiled graph
serves the whole run. Padding rows repeat a real row and are dropped; they are
never counted as evaluations (the engine counts requests, not rows).
"""

from __future__ import annotations

from typing import Protocol

import torch

from hasten.denoise import call_denoiser, needs_sample_ids, network_rows
from hasten.errors import HastenError
from hasten.rounds import Eval


class Executor(Protocol):
    """Evaluate a round of independent requests and return outputs in order."""

    def evaluate(self, evals: list[Eval]) -> list[torch.Tensor]: ...


def flatten_round(evals: list[Eval]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """A round as one batch: latents (rows, ...), grid index per row, and rows per request.

    The index lives on the latents' device, so nothing crosses to the host.
    """
    sizes = [e.x.shape[0] for e in evals]
    x = torch.cat([e.x for e in evals])
    index = torch.cat([torch.full((n,), e.index, dtype=torch.long, device=x.device) for e, n in zip(evals, sizes)])
    return x, index, sizes


def sample_ids(sizes: list[int], device: torch.device) -> torch.Tensor:
    """Each row's sample number within its request (for per-sample conditioning such as prompts)."""
    return torch.cat([torch.arange(n, device=device) for n in sizes])


def input_rows(denoiser, max_batch: int | None) -> int | None:
    """``max_batch`` network rows as denoiser input rows; refuses a bound below one input row."""
    if max_batch is None:
        return None
    per = network_rows(denoiser)
    if max_batch < per:
        raise HastenError(f"max_batch={max_batch} is below the {per} network rows one sample needs "
                          f"(classifier-free guidance runs each sample twice); use max_batch >= {per}")
    return max_batch // per


def forward_rows(denoiser, x: torch.Tensor, index: torch.Tensor, samples: torch.Tensor | None,
                 max_rows: int | None = None, pad_rows: int | None = None) -> torch.Tensor:
    """Denoise rows of a flattened round in chunks of at most ``max_rows`` input rows.

    With ``pad_rows`` every chunk is padded to exactly that many rows (copies
    of its last row), and the padding is cut from the output.
    """
    total = x.shape[0]
    if total == 0:
        return x.new_zeros((0, *x.shape[1:]))
    chunk = max_rows or total
    if pad_rows is not None:
        chunk = min(chunk, pad_rows)
    outs = []
    for a in range(0, total, chunk):
        rows = slice(a, min(a + chunk, total))
        xs, ix = x[rows], index[rows]
        ss = None if samples is None else samples[rows]
        n = xs.shape[0]
        if pad_rows is not None and n < pad_rows:
            extra = pad_rows - n
            xs = torch.cat([xs, xs[-1:].expand(extra, *xs.shape[1:])])
            ix = torch.cat([ix, ix[-1:].expand(extra)])
            ss = None if ss is None else torch.cat([ss, ss[-1:].expand(extra)])
        out = call_denoiser(denoiser, xs, ix, ss)
        outs.append(out[:n])
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def denoise_round(denoiser, x: torch.Tensor, index: torch.Tensor, sizes: list[int], rows: slice,
                  max_rows: int | None = None, pad_rows: int | None = None) -> torch.Tensor:
    """Call a denoiser on ``rows`` of a flattened round (chunked and padded as asked).

    Denoisers with per-sample conditioning (``needs_sample_ids = True``, e.g. a
    prompt per sample) also get each row's sample number within its request.
    """
    samples = sample_ids(sizes, x.device)[rows] if needs_sample_ids(denoiser) else None
    return forward_rows(denoiser, x[rows], index[rows], samples, max_rows, pad_rows)
