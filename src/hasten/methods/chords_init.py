"""CHORDS initialisation sequences (Section 2.3, Theorem 2.5, Section 4.1).

The sequence ``I = [i_1 = 0 < i_2 < ... < i_K]`` gives the grid index where each
core starts. Core k (1-based) lands at round ``N - i_k + (k - 1)``.
"""

from __future__ import annotations

import math
from typing import Sequence

from hasten.errors import HastenError

#: The paper's sequences for N = 50 (Section 4.1).
PAPER_INIT: dict[tuple[int, int], tuple[int, ...]] = {
    (4, 50): (0, 8, 16, 32),
    (6, 50): (0, 3, 6, 12, 24, 36),
    (8, 50): (0, 2, 4, 8, 16, 24, 32, 40),
}


def default_speedup(cores: int) -> float:
    """Continuous target speedup used when none is given.

    The paper does not say how to pick ``s`` for other settings. We choose the
    fastest core's start fraction ``t_K = 0.48 + 0.04 K`` (capped at 0.9), which
    reproduces the paper's choices 0.64, 0.72 and 0.80 for K = 4, 6, 8, and
    return ``s = 1 / (1 - t_K)`` (Definition 2.3). For K = 2 that rule would
    give t_2 = 0.56, but core 2 is only rectified if core 1 reaches its start
    before it lands (``2 t_2 - t_1 <= 1``, i.e. t_2 <= 1/2): unrectified, it is a
    bare coarse solve (measured RMSE 0.35 on digits). We take t_2 = 0.4.
    """
    if cores == 2:
        return 1.0 / (1.0 - 0.4)
    return 1.0 / (1.0 - min(0.9, 0.48 + 0.04 * cores))


def continuous_init(cores: int, speedup: float) -> list[float]:
    """Start times in [0, 1) from the recursion after Theorem 2.5.

    ``t_K = (s - 1) / s``, ``t_{K+1} = 1``, and for k = K-1 .. 2:
    ``t_k = 2 t_{k+1} - t_{k+2}`` if ``t_{k+1} > 2 t_{k+2} / 3`` else ``t_{k+1} / 2``;
    ``t_1 = 0``. For K = 4 and s = 10/3 this is [0, 0.2, 0.4, 0.7] (Fig. 2).
    """
    if not isinstance(cores, int) or cores < 1:
        raise HastenError(f"cores must be an integer >= 1, got {cores!r}")
    if not speedup > 1:
        raise HastenError(f"speedup must be > 1, got {speedup!r}")
    if cores == 1:
        return [0.0]
    t = [0.0] * (cores + 2)  # 1-based: t[1..K], t[K+1] = 1
    t[cores] = (speedup - 1) / speedup
    t[cores + 1] = 1.0
    for k in range(cores - 1, 1, -1):
        if t[k + 1] > 2 * t[k + 2] / 3:
            t[k] = 2 * t[k + 1] - t[k + 2]
        else:
            t[k] = t[k + 1] / 2
    return t[1 : cores + 1]


def discretize(times: Sequence[float], steps: int) -> list[int]:
    """Map start times to distinct grid indices 0 = i_1 < ... < i_K <= N - 1.

    Each time goes to the nearest index (halves up, after trimming float
    noise), then is pushed up to keep the sequence strictly increasing and down
    to leave room for the faster cores. Last, each core k >= 2 is moved down
    where needed so that ``2 i_k - i_{k-1} <= N``: core k-1 then reaches core k's
    start no later than the round core k lands, so every core is rectified at
    least once (the recursion satisfies this exactly in continuous time, and
    rounding could break it by one step).
    """
    k = len(times)
    idx = [math.floor(round(t * steps, 9) + 0.5) for t in times]
    idx[0] = 0
    for c in range(1, k):
        idx[c] = max(idx[c], idx[c - 1] + 1)
    for c in range(k - 1, 0, -1):
        idx[c] = min(idx[c], steps - k + c, (idx[c + 1] - 1) if c + 1 < k else steps - 1)
    for c in range(1, k):
        idx[c] = max(idx[c - 1] + 1, min(idx[c], (steps + idx[c - 1]) // 2))
    return idx


def uniform_init(cores: int, steps: int) -> list[int]:
    """The uniform ablation sequence ``i_k = (k - 1) * (N // K)`` (Table 3)."""
    check_cores_steps(cores, steps)
    return [c * (steps // cores) for c in range(cores)]


def check_cores_steps(cores: int, steps: int) -> None:
    if not isinstance(cores, int) or isinstance(cores, bool) or cores < 1:
        raise HastenError(f"cores must be an integer >= 1, got {cores!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise HastenError(f"steps must be an integer >= 1, got {steps!r}")
    if cores > 1 and steps <= cores:
        raise HastenError(f"steps must be greater than cores (N > K): got steps={steps}, cores={cores}")


def validate_init(init: Sequence[int], cores: int, steps: int) -> list[int]:
    """Check a user-given sequence: K integers, starting at 0, strictly increasing, below N."""
    check_cores_steps(cores, steps)
    seq = list(init)
    if len(seq) != cores:
        raise HastenError(f"init must have one entry per core ({cores}), got {len(seq)}: {seq}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in seq):
        raise HastenError(f"init must contain integer grid indices, got {seq}")
    if seq[0] != 0:
        raise HastenError(f"init must start at 0 (the slowest core solves from the noise), got {seq}")
    if any(b <= a for a, b in zip(seq, seq[1:])):
        raise HastenError(f"init must be strictly increasing, got {seq}")
    if seq[-1] >= steps:
        raise HastenError(f"init entries must be below steps={steps} (a core must take at least one step), got {seq}")
    return seq


def resolve_init(
    cores: int, steps: int, init: Sequence[int] | str | None = None, speedup: float | None = None
) -> list[int]:
    """The sequence CHORDS runs with.

    ``init`` may be an explicit sequence (validated), ``"uniform"``, ``"paper"``
    or ``None``. ``"paper"``/``None`` take the paper's sequence when (K, N) is
    one of its settings and no ``speedup`` is asked for; otherwise the
    recursion after Theorem 2.5 with ``speedup`` (default :func:`default_speedup`).
    """
    check_cores_steps(cores, steps)
    if isinstance(init, str):
        if init == "uniform":
            return uniform_init(cores, steps)
        if init != "paper":
            raise HastenError(f"init must be 'paper', 'uniform' or a list of grid indices, got {init!r}")
        init = None
    if init is not None:
        return validate_init(init, cores, steps)
    if speedup is None and (cores, steps) in PAPER_INIT:
        return list(PAPER_INIT[(cores, steps)])
    if cores == 1:
        return [0]
    s = default_speedup(cores) if speedup is None else speedup
    return discretize(continuous_init(cores, s), steps)


def landing_round(init: Sequence[int], steps: int, core: int) -> int:
    """Round at which core ``core`` (1-based) delivers its output: ``N - i_k + (k - 1)``."""
    return steps - init[core - 1] + core - 1
