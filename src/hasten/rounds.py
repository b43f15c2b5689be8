"""The round vocabulary every layer speaks: what a method asks for and what it delivers.

A method is a generator: it yields a *round* (a list of :class:`Eval` requests
that do not depend on each other) and receives the outputs in the same order,
or it yields a :class:`Hit` (a final output it can already deliver) and
receives ``None``. Its return value is its final latent. Executors answer
rounds, caches answer some requests of a round, the engine drives and counts;
all of them import this module, none of them imports a method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generator, Union

import torch


@dataclass
class Eval:
    """One model evaluation: latent ``x`` (B, ...) at grid index ``index``.

    ``track`` names the trajectory the point belongs to (a CHORDS core); caches
    keep one history per track. ``rebased`` says the trajectory was corrected
    since its last request (CHORDS' rectification): what a cache kept of it is
    stale.
    """

    x: torch.Tensor
    index: int
    track: int = 0
    rebased: bool = False


@dataclass
class Hit:
    """A final output delivered while sampling runs.

    ``core`` labels the trajectory (CHORDS core, 1 = slowest). The engine fills
    ``round`` (rounds of model latency so far), ``all_rounds`` (cache-only
    rounds included), ``nfe`` (model evaluations), ``wall_s`` (elapsed since the
    run began) and, when there was an earlier hit, ``residual`` (relative
    change from it).
    """

    core: int
    x: torch.Tensor
    round: int = 0
    nfe: int = 0
    wall_s: float = 0.0
    residual: float | None = None
    all_rounds: int = 0


Yielded = Union[list[Eval], Hit]
MethodRun = Generator[Yielded, Union[list[torch.Tensor], None], torch.Tensor]
