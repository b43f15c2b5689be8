"""AB-Cache: Adams-Bashforth extrapolation of cached model outputs (Eq. 3.6).

On a uniform log-SNR grid, Eq. 3.6 predicts the output at step n from the
last k as ``sum_{i=1..k} (-1)^{i+1} C(k, i) e^{i h} eps_{n-i}``. That is the
degree-(k-1) polynomial extrapolation of ``g(lambda) = e^{-lambda} eps`` in
lambda, re-scaled by ``e^{lambda_n}``: the binomial weights are the Lagrange
weights of equally spaced nodes. hasten uses the Lagrange weights of the
*actual* nodes, so the same formula serves non-uniform grids and a history
with gaps (computed outputs only), and reduces to Eq. 3.6 on a uniform grid.

What is extrapolated, and in which variable, is the ``form``:

* ``paper``: Eq. 3.6 as written. VP: the eps estimate, with the exponential
  factor (``e^{-lambda} eps`` extrapolated in lambda = log(alpha / sigma), then
  multiplied by ``e^{lambda_n}``). Flow: the velocity in the flow time sigma,
  without the exponential (Remark 1, "drop the exponential term").
* ``eps``: Eq. 3.6 without the exponential factor (Remark 1's rule applied to
  the eps estimate): eps extrapolated in lambda (VP) or in sigma (flow).
* ``x0``: the clean-sample prediction extrapolated in lambda (VP) or sigma
  (flow): the data-prediction counterpart of Eq. 3.1/3.6 (the integrand of
  DPM-Solver++'s ``e^{lambda} x0`` form, whose exponential the exact linear part
  absorbs). Order 1 keeps x0 fixed, so a predicted step is a DDIM jump.
* ``index``: the raw model output extrapolated in the grid step index, the
  binomial weights of Eq. 3.6 with ``e^{ih}`` dropped (``h`` treated as one
  step, as caching code that ignores the schedule does).

The eps/x0 forms convert the model's output (epsilon, v, sample or flow
velocity) with ``predict_x0_eps`` and turn the extrapolated quantity back into
the model's parameterisation at the current latent with ``output_for_x0``.
Left out, the form is chosen per grid (:func:`default_form`): by its kind
(``DEFAULT_FORM``, measured in docs/BENCHMARKS.md, "AB-Cache variants (issue
11)"), except on a VP grid with alpha = 0 at an evaluated point (zero terminal
SNR, as CogVideoX's own scheduler), where lambda is undefined and ``index``
is taken (``ZERO_SNR_FORM``, measured in "AB-Cache on zero-SNR grids").

Order 1 is plain reuse of the last output in the eps, x0 and index forms
(along DDIM and Euler steps the three coincide); in the paper form it returns
``e^{lambda_n - lambda_{n-1}} eps``. The schedule counts *rounds* (for
sequential sampling a round is a step): rounds 1..warmup are computed, then
every ``interval``-th round, and any request at one of the last ``last`` grid
steps. Keying the schedule on rounds keeps the predicted requests of a
parallel method (CHORDS cores, a ParaDiGMS window) in the same rounds, so
those rounds cost no model latency. A request whose trajectory has fewer than
``order`` outputs in its history is computed whatever the schedule says.

Adaptive mode (``tol`` instead of ``interval``; issue 11): after warm-up, a
request is predicted while the estimated error of the predictions since the
trajectory's last computed output, summed, stays within ``tol``; otherwise the
model is called and the sum restarts. The error of one prediction is the
shift it causes in the next grid point, ``alpha_{n+1} dx0 + sigma_{n+1} deps``
for the first-order step (DDIM, flow Euler), as RMS over the sample (largest
over the batch), in units of ``scale``: ``x0`` divides by ``alpha_{n+1}`` (the
clean-sample error implied at the landing point, the same meaning on any
schedule); ``posterior`` divides by the DDPM posterior std of the step, the
per-step noise scale ParaDiGMS' tolerance uses. The error is estimated without
a model call (``estimate``): ``posterior`` takes the error the last computed
output turned out to have against the prediction the cache would have made
for it, carried to the request by the Lagrange remainder's node factor
``prod (lambda_n - lambda_i)`` (the unknown k-th derivative is read off the
model's own output); ``embedded`` takes the difference between the order-k
and order-(k+1) predictions (an embedded pair, as Runge-Kutta-Fehlberg), which
needs k + 1 outputs in the history. Measured on digits and gmm-flow in
docs/BENCHMARKS.md ("Adaptive AB-Cache"): x0 scale and the posterior estimate
are the defaults. Rounds are kept as a fixed schedule keeps them (a round
costs latency when any of its requests reaches the model), so under a
parallel method the adaptive mode saves model calls more than rounds. Its
decision depends on the data, so it reads one scalar per request to the host
(on a GPU, a synchronisation per request, as any threshold cache needs); the
fixed schedule reads none.

History (``history``): ``"computed"`` keeps only model outputs; ``"all"`` also
keeps predictions (so extrapolation builds on extrapolation). Each trajectory
(``Eval.track``: a CHORDS core, or one trajectory for the others) keeps its
own history, by grid index, latest value per index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from hasten.errors import HastenError
from hasten.grid import Grid
from hasten.options import option_types, parse_spec
from hasten.rounds import Eval
from hasten.parameterisation import output_for_eps, output_for_x0, predict_x0_eps, to_x0_eps

#: what is extrapolated: see the module docstring
FORMS = ("paper", "eps", "x0", "index")
#: how the adaptive mode estimates a prediction's error (module docstring)
ESTIMATES = ("posterior", "embedded")
#: what the adaptive tolerance is measured in
SCALES = ("x0", "posterior")
#: the form used when ``CacheConfig.form`` is None, per grid kind. Measured at order 2, interval 3
#: (PSNR vs sequential, 64 samples): digits eps 46.9, index 44.5, x0 41.8, paper 9.2 dB;
#: gmm-flow paper 64.8, x0 58.3, eps 33.0 dB (docs/BENCHMARKS.md, "AB-Cache variants (issue 11)").
DEFAULT_FORM = {"vp": "eps", "flow": "paper"}
#: the default form on a VP grid where lambda is undefined (alpha = 0 at an evaluated point). Measured at
#: order 2, interval 3 on CogVideoX's zero-SNR v-prediction grid (gmm, latent RMSE vs sequential, 64 samples):
#: 0.0087 with 18 calls, against 0.23 for 17 plain steps (docs/BENCHMARKS.md, "AB-Cache on zero-SNR grids").
ZERO_SNR_FORM = "index"


@dataclass(frozen=True)
class CacheConfig:
    """A validated AB-Cache configuration.

    Args:
        order: k in 1..4 (1 = plain reuse of the last output).
        interval: T >= 1, compute every T-th round after warm-up (1 = never predict); None: 3, or
            adaptive when ``tol`` is given.
        tol: adaptive mode: the summed estimated error allowed between model calls (module docstring).
        estimate: ``"posterior"`` or ``"embedded"``, how the adaptive mode estimates an error.
        scale: ``"x0"`` or ``"posterior"``, the unit of ``tol``.
        warmup: rounds always computed first; at least ``order``.
        last: the last ``last`` grid steps are always computed.
        history: ``"computed"`` or ``"all"``.
        form: ``"paper"``, ``"eps"``, ``"x0"`` or ``"index"`` (module docstring);
            None: :func:`default_form` of the grid (``DEFAULT_FORM`` of its kind; ``index`` where alpha = 0).
    """

    order: int = 2
    interval: int | None = None
    warmup: int | None = None
    last: int = 1
    history: str = "computed"
    form: str | None = None
    tol: float | None = None
    estimate: str = "posterior"
    scale: str = "x0"

    def __post_init__(self) -> None:
        if not isinstance(self.order, int) or not 1 <= self.order <= 4:
            raise HastenError(f"cache order must be an integer in 1..4, got {self.order!r}")
        if self.interval is not None and (not isinstance(self.interval, int) or self.interval < 1):
            raise HastenError(f"cache interval must be an integer >= 1, got {self.interval!r}")
        if self.tol is not None:
            if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) or not 0 < self.tol < math.inf:
                raise HastenError(f"cache tol must be a number > 0 and finite, got {self.tol!r}")
            if self.interval is not None:
                raise HastenError("a cache takes either interval (fixed schedule) or tol (adaptive), not both")
        if self.estimate not in ESTIMATES:
            raise HastenError(f"cache estimate must be one of {', '.join(ESTIMATES)}, got {self.estimate!r}")
        if self.scale not in SCALES:
            raise HastenError(f"cache scale must be one of {', '.join(SCALES)}, got {self.scale!r}")
        if self.warmup is not None and (not isinstance(self.warmup, int) or self.warmup < self.order):
            raise HastenError(f"cache warmup must be an integer >= the order ({self.order}), got {self.warmup!r}")
        if not isinstance(self.last, int) or self.last < 0:
            raise HastenError(f"cache last must be an integer >= 0, got {self.last!r}")
        if self.history not in ("computed", "all"):
            raise HastenError(f"cache history must be 'computed' or 'all', got {self.history!r}")
        if self.form is not None and self.form not in FORMS:
            raise HastenError(f"cache form must be one of {', '.join(FORMS)}, got {self.form!r}")

    @property
    def every(self) -> int:
        """The fixed interval T in force (3 when neither interval nor tol is given)."""
        return 3 if self.interval is None else self.interval

    @property
    def warmup_rounds(self) -> int:
        return self.order if self.warmup is None else self.warmup

    def spec(self) -> str:
        """The spec string that parses back to this config (``parse_cache_spec(c.spec()) == c``)."""
        default = CacheConfig()
        parts = ["reuse" if self.order == 1 else f"abcache:{self.order}"]
        parts += [f"{f.name}={getattr(self, f.name)}" for f in fields(self)
                  if f.name != "order" and getattr(self, f.name) != getattr(default, f.name)]
        return ":".join(parts)

    def label(self, form: str | None = None) -> str:
        """Short description; ``form`` names the form in force when the config leaves it to the grid."""
        name = "reuse" if self.order == 1 else f"abcache:{self.order}"
        form = self.form or form
        when = f"T={self.every}" if self.tol is None else f"tol={self.tol:g}" + "".join(
            f" {key}={value}" for key, value, default in (("est", self.estimate, "posterior"),
                                                           ("scale", self.scale, "x0")) if value != default)
        return (f"{name} {when} W={self.warmup_rounds}" + ("" if self.history == "computed" else " hist=all")
                + ("" if form is None else f" form={form}"))


def _lambda_undefined(grid: Grid) -> bool:
    """Whether a VP grid has alpha = 0 at a point the model evaluates (lambda = log(alpha / sigma) is -inf)."""
    return grid.kind == "vp" and bool((grid.alpha[:-1] <= 0).any())


def default_form(grid: Grid) -> str:
    """The form a cache without ``form`` uses on ``grid`` (module docstring): one that works on every grid."""
    return ZERO_SNR_FORM if _lambda_undefined(grid) else DEFAULT_FORM[grid.kind]


def lagrange_weights(nodes: list[float], target: float) -> list[float]:
    """Weights w_i with ``p(target) = sum w_i p(nodes[i])`` for polynomials of degree < len(nodes)."""
    weights = []
    for i, xi in enumerate(nodes):
        w = 1.0
        for j, xj in enumerate(nodes):
            if j != i:
                w *= (target - xj) / (xi - xj)
        weights.append(w)
    return weights


class ABCache:  # implements hasten.caches.base.Cache
    """The cache itself; the engine calls ``reset``, ``wants_model``, ``predict`` and ``record``."""

    def __init__(self, config: CacheConfig):
        self.config = config
        self.grid: Grid | None = None
        self.form: str | None = config.form
        self.history: dict = {}
        self.errors: dict = {}
        self.accumulated: dict = {}
        self.pending: dict = {}
        self.computed: list[int] = []
        self.predicted: list[int] = []
        self.restarted: set[int] = set()  # tracks rebased in this run

    def reset(self, grid: Grid) -> None:
        """Forget every trajectory; called by the engine at the start of each run."""
        form = self.config.form or default_form(grid)
        if form != "index" and _lambda_undefined(grid):
            raise HastenError(f"abcache form {form!r} needs alpha > 0 at every evaluated VP grid point (lambda "
                              "is undefined); use form 'index', or leave form out (the default takes it here)")
        self.grid, self.form = grid, form
        self.history, self.errors, self.accumulated, self.pending = {}, {}, {}, {}
        self.computed, self.predicted, self.restarted = [], [], set()

    def label(self) -> str:
        """The config's label with the form in force (after ``reset``)."""
        return self.config.label(self.form)

    def _raw(self) -> bool:
        """Whether the form extrapolates the model output itself (no conversion)."""
        return self.form == "index" or (self.form == "paper" and self.grid.kind == "flow")

    def _node(self, index: int) -> float:
        if self.form == "index":
            return float(index)
        a, s = float(self.grid.alpha[index]), float(self.grid.sigma[index])
        return math.log(a / s) if self.grid.kind == "vp" else s

    def _usable(self, ev: Eval, count: int | None = None) -> list[int]:
        past = self.history.get(ev.track, {})
        return sorted((i for i in past if i < ev.index), reverse=True)[: count or self.config.order]

    def _extrapolate(self, ev: Eval, idx: list[int]) -> torch.Tensor:
        """The form's quantity at ``ev.index`` from the history points ``idx`` (Lagrange / Eq. 3.6)."""
        past = self.history[ev.track]
        target = self._node(ev.index)
        weights = lagrange_weights([self._node(i) for i in idx], target)
        if self.form == "paper" and self.grid.kind == "vp":  # Eq. 3.6: e^{lambda_n - lambda_i} factors
            weights = [w * math.exp(target - self._node(i)) for w, i in zip(weights, idx)]
        return sum(w * past[i] for w, i in zip(weights, idx))

    def _as_output(self, ev: Eval, value: torch.Tensor) -> torch.Tensor:
        """The form's quantity turned back into the model's parameterisation at ``ev.x``."""
        if self._raw():
            return value
        convert = output_for_x0 if self.form == "x0" else output_for_eps
        return convert(self.grid, ev.x.float(), value, ev.index)

    def _landing_error(self, ev: Eval, difference: torch.Tensor) -> float:
        """How far a difference in the form's quantity moves the next grid point, in tolerance units.

        The first-order step ``x_{n+1} = alpha_{n+1} x0 + sigma_{n+1} eps`` (DDIM, flow Euler) is affine
        in the output at fixed ``x_n``, so the difference's own (x0, eps) parts give the landing shift;
        the largest RMS over the batch is divided by the step's scale (``CacheConfig.scale``).
        """
        g, n = self.grid, ev.index
        stored = g.prediction if self._raw() else ("sample" if self.form == "x0" else "epsilon")
        dx0, deps = to_x0_eps(stored, torch.zeros_like(difference), difference, float(g.model_alpha[n]),
                              float(g.model_sigma[n]))
        shift = float(g.alpha[n + 1]) * dx0 + float(g.sigma[n + 1]) * deps
        rms = float(shift.flatten(1).pow(2).mean(1).sqrt().max())
        if self.config.scale == "x0":
            return rms / max(float(g.alpha[n + 1]), 1e-12)
        scale = g.posterior_std(n, n + 1)
        return rms / scale if scale > 0 else math.inf

    def _span(self, index: int, idx: list[int]) -> float:
        """``|prod (node - node_i)|``: the Lagrange remainder's node factor of an extrapolation to ``index``."""
        return abs(math.prod(self._node(index) - self._node(i) for i in idx))

    def _estimate(self, ev: Eval) -> float:
        """The estimated landing error of predicting ``ev`` (inf when it cannot be estimated yet).

        ``embedded``: the order-k prediction against the order-(k+1) one from one more history point
        (the embedded-pair estimate of Runge-Kutta-Fehlberg), i.e. the Lagrange remainder with the
        k-th divided difference read from the history. ``posterior``: the error the last computed
        output showed against its own prediction, carried over by the remainder's node factor.
        """
        order = self.config.order
        if self.config.estimate == "embedded":
            idx = self._usable(ev, order + 1)
            if len(idx) <= order:
                return math.inf
            return self._landing_error(ev, self._extrapolate(ev, idx) - self._extrapolate(ev, idx[:order]))
        last = self.errors.get(ev.track)
        idx = self._usable(ev)
        if last is None or len(idx) < order:
            return math.inf
        error, span = last
        return error * self._span(ev.index, idx) / span if span > 0 else math.inf

    def wants_model(self, ev: Eval, round_number: int) -> bool:
        """Whether this request must be computed in this round (1-based)."""
        c = self.config
        if round_number <= c.warmup_rounds or ev.index >= self.grid.steps - c.last:
            return True
        have = len(self._usable(ev))
        if have < (1 if ev.track in self.restarted else c.order):
            return True
        if c.tol is None:
            return (round_number - c.warmup_rounds) % c.every == 0
        estimate = self.accumulated.get(ev.track, 0.0) + self._estimate(ev)
        self.pending[(ev.track, ev.index)] = estimate
        return estimate > c.tol

    def _value(self, x: torch.Tensor, output: torch.Tensor, index: int) -> torch.Tensor:
        """The form's quantity of ``output`` at ``x`` (the raw output, its eps or its x0 estimate)."""
        value = output.float()
        if self._raw():
            return value
        x0, eps = predict_x0_eps(self.grid, x.float(), value, index)
        return x0 if self.form == "x0" else eps

    def rebase(self, track: int) -> None:
        """Forget a rectified trajectory's history (CHORDS Eq. 3-4 moved its state).

        Outputs kept from the stale trajectory, extrapolated at the corrected one,
        carry the stale trajectory's error into every core rectified from it
        (measured: docs/BENCHMARKS.md, "CHORDS with AB-Cache"). The next request
        is computed; until ``order`` outputs exist again the track extrapolates
        from those it has (order 1 from one output), on the fixed schedule.
        """
        self.history[track], self.restarted = {}, self.restarted | {track}
        self.errors.pop(track, None)
        self.accumulated.pop(track, None)

    def predict(self, ev: Eval) -> torch.Tensor:
        """Extrapolate the output at ``ev`` from its trajectory's history."""
        return self._as_output(ev, self._extrapolate(ev, self._usable(ev)))

    def record(self, ev: Eval, output: torch.Tensor, computed: bool) -> None:
        """Store what the form extrapolates (raw output, eps or x0 estimate) in the trajectory's history."""
        (self.computed if computed else self.predicted).append(ev.index)
        estimate = self.pending.pop((ev.track, ev.index), 0.0)
        self.accumulated[ev.track] = 0.0 if computed else estimate
        if not computed and self.config.history == "computed":
            return
        value = self._value(ev.x, output, ev.index)
        if computed and self.config.tol is not None and self.config.estimate == "posterior":
            idx = self._usable(ev)
            if len(idx) == self.config.order:
                error = self._landing_error(ev, self._extrapolate(ev, idx) - value)
                self.errors[ev.track] = (error, self._span(ev.index, idx))
        self.history.setdefault(ev.track, {})[ev.index] = value

    def stats(self) -> dict:
        """Which grid steps were computed and which predicted in the last run."""
        return {"computed_steps": list(self.computed), "predicted_steps": list(self.predicted),
                "nfe_saved": len(self.predicted)}


def make_cache(spec: "str | CacheConfig | ABCache | None") -> ABCache | None:
    """A cache from a config, a spec string (``none``, ``reuse``, ``abcache:K[:interval=T:form=x0:...]``) or None."""
    if spec is None or isinstance(spec, ABCache):
        return spec
    if isinstance(spec, CacheConfig):
        return ABCache(spec)
    config = parse_cache_spec(spec)
    return None if config is None else ABCache(config)


def parse_cache_spec(spec: str) -> CacheConfig | None:
    """``none`` | ``reuse`` | ``abcache:K`` with optional ``:key=value`` (``CacheConfig``'s fields: interval or tol, ...)."""
    fields = option_types(CacheConfig)
    names = {"none": {}, "reuse": {k: v for k, v in fields.items() if k != "order"}, "abcache": fields}
    name, options = parse_spec(spec, names, "cache", positional="order")
    if name == "none":
        return None
    return CacheConfig(**({"order": 1} if name == "reuse" else {}), **options)
