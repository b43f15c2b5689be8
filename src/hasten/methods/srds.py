"""SRDS: self-refining diffusion sampling by parareal iterations (Selvam et al.).

The N steps are split into B ~ sqrt(N) blocks with boundaries ``b_0..b_B``.
``U^n_k`` is the estimate at boundary n after iteration k:

* iteration 0, the coarse sweep: ``U^n_0 = G(U^{n-1}_0)`` with G one jump over a block;
* refinement: ``U^n_{k+1} = F(U^{n-1}_k) + G(U^{n-1}_{k+1}) - G(U^{n-1}_k)`` with F
  the block's fine steps, the parareal correction shared with CHORDS
  (``methods.parareal.rectify``). ``U^n_k`` is exact for n <= k.

Pipelined: the method is a dataflow; every round evaluates whatever is ready
(a boundary point's first evaluation serves both G and the first fine step of
the next block), earliest iteration first, at most ``cores`` evaluations per
round when a cap is given. It stops when the final sample changes by at most
``tol`` (relative, as the residual stop rule) between two iterations, or after
``max_iters`` iterations (default B, where the result is exact). Every
iteration's final sample is a hit, labelled by its iteration in ``core``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch

from hasten.errors import HastenError
from hasten.rounds import Eval, Hit, MethodRun
from hasten.methods.parareal import rectify
from hasten.checks import check_int
from hasten.methods.declared import check_options, option
from hasten.methods.subintervals import NotConvergedWarning, subinterval_bounds
from hasten.multistep import memory
from hasten.steps import Step
from hasten.stopping import relative_residual


@dataclass
class _Fine:
    """A block's fine solve in progress: F over block n from U^{n-1}_k."""

    x: torch.Tensor
    pos: int


