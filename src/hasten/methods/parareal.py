"""The parareal / multigrid correction shared by CHORDS and SRDS."""

from __future__ import annotations

import torch

from hasten.steps import Step


def rectify(
    step: Step,
    fine: torch.Tensor,
    stale_x: torch.Tensor,
    stale_out: torch.Tensor,
    accurate_x: torch.Tensor,
    accurate_out: torch.Tensor,
    i: int,
    j: int,
) -> torch.Tensor:
    """Correct a fine solution at grid point j with a more accurate state at i.

    ``fine + G(accurate) - G(stale)`` where ``G`` is the one-step jump i -> j.
    With the Euler jump this is CHORDS Eq. 3-4 / Algorithm 1 line 8:
    ``fine + r(x_acc, x_stale, t_i, t_j - t_i)``; it is also the parareal update
    ``U = F(U_k) + G(U_{k+1}) - G(U_k)`` of SRDS. No model call: both outputs
    were computed when the two trajectories stood at point i.
    """
    return fine - step(stale_x, stale_out, i, j) + step(accurate_x, accurate_out, i, j)
