"""Stateless multistep steps: DPM-Solver++ (2M, 2M SDE) and UniPC (bh1 / bh2 with its corrector UniC).

A multistep step is a first-order step's call with one more argument,
``step(x, output, i, j, noise=None, history=()) -> x_j``: ``history`` holds
the clean-sample (data) predictions of the trajectory's previous grid points
i - 1, i - 2, ... (most recent first), each made where that point was
evaluated. The step keeps nothing between calls, so any method can run it: a
trajectory carries its own history (:func:`remember`). With a short history
the step lowers its order (the schedulers' warm-up); with none it is first
order, DPM-Solver++ 1 = DDIM (and flow Euler), which is what a jump i -> j > i + 1
gets. ``memory`` says how many previous predictions a step reads.

Every formula is written in log-SNR ``lambda = log(alpha / sigma)`` with
``h = lambda_j - lambda_i`` and ``x = alpha x0 + sigma eps`` (VP and flow
grids alike, :mod:`hasten.grid`). ``MultistepSchedule`` holds what the
pipeline's scheduler decides per grid point (its highest order there:
``lower_order_final``; UniPC's ``disable_corrector``), read once from the
config so that an image-to-image run can slice it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from hasten.errors import HastenError
from hasten.grid import Grid
from hasten.parameterisation import predict_x0_eps

#: the multistep solvers, by hasten name
MULTISTEP_SOLVERS = ("dpm++2m", "dpm++2m-sde", "unipc")


@dataclass(frozen=True)
class MultistepSchedule:
    """Per-point decisions of a multistep scheduler, for a grid of N steps.

    Attributes:
        orders: (N,) the highest order of the step from point i (``solver_order``,
            lowered at the end by ``lower_order_final`` / ``final_sigmas_type="zero"``).
        corrector: (N,) UniPC: whether the step from point i first corrects x_i
            with UniC (False at point 0 and after ``disable_corrector`` steps).
        variant: DPM-Solver++'s ``solver_type`` (``midpoint`` / ``heun``) or UniPC's (``bh1`` / ``bh2``).
    """

    orders: tuple[int, ...]
    corrector: tuple[bool, ...] = ()
    variant: str = "midpoint"

    def starting_at(self, start: int) -> "MultistepSchedule":
        """The schedule of the steps from point ``start`` on (the scheduler's ``set_begin_index``)."""
        corrector = tuple(self.corrector[start:])
        if corrector:  # the first step run has no predecessor to correct (diffusers' last_sample is None)
            corrector = (False,) + corrector[1:]
        return replace(self, orders=tuple(self.orders[start:]), corrector=corrector)

    @classmethod
    def dpm_solver(cls, config, steps: int) -> "MultistepSchedule":
        """DPMSolverMultistepScheduler.step's order rule: first order at the last step when ``euler_at_final``,
        ``final_sigmas_type="zero"`` or (``lower_order_final`` and fewer than 15 steps); second order at the
        step before it in the latter case."""
        order = int(config.solver_order)
        short = bool(config.lower_order_final) and steps < 15
        orders = [order] * steps
        if steps >= 2 and short:
            orders[-2] = min(order, 2)
        if config.euler_at_final or short or config.final_sigmas_type == "zero":
            orders[-1] = 1
        return cls(tuple(orders), (), config.solver_type)

    @classmethod
    def unipc(cls, config, steps: int) -> "MultistepSchedule":
        """UniPCMultistepScheduler.step: order ``min(solver_order, N - i)`` with ``lower_order_final``; the
        corrector runs at every point after the first but those following a ``disable_corrector`` step."""
        order = int(config.solver_order)
        orders = [min(order, steps - i) if config.lower_order_final else order for i in range(steps)]
        off = set(config.disable_corrector or ())
        corrector = [i > 0 and (i - 1) not in off for i in range(steps)]
        return cls(tuple(orders), tuple(corrector), config.solver_type)


def _lambda(grid: Grid, k: int) -> float:
    """log-SNR ``log(alpha_k / sigma_k)`` of point k (+inf where sigma is 0, the clean end; -inf where alpha is)."""
    a, s = float(grid.alpha[k]), float(grid.sigma[k])
    if s == 0 or a == 0:
        return math.inf if s == 0 else -math.inf
    return math.log(a) - math.log(s)


def _exp_neg_h(grid: Grid, i: int, j: int) -> float:
    """``e^{-h} = (sigma_j / alpha_j) / (sigma_i / alpha_i)`` for h = lambda_j - lambda_i, without logs."""
    return (float(grid.sigma[j]) / float(grid.alpha[j])) / (float(grid.sigma[i]) / float(grid.alpha[i]))


class _Multistep:
    """What DPM-Solver++ and UniPC share: the grid, the schedule and the data prediction."""

    name = "multistep"
    memory = 1

    def __init__(self, grid: Grid, schedule: MultistepSchedule, noise: torch.Tensor | None = None) -> None:
        if len(schedule.orders) != grid.steps:
            raise HastenError(f"a multistep schedule of {len(schedule.orders)} points does not fit a grid of "
                              f"{grid.steps} steps")
        self.grid, self.schedule = grid, schedule
        if noise is not None:
            self.noise = noise.float()

    def data(self, x: torch.Tensor, output: torch.Tensor, i: int) -> torch.Tensor:
        """The clean-sample prediction at point i (the schedulers' ``convert_model_output``, x0 form)."""
        return predict_x0_eps(self.grid, x.float(), output.float(), i)[0]

    def order(self, i: int, history: tuple) -> int:
        """The order of the step from point i: the schedule's, lowered by a short history (warm-up)."""
        return max(1, min(self.schedule.orders[i], 1 + len(history)))


class DPMSolverPPStep(_Multistep):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) and its SDE variant SDE-DPM-Solver++(2M) (Sec. 5 / App. B).

    With ``m0 = x0(x_i)``, ``m1`` the previous prediction (``history[0]``),
    ``h = lambda_j - lambda_i``, ``r = (lambda_i - lambda_{i-1}) / h`` and
    ``D1 = (m0 - m1) / r``:

    * ODE: ``x_j = sigma_j / sigma_i x_i - alpha_j (e^{-h} - 1) (m0 + D1 / 2)``
      (midpoint; heun: ``... + alpha_j ((e^{-h} - 1) / h + 1) D1``).
    * SDE: ``x_j = sigma_j / sigma_i e^{-h} x_i + alpha_j (1 - e^{-2h}) (m0 + D1 / 2)
      + sigma_j sqrt(1 - e^{-2h}) z_i`` with ``z_i = noise[i]``, drawn before sampling.

    First order (no history, or the schedule's last step) drops D1: DDIM for the ODE.
    """

    def __init__(self, grid: Grid, schedule: MultistepSchedule, sde: bool = False,
                 noise: torch.Tensor | None = None) -> None:
        if sde and (noise is None or noise.shape[0] != grid.steps):
            raise HastenError(f"solver 'dpm++2m-sde' needs noise of shape (steps={grid.steps}, batch, ...), got "
                              f"{None if noise is None else tuple(noise.shape)}")
        if max(schedule.orders, default=1) > 2:
            raise HastenError("DPM-Solver++ runs solver_order 1 or 2 in hasten; got "
                              f"{max(schedule.orders)} (use solver_order=2)")
        super().__init__(grid, schedule, noise if sde else None)
        self.sde = sde
        self.name = "dpm++2m-sde" if sde else "dpm++2m"

    def __call__(self, x, output, i, j, noise=None, history=()):
        g = self.grid
        x = x.float()
        m0 = self.data(x, output, i)
        e = _exp_neg_h(g, i, j)
        aj, sj, si = float(g.alpha[j]), float(g.sigma[j]), float(g.sigma[i])
        if self.sde:
            out = (sj / si * e) * x + (aj * (1 - e * e)) * m0
            z = self.noise[i] if noise is None else noise
            out = out + sj * max(0.0, 1 - e * e) ** 0.5 * z
        else:
            out = (sj / si) * x - (aj * (e - 1)) * m0
        if self.order(i, history) < 2:
            return out
        h = _lambda(g, j) - _lambda(g, i)
        r = (_lambda(g, i) - _lambda(g, i - 1)) / h
        d1 = (m0 - history[0]) / r
        if self.sde:
            c = 0.5 * aj * (1 - e * e) if self.schedule.variant == "midpoint" else aj * ((1 - e * e) / (-2 * h) + 1)
        else:
            c = -0.5 * aj * (e - 1) if self.schedule.variant == "midpoint" else aj * ((e - 1) / h + 1)
        return out + c * d1


class UniPCStep(_Multistep):
    """UniPC (Zhao et al. 2023, Algorithms 2-3, B(h) forms): UniC corrects x_i, then UniP predicts x_j.

    The predictor of order p from point s = i with data predictions
    ``m_s, m_{s-1}, ...`` (``r_k = (lambda_{s-k} - lambda_s) / h``,
    ``D_k = (m_{s-k} - m_s) / r_k``)::

        x_t = sigma_t / sigma_s x_s - alpha_t (e^{-h} - 1) m_s - alpha_t B(h) sum_k rho_k D_k

    with ``rho`` solving ``R rho = g`` (Eq. 8 of the paper's Theorem; the
    ``phi`` recursion for g; ``rho = 1/2`` at p = 2), B(h) = -h (bh1) or
    ``e^{-h} - 1`` (bh2). The corrector UniC of the step i - 1 -> i uses the
    new prediction ``m_i`` at the predicted x_i as one more point (``r = 1``).
    Predictor and corrector share the term ``sigma_t / sigma_s x_s - alpha_t
    (e^{-h} - 1) m_s``, so the corrected state is the predicted one plus
    ``alpha_i B(h) (sum rho^p_k D_k - sum rho^c_k D_k - rho^c_last (m_i - m_{i-1}))``:
    a function of x_i and the predictions alone, which makes the step stateless.
    ``memory`` = ``solver_order`` previous predictions (the corrector of order p
    reaches back p points from i).
    """

    def __init__(self, grid: Grid, schedule: MultistepSchedule) -> None:
        if schedule.variant not in ("bh1", "bh2"):
            raise HastenError(f"UniPC solver_type must be bh1 or bh2, got {schedule.variant!r}")
        super().__init__(grid, schedule)
        self.name = "unipc"
        self.memory = max(schedule.orders, default=1)

    def _coefficients(self, s: int, t: int, order: int):
        """(h_phi_1, B(h), rks, R, g) of the UniPC update s -> t that reads points s, s-1, ..., s-order+1."""
        g = self.grid
        lam_s = _lambda(g, s)
        h = _lambda(g, t) - lam_s
        hh = -h
        h_phi_1 = math.expm1(hh)
        b_h = hh if self.schedule.variant == "bh1" else math.expm1(hh)
        rks = [(_lambda(g, s - k) - lam_s) / h for k in range(1, order)] + [1.0]
        rows, rhs = [], []
        h_phi_k, factorial = h_phi_1 / hh - 1, 1
        for k in range(1, order + 1):
            rows.append([r ** (k - 1) for r in rks])
            rhs.append(h_phi_k * factorial / b_h)
            factorial *= k + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        return h_phi_1, b_h, rks, torch.tensor(rows, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64)

    @staticmethod
    def _combine(rhos, ds):
        return sum(float(r) * d for r, d in zip(rhos, ds))

    def _correction(self, m_new, history, i: int, order: int) -> torch.Tensor:
        """``x^c_i - x^p_i`` for the step i - 1 -> i taken at ``order`` (UniC minus UniP)."""
        _, b_h, rks, rows, rhs = self._coefficients(i - 1, i, order)
        m0 = history[0]
        ds = [(history[k] - m0) / rks[k - 1] for k in range(1, order)]
        if order == 1:
            rhos_c, pred = [0.5], 0.0
        else:
            rhos_c = torch.linalg.solve(rows, rhs).tolist()
            rhos_p = [0.5] if order == 2 else torch.linalg.solve(rows[:-1, :-1], rhs[:-1]).tolist()
            pred = self._combine(rhos_p, ds)
        corr = self._combine(rhos_c[:-1], ds) + rhos_c[-1] * (m_new - m0)
        return float(self.grid.alpha[i]) * b_h * (pred - corr)

    def __call__(self, x, output, i, j, noise=None, history=()):
        g = self.grid
        x = x.float()
        m0 = self.data(x, output, i)
        if history and self.schedule.corrector[i]:
            x = x + self._correction(m0, history, i, self.order(i - 1, history[1:]))
        order = self.order(i, history)
        h_phi_1, b_h, rks, rows, rhs = self._coefficients(i, j, order)
        at = float(g.alpha[j])
        out = (float(g.sigma[j]) / float(g.sigma[i])) * x - (at * h_phi_1) * m0
        if order == 1:
            return out
        ds = [(history[k - 1] - m0) / rks[k - 1] for k in range(1, order)]
        rhos_p = [0.5] if order == 2 else torch.linalg.solve(rows[:-1, :-1], rhs[:-1]).tolist()
        return out - (at * b_h) * self._combine(rhos_p, ds)


def memory(step) -> int:
    """How many previous data predictions ``step`` reads (0 for a first-order step)."""
    return int(getattr(step, "memory", 0))


def remember(step, history: tuple, x: torch.Tensor, output: torch.Tensor, i: int) -> tuple:
    """The history after evaluating point i: its data prediction first, as long as ``step`` reads."""
    keep = memory(step)
    if keep == 0:
        return ()
    data = step.data(x, output, i) if hasattr(step, "data") else predict_x0_eps(step.grid, x.float(),
                                                                                 output.float(), i)[0]
    return ((data,) + tuple(history))[:keep]
