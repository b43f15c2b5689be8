"""What the iterative parallel-in-time methods (SRDS, the sliding window family) share.

Both split the N grid steps into S sub-intervals solved together and iterate
until a tolerance; both stop at an iteration cap with a warning rather than a
silent wrong result.
"""

from __future__ import annotations


class NotConvergedWarning(UserWarning):
    """A parallel method hit its iteration cap before its tolerance."""


def subinterval_bounds(steps: int, subintervals: int) -> list[int]:
    """Grid indices of S + 1 coarse points splitting N steps as evenly as possible."""
    return [round(c * steps / subintervals) for c in range(subintervals + 1)]
