"""Sliding-window parallel solvers: ParaDiGMS, ParaSolver and ParaSolver-Turbo.

All three solve the banded system ``X_{c+1} = Phi(X_c)`` (ParaSolver-Turbo
Eq. 4) over coarse points c = 0..S, where ``Phi`` runs the fine steps of one
sub-interval, by iterating over a window of p unknowns. Each iteration:

1. *Nonlinear block*: the first rho points of the window run ``Phi`` in
   parallel (rho = p for ParaDiGMS and ParaSolver), one round per fine step.
2. *Newton sweep* (no model call), in order through the block:
   ``X^{k+1}_{c+1} = Phi(X^k_c) + G(X^{k+1}_c) - G(X^k_c)`` (Eq. 5 / 16 with
   ``G^{(k)}`` the inverse of the banded Jacobian, applied by forward
   substitution). ParaDiGMS takes ``G = identity``, which is its Picard
   update ``X_{c+1} = X_start + sum (Phi(X_j) - X_j)``; ParaSolver takes G the
   model-free linear step with the clean-sample prediction of ``X^k_c`` held
   fixed, whose x-derivative is the exact derivative of Phi at fixed x0.
3. *Linear block* (ParaSolver-Turbo, Eq. 17/22, Algorithm 1 lines 7-9): the rest
   of the window is updated immediately (Gauss-Seidel) by the linear step with
   the clean-sample prediction of the last nonlinear point.
4. *Stop test and slide* (Algorithm 1 lines 10-13): a point has converged when
   ``||X^{k+1} - X^k||^2 / D <= tol^2 * scale^2`` (largest over the batch); the
   window moves to the first point that has not (which, its predecessors being
   converged, is now exact), so the first unconverged linear equations become
   nonlinear ones. New points enter by copying the window's last point
   (ParaDiGMS) or by linear steps with the last clean-sample prediction.

Preconditioning (Eq. 20): the first M sub-intervals are solved sequentially
and the rest initialised by linear steps that keep the last predicted x0.

At the iteration cap the method warns how far from converged it is and
returns its current trajectory, completed past the window by linear steps
from the last predicted x0 (no model call), never a silent wrong result.

Multistep steps (:mod:`hasten.multistep`): the system becomes
``X_{c+1} = Phi(X_c, H_c)`` with ``H_c`` the data predictions of the grid
points just before c, which ``Phi`` of the sub-interval before produced from
its own iterate (each point stores the history its predecessor's latest
fine solve ended with). Its fixed point is the sequential multistep
trajectory, which the iteration converges to, as the ParaSolver-Turbo paper
iterates DPM-Solver. The model-free parts (Newton's G, linear blocks,
initialisation) stay first order: they only approximate the Jacobian or
guess, and the fixed point does not depend on them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import ClassVar, Generator

import torch

from hasten.checks import check_int
from hasten.methods.declared import check_options, option
from hasten.errors import HastenError
from hasten.methods.subintervals import NotConvergedWarning, subinterval_bounds
from hasten.multistep import remember
from hasten.rounds import Eval, Hit, MethodRun
from hasten.steps import NOISY_SOLVERS, Step, linear_step, predicted_x0


#: ParaSolver-Turbo's window p per solver, from the paper's Appendix D settings: p = 100 for
#: DDPM-1000 (Fig. 2), p = 50 for DDIM-50 and DPM-Solver-50 (Fig. 3-4), the ODE value for the
#: others (the paper has no flow-matching runs). Capped at the number of sub-intervals.
PAPER_WINDOW = {"ddpm": 100}
PAPER_WINDOW_ODE = 50
#: The defaults where the paper's setting degrades the sample (measured, docs/BENCHMARKS.md): with
#: DDPM on digits, p = 100 and M = 0 reach 19 dB against sequential; p = 24 with M = 1 reach 37 dB.
DEFAULT_WINDOW = {**PAPER_WINDOW, "ddpm": 24}
DEFAULT_PRECONDITION = {"ddpm": 1}


def fine_solves(step: Step, starts: list[tuple[torch.Tensor, int, int]],
                histories: list[tuple] | None = None) -> Generator:
    """Run ``Phi`` on several sub-intervals at once, one round per fine step.

    ``starts`` holds (x, i, j) triples; ``histories`` the multistep history
    entering each (default: none). Returns (results, first outputs, histories):
    the latent at j, the model output at (x, i) and the history at j for each.
    """
    state = [x for x, _, _ in starts]
    pos = [i for _, i, _ in starts]
    hist = list(histories) if histories is not None else [()] * len(starts)
    first: list[torch.Tensor | None] = [None] * len(starts)
    while True:
        active = [c for c, (_, _, j) in enumerate(starts) if pos[c] < j]
        if not active:
            return state, first, hist
        outs = yield [Eval(state[c], pos[c]) for c in active]
        for c, out in zip(active, outs):
            if first[c] is None:
                first[c] = out
            x, i = state[c], pos[c]
            state[c], hist[c] = step(x, out, i, i + 1, history=hist[c]), remember(step, hist[c], x, out, i)
            pos[c] += 1


class SlidingWindow:
    """The shared solver of :class:`ParaDiGMS`, :class:`ParaSolver` and :class:`ParaSolverTurbo`.

    Each of them declares its options as fields; the settings below are theirs
    as class attributes:

    * ``newton``: ``"identity"`` (Picard) or ``"linear"`` (ParaSolver's Jacobian);
    * ``fill``: how new points enter, ``"copy"`` (the window's last one) or ``"linear"``;
    * ``scale``: the stop test's unit, ``"posterior"`` (DDPM posterior std of the
      step into the point, ParaDiGMS) or ``"sigma"`` (the point's noise level, ParaSolver);
    * ``default_window``: the window when ``window`` is None, capped at S (None:
      the paper's p for the solver, ``PAPER_WINDOW``). A ``window`` given is
      capped at S but never silently at the grid: one larger than the steps is refused.

    Options a method does not declare keep the values below: every point is
    nonlinear (``rho`` None), no preconditioning, one sub-interval per step.
    """

    name: ClassVar[str] = "sliding-window"
    budget: ClassVar[str] = "window"
    newton: ClassVar[str] = "identity"
    fill: ClassVar[str] = "copy"
    scale: ClassVar[str] = "posterior"
    default_window: ClassVar[int | None] = None
    window: int | None = None
    tol: float | None = None
    max_iters: int | None = None
    rho: int | None = None
    precondition: int | None = 0
    subintervals: int | None = None

    def __post_init__(self) -> None:
        check_options(self)

    def validate(self, steps: int) -> None:
        """The checks that need the step count (the options' own ran when the method was built)."""
        check_int("subintervals", self.subintervals, 1, steps, allow_none=True)
        check_int("precondition", self.precondition, 0, self.subintervals or steps, allow_none=True)
        if self.window is not None and self.window > steps:
            raise HastenError(f"window={self.window} exceeds the {steps} steps: a window spans grid points of the "
                              f"run; choose window <= {steps}")
        if self.rho is not None and self.window is not None and self.rho > self.window:
            raise HastenError(f"rho={self.rho} exceeds window={self.window}: rho of the window's points call the "
                              f"model; choose rho <= window (e.g. window={3 * self.rho})")

    def tol_for(self, solver: str) -> float:
        """The tolerance in force with a step named ``solver``."""
        if self.tol is not None:
            return self.tol
        return 0.5 if solver in NOISY_SOLVERS else 0.03

    def window_for(self, solver: str, subintervals: int) -> int:
        """The window in force with a step named ``solver`` over ``subintervals`` points."""
        if self.window is not None:
            return self.window
        if self.default_window is not None:
            return min(subintervals, self.default_window)
        return min(subintervals, DEFAULT_WINDOW.get(solver, PAPER_WINDOW_ODE))

    def precondition_for(self, solver: str) -> int:
        """The sequential sub-intervals M in force with a step named ``solver``."""
        return self.precondition if self.precondition is not None else DEFAULT_PRECONDITION.get(solver, 0)

    def hit_tracks(self, steps: int) -> int:
        return 1

    def max_rounds(self, steps: int) -> int:
        return steps

    def max_width(self, steps: int) -> int:
        return min(v for v in (self.window or self.default_window, self.rho, self.subintervals or steps)
                   if v is not None)

    def describe(self, steps: int) -> dict:
        window = self.window if self.window is not None else (
            "auto" if self.default_window is None else min(self.default_window, self.subintervals or steps))
        return {"window": window, "tol": "auto" if self.tol is None else self.tol,
                "rho": self.rho, "precondition": self.precondition, "subintervals": self.subintervals or steps,
                "max_iters": self.max_iters}

    def solve(self, x: torch.Tensor, step: Step) -> MethodRun:
        grid = step.grid
        n_steps = grid.steps
        s_total = self.subintervals or n_steps
        b = subinterval_bounds(n_steps, s_total)
        dim = x[0].numel()
        tol = self.tol_for(step.name)
        window = self.window_for(step.name, s_total)
        if self.scale == "posterior":
            scales = [0.0] + [grid.posterior_std(b[c - 1], b[c]) for c in range(1, s_total + 1)]
        else:
            scales = [float(grid.sigma[i]) for i in b]

        pts: list[torch.Tensor | None] = [None] * (s_total + 1)
        pts[0] = x
        hists: list[tuple] = [()] * (s_total + 1)  # the multistep history entering each point
        x0_last = None
        precondition = self.precondition_for(step.name)
        for c in range(precondition):  # Eq. 20, first case
            (res,), (out,), (hists[c + 1],) = yield from fine_solves(step, [(pts[c], b[c], b[c + 1])], [hists[c]])
            pts[c + 1] = res
            x0_last = predicted_x0(step, pts[c], out, b[c])
        n = precondition

        def fill(first: int, last: int) -> None:
            """Initialise points first..last from their predecessor (Eq. 20 / Algorithm 1 line 12)."""
            for c in range(first, last + 1):
                if self.fill == "linear" and x0_last is not None:
                    pts[c] = linear_step(step, pts[c - 1], x0_last, b[c - 1], b[c])
                else:
                    pts[c] = pts[c - 1]

        fill(n + 1, min(n + window, s_total))
        iters = 0
        while n < s_total:
            end = min(n + window, s_total)
            rho = end - n if self.rho is None else min(self.rho, end - n)
            block = range(n, n + rho)
            fines, outs, ends = yield from fine_solves(step, [(pts[c], b[c], b[c + 1]) for c in block],
                                                       [hists[c] for c in block])
            for c, end_hist in zip(block, ends):
                hists[c + 1] = end_hist
            new = list(pts)
            for k, c in enumerate(range(n, n + rho)):
                if new[c] is pts[c]:  # unchanged input: Phi is already the answer
                    new[c + 1] = fines[k]
                elif self.newton == "identity":
                    new[c + 1] = fines[k] + new[c] - pts[c]
                else:
                    x0 = predicted_x0(step, pts[c], outs[k], b[c])
                    new[c + 1] = fines[k] + linear_step(step, new[c], x0, b[c], b[c + 1]) \
                        - linear_step(step, pts[c], x0, b[c], b[c + 1])
            x0_last = predicted_x0(step, pts[n + rho - 1], outs[-1], b[n + rho - 1])
            for c in range(n + rho, end):  # linear equations, immediate update
                new[c + 1] = linear_step(step, new[c], x0_last, b[c], b[c + 1])

            changes = torch.stack([(new[c] - pts[c]).flatten(1).pow(2).sum(1).max() for c in range(n + 1, end + 1)])
            ratios = []
            for c, change in zip(range(n + 1, end + 1), changes.tolist()):  # one host read per iteration
                err = change / dim
                limit = (tol * scales[c]) ** 2
                ratios.append(0.0 if err == 0 else (math.inf if limit == 0 else err / limit))
            first_bad = next((k for k, r in enumerate(ratios) if r > 1), len(ratios))
            pts = new
            n_next = n + min(1 + first_bad, end - n)
            fill(end + 1, min(n_next + window, s_total))
            n = n_next
            iters += 1
            if self.max_iters is not None and iters >= self.max_iters and n < s_total:
                finite = [r for r in ratios if math.isfinite(r)]
                worst = max(finite) ** 0.5 if finite else math.inf
                warnings.warn(
                    f"{self.name} stopped at its iteration cap max_iters={self.max_iters} with "
                    f"{s_total - n} of {s_total} points not yet converged (the last iteration changed a point by "
                    f"{worst:.3g} x tol at most); "
                    "returning the current trajectory, completed past the window by model-free steps",
                    NotConvergedWarning, stacklevel=2,
                )
                last = max(c for c in range(s_total + 1) if pts[c] is not None)
                for c in range(last + 1, s_total + 1):
                    pts[c] = linear_step(step, pts[c - 1], x0_last, b[c - 1], b[c])
                break
        yield Hit(core=1, x=pts[s_total])
        return pts[s_total]


_WINDOW = "window size p, the points solved together"
_MAX_ITERS = ("iteration cap; on reaching it the method warns how far from converged it was and returns its current "
              "result (default: none beyond the S iterations that make it exact)")
_SUBINTERVALS = "number of sub-intervals S (default: one per step)"


@dataclass
class ParaDiGMS(SlidingWindow):
    """ParaDiGMS (Shih et al.): Picard iteration over a sliding window (default 8 points, capped at the steps).

    Tolerance per point in units of the DDPM posterior std of its step; points
    start as copies of the initial noise.
    """

    window: int | None = option(None, f"{_WINDOW} (default 8, capped at the steps)", low=1)
    tol: float = option(0.1, "tolerance per point, in units of the DDPM posterior std of its step", positive=True)
    max_iters: int | None = option(None, _MAX_ITERS, low=1)
    name: ClassVar[str] = "paradigms"
    default_window: ClassVar[int | None] = 8


@dataclass
class ParaSolver(SlidingWindow):
    """ParaSolver (Lu et al. 2025; ParaSolver-Turbo Eq. 4-5): Newton-type updates on sub-intervals.

    Window 16 by default, capped at the sub-intervals. ``precondition`` M
    sequential sub-intervals, model-free initialisation keeping the last
    predicted x0 fixed, tolerance in units of sigma.
    """

    window: int | None = option(None, f"{_WINDOW} (default 16, capped at the sub-intervals)", low=1)
    tol: float | None = option(None, "tolerance per point in units of its sigma (default: 0.5 with ddpm, else 0.03, "
                                     "the ParaSolver-Turbo paper's Section 6)", positive=True)
    max_iters: int | None = option(None, _MAX_ITERS, low=1)
    precondition: int | None = option(1, "sequential preconditioning sub-intervals M (Eq. 20)")  # 0..S: validate
    subintervals: int | None = option(None, _SUBINTERVALS)  # 1..steps: validate
    name: ClassVar[str] = "parasolver"
    newton: ClassVar[str] = "linear"
    fill: ClassVar[str] = "linear"
    scale: ClassVar[str] = "sigma"
    default_window: ClassVar[int | None] = 16


@dataclass
class ParaSolverTurbo(ParaSolver):
    """ParaSolver-Turbo: the rho-nonlinear system (Definition 2, Eq. 11), solved with immediate updates.

    Model calls only for the first ``rho`` unconverged points of the window;
    the rest follow the linear solver with the last predicted x0 (Eq. 16-22).

    Defaults are the paper's settings (Section 6 and Appendix D, Fig. 2-4), per solver,
    except where they measurably degrade the sample:

    ======  ===================  ====  =====  ===
    solver  window p             rho   delta  M
    ======  ===================  ====  =====  ===
    ddpm    24 (paper: 100)      8     0.5    1 (paper: 0)
    ddim    50 (capped at S)     8     0.03   0
    euler   50 (capped at S)     8     0.03   0
    ======  ===================  ====  =====  ===

    DDPM-1000 on digits: the paper's p = 100, M = 0 give 66.7x rounds at 19 dB
    against sequential; p = 24, M = 1 give 20x at 37 dB, so the default keeps
    quality and ``window=100, precondition=0`` is the paper's run by name.
    (euler: no flow-matching runs in the paper; the ODE settings.) The paper's
    iteration caps K (23 for DDPM, 11 for DDIM) are not defaults: a cap that
    stops early returns an unconverged result.
    """

    window: int | None = option(None, f"{_WINDOW} (default: the paper's p, 24 with ddpm and 50 otherwise, capped "
                                      "at the sub-intervals)", low=1)
    rho: int | None = option(8, "model calls per iteration: the nonlinear equations of the window", low=1)
    precondition: int | None = option(None, "sequential preconditioning sub-intervals M (Eq. 20; default 1 with "
                                            "ddpm, else the paper's 0)")
    name: ClassVar[str] = "parasolver-turbo"
    budget: ClassVar[str] = "rho"
    default_window: ClassVar[int | None] = None
