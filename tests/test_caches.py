"""AB-Cache: extrapolation, schedule, reset, and composition with every method."""

import math

import pytest
import torch

import hasten
from hasten import Chords, Eval, Grid, HastenError, Sequential, run
from hasten.caches import ABCache, CacheConfig, make_cache, parse_cache_spec
from hasten.caches.abcache import DEFAULT_FORM, FORMS, lagrange_weights
from hasten.methods import ParaDiGMS
from hasten.metrics import rmse
from hasten.parameterisation import output_for_x0


def uniform_lambda_grid(n=12, lo=-3.0, hi=3.0):
    lam = torch.linspace(lo, hi, n + 1, dtype=torch.float64)
    bars = torch.sigmoid(2 * lam)  # alpha^2 / sigma^2 = e^{2 lambda}
    return Grid("vp", "epsilon", bars.sqrt(), (1 - bars).sqrt(), torch.arange(n, 0, -1).double())


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_uniform_lagrange_weights_are_the_binomial_weights_of_eq_3_6(k):
    w = lagrange_weights([-float(i) for i in range(1, k + 1)], 0.0)
    assert w == pytest.approx([(-1) ** (i + 1) * math.comb(k, i) for i in range(1, k + 1)])


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_extrapolation_is_exact_on_polynomials_of_degree_k_minus_1(k):
    """Form paper. VP: e^{-lambda} eps polynomial in lambda -> predicted exactly; flow: velocity polynomial in sigma."""
    coeffs = torch.randn(k, 5, dtype=torch.float64)

    def poly(t):
        return sum(c * t**p for p, c in enumerate(coeffs))

    grid = uniform_lambda_grid()
    cache = ABCache(CacheConfig(order=k, interval=2, form="paper"))
    cache.reset(grid)
    lam = (grid.alpha / grid.sigma).log()
    x = torch.randn(1, 5)
    n = 6
    for i in range(n - k, n):
        cache.record(Eval(x, i), (math.exp(lam[i]) * poly(lam[i])).float()[None], computed=True)
    out = cache.predict(Eval(x, n))
    assert torch.allclose(out, (math.exp(lam[n]) * poly(lam[n])).float()[None], rtol=1e-4, atol=1e-4)

    flow = Grid.flow(torch.linspace(1, 0, 13))
    cache.reset(flow)
    for i in range(n - k, n):
        cache.record(Eval(x, i), poly(flow.sigma[i]).float()[None], computed=True)
    assert torch.allclose(cache.predict(Eval(x, n)), poly(flow.sigma[n]).float()[None], atol=1e-4)


@pytest.mark.parametrize("kind", ["vp", "flow"])
@pytest.mark.parametrize("form", ["eps", "x0", "index"])
@pytest.mark.parametrize("k", [2, 3])
def test_each_form_is_exact_on_polynomials_in_its_variable(kind, form, k):
    """eps / x0: that estimate polynomial in lambda (VP) or sigma (flow); index: the raw output polynomial in the
    step index. The prediction is handed back in the model's parameterisation at the current latent."""
    grid = uniform_lambda_grid() if kind == "vp" else Grid.flow(torch.linspace(1, 0, 13))
    coeffs = torch.randn(k, 5, dtype=torch.float64)
    x = torch.randn(1, 5, dtype=torch.float64)

    def variable(i):
        if form == "index":
            return float(i)
        return math.log(grid.alpha[i] / grid.sigma[i]) if kind == "vp" else float(grid.sigma[i])

    def output(i):
        value = sum(c * variable(i) ** p for p, c in enumerate(coeffs))[None]
        if form == "index":
            return value
        x0 = value if form == "x0" else (x - float(grid.sigma[i]) * value) / float(grid.alpha[i])
        return output_for_x0(grid, x, x0, i)

    cache = ABCache(CacheConfig(order=k, interval=2, form=form))
    cache.reset(grid)
    n = 6
    for i in range(n - k, n):
        cache.record(Eval(x.float(), i), output(i).float(), computed=True)
    assert torch.allclose(cache.predict(Eval(x.float(), n)), output(n).float(), atol=1e-4)