@dataclass
class SRDS:
    """SRDS with ``blocks`` blocks (default round(sqrt(N))) and an optional cap of ``max_per_round`` evaluations a round."""

    blocks: int | None = option(None, "number of parareal blocks B (default round(sqrt(steps)))")  # 1..steps: validate
    tol: float = option(1e-3, "relative change of the final sample between iterations at which SRDS stops",
                        positive=True)
    max_iters: int | None = option(None, "iteration cap (default: B, where the result is exact); on reaching it "
                                         "the method returns its current result", low=1)
    max_per_round: int | None = option(None, "most evaluations in one round (default: whatever is ready)", low=1)
    name: ClassVar[str] = "srds"
    budget: ClassVar[str] = "max_per_round"

    def __post_init__(self) -> None:
        check_options(self)

    def validate(self, steps: int) -> None:
        check_int("blocks", self.blocks, 1, steps, allow_none=True)

    def n_blocks(self, steps: int) -> int:
        return self.blocks or max(1, round(math.sqrt(steps)))

    def hit_tracks(self, steps: int) -> int:
        return (self.max_iters or self.n_blocks(steps)) + 1

    def max_rounds(self, steps: int) -> int:
        return steps + self.n_blocks(steps)

    def max_width(self, steps: int) -> int | None:
        return self.max_per_round  # uncapped, the pipelined dataflow has no fixed width

    def describe(self, steps: int) -> dict:
        return {"blocks": self.n_blocks(steps), "tol": self.tol, "cores": self.max_per_round, "max_iters": self.max_iters}

    def solve(self, x: torch.Tensor, step: Step) -> MethodRun:
        if memory(step):  # before any round: its fine solves restart every block, so no multistep fixed point
            raise HastenError(f"srds runs first-order steps only, not the multistep {step.name!r} of this scheduler "
                              "(its fine solves restart at every block and would lose the step's history); use "
                              "sequential, chords, paradigms, parasolver or parasolver-turbo, or a first-order "
                              "scheduler (DDIM, Euler, FlowMatchEulerDiscrete)")
        n_steps = step.grid.steps
        nb = self.n_blocks(n_steps)
        b = subinterval_bounds(n_steps, nb)
        k_max = min(self.max_iters or nb, nb)

        def key(k: int, n: int) -> tuple[int, int]:
            """U^n_k equals U^n_n once n <= k: one canonical entry per exact point."""
            return (min(k, n), n)

        u = {(0, 0): x}  # (k, n) -> U^n_k
        out: dict[tuple[int, int], torch.Tensor] = {}  # model output at U^n_k
        coarse: dict[tuple[int, int], torch.Tensor] = {}  # G(U^n_k): jump b_n -> b_{n+1}
        fine: dict[tuple[int, int], _Fine] = {}  # running F over block n from U^{n-1}_k
        done: dict[tuple[int, int], torch.Tensor] = {}  # finished F results
        finals: dict[int, torch.Tensor] = {}  # iteration -> final sample U^B_k
        next_hit = 0

        while True:
            wanted: list[tuple[tuple, str, tuple]] = []
            for kn in u:
                if kn not in out and kn[1] < nb:
                    wanted.append(((kn[0], kn[1], 0), "point", kn))
            for kn, f in fine.items():
                wanted.append(((kn[0], kn[1] - 1, f.pos), "fine", kn))
            if not wanted:
                break
            wanted.sort()
            if self.max_per_round is not None:
                wanted = wanted[: self.max_per_round]
            outs = yield [Eval(u[kn] if kind == "point" else fine[kn].x,
                               b[kn[1]] if kind == "point" else fine[kn].pos) for _, kind, kn in wanted]

            for (_, kind, kn), o in zip(wanted, outs):
                k, n = kn
                if kind == "point":
                    out[kn] = o
                    coarse[kn] = step(u[kn], o, b[n], b[n + 1])
                    if k == 0 and (0, n + 1) not in u:  # the coarse sweep, iteration 0
                        u[(0, n + 1)] = coarse[kn]
                        if n + 1 == nb:
                            finals[0] = coarse[kn]
                    if k < k_max:  # F over block n+1 from this point, first step on this output
                        f = _Fine(step(u[kn], o, b[n], b[n] + 1), b[n] + 1)
                        self._advance(fine, done, (k, n + 1), f, b[n + 1])
                else:
                    f = fine.pop(kn)
                    f = _Fine(step(f.x, o, f.pos, f.pos + 1), f.pos + 1)
                    self._advance(fine, done, kn, f, b[n])

            progressed = True
            while progressed:  # apply every parareal update whose inputs are ready
                progressed = False
                for (k, n), f_res in list(done.items()):
                    new, old = key(k + 1, n - 1), key(k, n - 1)
                    if new == old:
                        value = f_res
                    elif new in coarse and old in coarse:
                        value = rectify(step, f_res, u[old], out[old], u[new], out[new], b[n - 1], b[n])
                    else:
                        continue
                    del done[(k, n)]
                    target = key(k + 1, n)
                    if target not in u:
                        u[target] = value
                    progressed = True
                    if n == nb:
                        finals[k + 1] = value

            while next_hit in finals:  # iterations finish in order; stream each final sample
                k = next_hit
                next_hit += 1
                yield Hit(core=k, x=finals[k])
                residual = relative_residual(finals[k], finals[k - 1]) if k >= 1 else math.inf
                if residual <= self.tol or k >= nb:
                    return finals[k]
                if k >= k_max:
                    warnings.warn(
                        f"srds stopped at its iteration cap max_iters={k_max} before tol={self.tol:g}: the last "
                        f"iteration still changed the sample by {residual:.3g} (relative)",
                        NotConvergedWarning, stacklevel=2,
                    )
                    return finals[k]
        raise HastenError("srds ran out of work before finishing an iteration")  # pragma: no cover

    @staticmethod
    def _advance(fine: dict, done: dict, kn: tuple[int, int], f: _Fine, end: int) -> None:
        if f.pos == end:
            done[kn] = f.x
        else:
            fine[kn] = f
