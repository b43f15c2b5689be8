"""CHORDS: multi-core hierarchical ODE rectification (Han et al., Algorithm 1).

Core k (1-based) starts at grid index ``i_k`` of the initialisation sequence.
Rounds 1..k-1 bring it there by coarse jumps ``i_1 -> i_2 -> ... -> i_k`` that
reuse the evaluation of the core starting in that round (Eq. 7, first case);
from round k on it takes one fine step per round (Eq. 7, second case) and lands
at round ``N - i_k + (k - 1)``.

Rectification (Eq. 3-4, Algorithm 1 line 8): core k remembers its *begin*
point b (initially ``i_k``), the state there and the model output there. When
core k-1 stands at b in the same round, core k, then stepping to
``j = b + (i_k - i_{k-1})``, replaces its fine result F by ``F - G(stale) +
G(accurate)`` with G the one-step jump b -> j from its own stale state and from
core k-1's state. j becomes the new begin point. No extra model call is made:
both outputs at b were computed anyway.

A rectified core's next request is marked ``rebased``, so a cache forgets the
outputs it kept of that core's stale trajectory instead of extrapolating them
at the corrected one (docs/BENCHMARKS.md, "CHORDS with AB-Cache").

Core 1 is never rectified, so run to the end it reproduces sequential sampling.
Memory: O(K) latents (current, begin state and begin output per core).

Multistep steps (:mod:`hasten.multistep`): every core carries the history of
its own fine steps, so core 1 is the sequential multistep trajectory. A
coarse jump is a first-order step and restarts the history of the cores it
moves (their next fine step warms up as the scheduler does at its first);
rectification's G is the first-order jump b -> j, and the rectified core
keeps its own history (docs/DESIGN.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch

from hasten.rounds import Eval, Hit, MethodRun
from hasten.methods.declared import check_options, option
from hasten.methods.chords_init import check_cores_steps, landing_round, resolve_init
from hasten.methods.parareal import rectify
from hasten.multistep import remember
from hasten.steps import Step


log = logging.getLogger("hasten")


def parse_init(text: str):
    """The command line's ``--init``: ``paper``, ``uniform`` or comma-separated grid indices."""
    text = text.strip()
    if text in ("paper", "uniform"):
        return text
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise ValueError(f"needs paper, uniform or comma-separated grid indices like 0,8,16,32, got {text!r}")
    return values


@dataclass
class Chords:
    """CHORDS with ``cores`` cores (its options are declared by its fields)."""

    cores: int | None = option(None, "number of cores K (default: the length of init, else 4, capped at steps - 1 "
                                     "with a notice on short grids; a K given is never changed: N <= K is refused)",
                               low=1)
    init: Sequence[int] | str | None = option(
        None, "initialisation: paper (the paper's sequence where defined, else the recursion after Theorem 2.5), "
              "uniform, or grid indices like 0,8,16,32", parse=parse_init, metavar="INIT")
    speedup: float | None = option(None, "target speedup s > 1 for the automatic init sequence (the recursion "
                                         "after Theorem 2.5)", above=1)
    name: ClassVar[str] = "chords"
    budget: ClassVar[str] = "cores"  # what --cores sets

    def __post_init__(self) -> None:
        check_options(self)
        self._noted: set[int] = set()  # step counts whose core cap was announced

    @property
    def n_cores(self) -> int:
        """K: the cores given, else the init sequence's length, else 4."""
        if self.cores is not None:
            return self.cores
        return len(self.init) if isinstance(self.init, (list, tuple)) else 4

    def cores_for(self, steps: int) -> int:
        """The cores that run on ``steps`` steps: the default K capped at N - 1 (CHORDS needs N > K)."""
        if self.cores is not None or isinstance(self.init, (list, tuple)) or steps > self.n_cores:
            return self.n_cores
        return max(1, steps - 1)

    def init_sequence(self, steps: int) -> list[int]:
        """The validated initialisation sequence for ``steps`` steps."""
        return resolve_init(self.cores_for(steps), steps, self.init, self.speedup)

    def validate(self, steps: int) -> None:
        cores = self.cores_for(steps)
        check_cores_steps(cores, steps)
        if cores < self.n_cores and steps not in self._noted:
            self._noted.add(steps)
            log.warning("hasten: CHORDS needs more steps than cores; %d steps run on %d core%s instead of %d",
                        steps, cores, "" if cores == 1 else "s", self.n_cores)
        self.init_sequence(steps)

    def hit_tracks(self, steps: int) -> int:
        return self.cores_for(steps)

    def max_rounds(self, steps: int) -> int:
        return steps

    def max_width(self, steps: int) -> int:
        return self.cores_for(steps)

    def describe(self, steps: int) -> dict:
        init = self.init_sequence(steps)
        return {
            "cores": len(init),
            "init": init,
            "landing_rounds": [landing_round(init, steps, k) for k in range(1, len(init) + 1)],
        }

    def solve(self, x: torch.Tensor, step: Step) -> MethodRun:
        n = step.grid.steps
        init = self.init_sequence(n)
        k_total = len(init)
        state = [x] * k_total  # current latent per core (0-based core c = k - 1)
        pos = [0] * k_total  # current grid index per core
        begin_pos = list(init)
        begin_x: list[torch.Tensor | None] = [x] + [None] * (k_total - 1)
        begin_out: list[torch.Tensor | None] = [None] * k_total
        done = [False] * k_total
        hist: list[tuple] = [()] * k_total  # each core's multistep history (data predictions of its last points)
        rebased: set[int] = set()  # cores rectified in the last round: their next request says so (for a cache)

        for rnd in range(1, n + 1):
            active = [c for c in range(min(rnd, k_total)) if not done[c]]
            if not active:
                break
            asked, rebased = rebased, set()
            outputs = yield [Eval(state[c], pos[c], track=c + 1, rebased=c in asked) for c in active]
            out = dict(zip(active, outputs))

            new: dict[int, torch.Tensor] = {}
            for c in active:
                i = pos[c]
                if i == begin_pos[c]:
                    begin_out[c] = out[c]
                fine = step(state[c], out[c], i, i + 1, history=hist[c])
                hist[c] = remember(step, hist[c], state[c], out[c], i)
                if c > 0 and pos[c - 1] == begin_pos[c]:
                    b, j = begin_pos[c], i + 1
                    fine = rectify(step, fine, begin_x[c], begin_out[c], state[c - 1], out[c - 1], b, j)
                    rebased.add(c)
                    begin_pos[c], begin_x[c], begin_out[c] = j, fine, None
                new[c] = fine

            if rnd < k_total:  # cores rnd+1..K jump i_rnd -> i_{rnd+1} on core rnd's evaluation
                lead = rnd - 1
                jumped = step(state[lead], out[lead], init[lead], init[rnd])
                for c in range(rnd, k_total):
                    state[c], pos[c], hist[c] = jumped, init[rnd], ()
                begin_x[rnd] = jumped

            landed = []
            for c in active:
                state[c], pos[c] = new[c], pos[c] + 1
                if pos[c] == n:
                    done[c] = True
                    landed.append(c)
            for c in sorted(landed, reverse=True):  # fastest core first
                yield Hit(core=c + 1, x=state[c])
        return state[0]