def test_default_form_per_grid_kind_and_label(problem):
    assert DEFAULT_FORM == {"vp": "eps", "flow": "paper"}  # chosen by docs/BENCHMARKS.md, issue 11
    for kind in ("vp", "flow"):
        p = problem(kind=kind, steps=12)
        res = run(Sequential(), p.x, p.step, p.executor, cache=make_cache("abcache:2:interval=3"))
        assert res.cache["config"] == f"abcache:2 T=3 W=2 form={DEFAULT_FORM[kind]}"
    assert CacheConfig(order=1, interval=2, form="x0").label() == "reuse T=2 W=1 form=x0"


def test_forms_of_order_one_agree_along_ddim():
    """DDIM keeps both the x0 and the eps estimate of the last output, so order-1 eps, x0 and index are one
    thing (plain reuse); paper's order 1 rescales eps by e^{lambda_n - lambda_{n-1}}."""
    results = {form: hasten.sample("gmm", "sequential", steps=20, batch=2, cache=CacheConfig(order=1, form=form)).x
               for form in FORMS}
    assert torch.allclose(results["eps"], results["index"], atol=1e-5)
    assert torch.allclose(results["x0"], results["index"], atol=1e-4)
    assert not torch.allclose(results["paper"], results["index"], atol=1e-2)


def test_schedule_computes_exactly_the_steps_it_says(problem):
    p = problem(steps=20)
    cache = ABCache(CacheConfig(order=2, interval=3, warmup=2, last=2))
    res = run(Sequential(), p.x, p.step, p.executor, cache=cache)
    expected = [i for i in range(20) if i + 1 <= 2 or (i + 1 - 2) % 3 == 0 or i >= 18]
    assert cache.stats()["computed_steps"] == expected
    assert cache.stats()["predicted_steps"] == [i for i in range(20) if i not in expected]
    assert res.nfe == len(expected) and res.rounds == len(expected)
    assert res.all_rounds == 20 and res.requests == 20 and res.speedup == pytest.approx(20 / len(expected))


def test_state_resets_between_calls(problem):
    p = problem(steps=30)
    cache = ABCache(CacheConfig(order=3, interval=3))
    a = run(Sequential(), p.x, p.step, p.executor, cache=cache)
    stats = cache.stats()
    b = run(Sequential(), p.x, p.step, p.executor, cache=cache)
    assert torch.equal(a.x, b.x) and stats == cache.stats()


@pytest.mark.parametrize("method", [Sequential(), Chords(6), ParaDiGMS(window=8, tol=0.1)], ids=lambda m: m.name)
def test_interval_one_reproduces_the_uncached_run_exactly(problem, method):
    p = problem(steps=40)
    plain = run(method, p.x, p.step, p.executor, "none")
    cached = run(method, p.x, p.step, p.executor, "none", cache=ABCache(CacheConfig(order=2, interval=1)))
    assert torch.equal(plain.x, cached.x) and plain.nfe == cached.nfe and plain.rounds == cached.rounds


@pytest.mark.parametrize("kind", ["vp", "flow"])
def test_higher_order_beats_reuse_at_equal_nfe(problem, kind):
    p = problem(kind=kind, steps=50)
    ref = run(Sequential(), p.x, p.step, p.executor).x
    results = {k: run(Sequential(), p.x, p.step, p.executor, cache=ABCache(CacheConfig(order=k, interval=3, warmup=3)))
               for k in (1, 2)}
    assert results[1].nfe == results[2].nfe < 30
    assert rmse(results[2].x, ref) < rmse(results[1].x, ref)


def test_composes_with_chords_one_history_per_core(problem):
    """Per-core histories and a round schedule: core 1 sees exactly the cached sequential run."""
    p = problem(steps=50)
    config = CacheConfig(order=2, interval=2, warmup=2)
    cached_seq = run(Sequential(), p.x, p.step, p.executor, cache=ABCache(config)).x
    plain = run(Chords(8), p.x, p.step, p.executor, "none")
    cache = ABCache(config)
    hits = []
    res = run(Chords(8), p.x, p.step, p.executor, "none", cache=cache, on_hit=hits.append)
    assert set(cache.history) == set(range(1, 9))  # one history per core
    assert (hits[-1].x - cached_seq).abs().max() <= 1e-5
    # a rectified core's history restarts (its next request is computed), so rounds may not drop at K = 8
    assert res.nfe < plain.nfe and res.rounds <= res.all_rounds == plain.rounds == 50
    assert hits[0].round <= hits[0].all_rounds == 17


