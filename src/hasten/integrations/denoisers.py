"""What diffusers models add to the core denoiser (:mod:`hasten.guidance`): Wan 2.2's expert switch."""

from __future__ import annotations

from typing import Callable

import torch

from hasten.guidance import PipelineDenoiser, select_rows

__all__ = ["PipelineDenoiser", "switch_at"]


def switch_at(boundary: float, high: Callable, low: Callable) -> Callable:
    """``call(x, t, cond)`` that runs rows with model time ``t >= boundary`` on ``high`` and the rest on ``low``.

    Wan 2.2's two experts: the pipeline picks ``transformer`` at and above
    ``boundary_ratio * num_train_timesteps`` and ``transformer_2`` below. The
    choice depends on the row's grid point only, so a round mixing points on
    both sides of the boundary runs each row on its own expert (two forwards,
    one host read of the split per forward). Times compare in float32, as the
    pipeline compares its scheduler's timesteps.
    """

    def call(xm: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        upper = t.float() >= boundary
        n_upper = int(upper.sum())
        if n_upper == t.shape[0]:
            return high(xm, t, cond)
        if n_upper == 0:
            return low(xm, t, cond)
        parts = [(rows, net(xm[rows], t[rows], select_rows(cond, rows)))
                 for rows, net in ((upper.nonzero().squeeze(1), high), ((~upper).nonzero().squeeze(1), low))]
        out = parts[0][1].new_empty((t.shape[0], *parts[0][1].shape[1:]))
        for rows, part in parts:
            out[rows] = part
        return out

    return call