def test_chords_with_abcache_keeps_chords_quality():
    """A rectified core's stale history is forgotten: CHORDS K=4 + abcache:2 stays within 3 dB of CHORDS alone.

    With the stale outputs extrapolated at the corrected trajectory it landed about 7 dB lower (27.9 against
    42.4 dB on digits; docs/BENCHMARKS.md, "CHORDS with AB-Cache")."""
    from hasten.metrics import psnr

    ref = hasten.sample("digits", "sequential", steps=50, batch=8, seed=0).x
    alone = hasten.sample("digits", "chords", cores=4, steps=50, batch=8, seed=0, stop="first")
    cached = hasten.sample("digits", "chords", cores=4, steps=50, batch=8, seed=0, stop="first", cache="abcache:2")
    assert cached.rounds < alone.rounds and cached.nfe < alone.nfe
    assert float(psnr(cached.x, ref)) >= float(psnr(alone.x, ref)) - 3.0


def test_composes_with_paradigms(problem):
    p = problem(steps=50)
    ref = run(Sequential(), p.x, p.step, p.executor).x
    res = run(ParaDiGMS(window=8, tol=0.1), p.x, p.step, p.executor, cache=ABCache(CacheConfig(order=2, interval=2)))
    assert res.rounds < res.all_rounds and rmse(res.x, ref) < 0.1


def test_api_and_specs():
    res = hasten.sample("gmm", "sequential", steps=30, cache="abcache:2:interval=3")
    assert res.cache["nfe_saved"] == 30 - res.nfe > 0
    assert parse_cache_spec("reuse") == CacheConfig(order=1)
    assert parse_cache_spec("abcache:3:interval=4:history=all") == CacheConfig(order=3, interval=4, history="all")
    assert parse_cache_spec("none") is None and make_cache(None) is None
    assert parse_cache_spec("abcache:2:interval=3:form=x0") == CacheConfig(order=2, interval=3, form="x0")
    assert parse_cache_spec("reuse:form=index") == CacheConfig(order=1, form="index")


@pytest.mark.parametrize("kwargs,message", [
    (dict(order=0), "order must be an integer in 1..4"),
    (dict(order=5), "order must be an integer in 1..4"),
    (dict(interval=0), "interval must be an integer >= 1"),
    (dict(order=3, warmup=2), "warmup must be an integer >= the order \\(3\\)"),
    (dict(history="some"), "history must be 'computed' or 'all'"),
    (dict(form="lambda"), "cache form must be one of paper, eps, x0, index, got 'lambda'"),
])
def test_bad_cache_config(kwargs, message):
    with pytest.raises(HastenError, match=message):
        CacheConfig(**kwargs)


def test_bad_cache_specs_and_unservable_grids():
    with pytest.raises(HastenError, match="unknown cache 'teacache'"):
        parse_cache_spec("teacache")
    with pytest.raises(HastenError, match="bad option .speed=3. for abcache"):
        parse_cache_spec("abcache:2:speed=3")
    zero_snr = Grid.vp(torch.linspace(0.99, 0.0, 1000), torch.tensor([999, 500]), 1.0)
    with pytest.raises(HastenError, match="abcache form 'eps' needs alpha > 0 .* use form 'index'"):
        ABCache(CacheConfig(form="eps")).reset(zero_snr)
    ABCache(CacheConfig(form="index")).reset(zero_snr)  # the step index needs no lambda
    default = ABCache(CacheConfig())
    default.reset(zero_snr)  # the default works on every grid: it takes index where lambda is undefined
    assert default.form == "index"


# ---- adaptive mode (tol instead of interval; issue 11 part 2) ----

def test_adaptive_specs_and_bad_values():
    assert parse_cache_spec("abcache:3:tol=0.05") == CacheConfig(order=3, tol=0.05)
    assert parse_cache_spec("abcache:2:tol=0.1:estimate=embedded:scale=posterior") == CacheConfig(
        order=2, tol=0.1, estimate="embedded", scale="posterior")
    assert CacheConfig(order=3, tol=0.05).label("eps") == "abcache:3 tol=0.05 W=3 form=eps"
    assert CacheConfig(order=2, tol=0.1, estimate="embedded").label() == "abcache:2 tol=0.1 est=embedded W=2"
    for kwargs, message in [(dict(tol=0.0), "tol must be a number > 0"), (dict(tol=-1), "tol must be a number > 0"),
                            (dict(tol=0.1, interval=3), "either interval .* or tol .*, not both"),
                            (dict(tol=0.1, estimate="guess"), "estimate must be one of posterior, embedded"),
                            (dict(tol=0.1, scale="sigma"), "scale must be one of x0, posterior")]:
        with pytest.raises(HastenError, match=message):
            CacheConfig(**kwargs)
    with pytest.raises(HastenError, match="option tol of abcache needs a number, got 'small'"):
        parse_cache_spec("abcache:2:tol=small")


@pytest.mark.parametrize("estimate", ["posterior", "embedded"])
def test_adaptive_limits_tiny_tol_computes_everything_huge_tol_only_warmup(problem, estimate):
    p = problem(steps=30)
    plain = run(Sequential(), p.x, p.step, p.executor)
    tight = run(Sequential(), p.x, p.step, p.executor, cache=make_cache(f"abcache:2:tol=1e-12:estimate={estimate}"))
    assert torch.equal(tight.x, plain.x) and tight.nfe == 30
    cache = make_cache(f"abcache:2:tol=1e9:estimate={estimate}")
    loose = run(Sequential(), p.x, p.step, p.executor, cache=cache)
    # warm-up (order) + the one call that measures / the extra point that estimates the error + the last step
    assert cache.stats()["computed_steps"] == [0, 1, 2, 29] and loose.nfe == 4


def test_adaptive_error_estimate_sums_between_calls_and_restarts(problem):
    """A tolerance between two calls' worth of error: the gaps are bounded, and each call restarts the sum."""
    p = problem(steps=50)
    ref = run(Sequential(), p.x, p.step, p.executor).x
    nfe, err = [], []
    for tol in (0.3, 0.03, 0.003):
        res = run(Sequential(), p.x, p.step, p.executor, cache=make_cache(f"abcache:3:tol={tol}"))
        nfe.append(res.nfe)
        err.append(rmse(res.x, ref))
    assert nfe[0] < nfe[1] < nfe[2] < 50  # a tighter tolerance calls the model more often
    assert err[2] < err[0]


def test_adaptive_meets_the_issue_target_on_digits():
    """Issue 11: sequential DDIM-50 on digits, >= 3x fewer model calls at PSNR >= 30 dB (docs: 10 calls, 44.8 dB)."""
    from hasten.metrics import psnr
    from hasten import load_model

    model = load_model("digits")
    ref = hasten.sample(model, "sequential", steps=50, seed=0, batch=4)
    res = hasten.sample(model, "sequential", steps=50, seed=0, batch=4, cache="abcache:3:tol=0.05")
    assert res.nfe <= 50 / 3
    assert psnr(model.decode(res.x), model.decode(ref.x), 1.0) >= 30


@pytest.mark.parametrize("method", [Chords(6), ParaDiGMS(window=8, tol=0.1)], ids=lambda m: m.name)
def test_adaptive_composes_with_parallel_methods(problem, method):
    p = problem(steps=50)
    ref = run(Sequential(), p.x, p.step, p.executor).x
    plain = run(method, p.x, p.step, p.executor, "none")
    cache = make_cache("abcache:3:tol=0.01")
    res = run(method, p.x, p.step, p.executor, "none", cache=cache)
    assert res.nfe < plain.nfe and res.rounds <= res.all_rounds  # predictions may cost a parallel method iterations
    assert rmse(res.x, ref) < 0.1
    if isinstance(method, Chords):
        assert set(cache.errors) <= set(range(1, 7)) and 1 in cache.errors  # error records by core
        assert cache.restarted and cache.restarted <= set(range(2, 7))  # rectified cores (never core 1) restarted
