"""CHORDS invariants: equality to sequential, landing rounds, rectification, init sequences, streaming."""

import gc
import math
import weakref

import pytest
import torch

import hasten
from hasten import Chords, Eval, Sequential, run
from hasten.methods.chords_init import (
    PAPER_INIT,
    continuous_init,
    landing_round,
    resolve_init,
    uniform_init,
)
from hasten.methods.parareal import rectify
from hasten.metrics import rmse


class CountingExecutor:
    """Wraps an executor and records the grid indices of every round."""

    def __init__(self, inner):
        self.inner, self.rounds = inner, []

    def evaluate(self, evals):
        self.rounds.append([e.index for e in evals])
        return self.inner.evaluate(evals)


@pytest.mark.parametrize("kind", ["vp", "flow"])
@pytest.mark.parametrize("cores,init", [(1, None), (2, None), (3, [0, 1, 2]), (4, None), (6, None),
                                        (8, None), (8, "uniform"), (5, [0, 1, 7, 20, 49])])
def test_run_to_end_last_hit_equals_sequential(problem, kind, cores, init):
    p = problem(kind=kind, steps=50)
    seq = run(Sequential(), p.x, p.step, p.executor)
    hits = []
    res = run(Chords(cores, init), p.x, p.step, p.executor, "none", on_hit=hits.append)
    assert [h.core for h in hits][-1] == 1
    assert (hits[-1].x - seq.x).abs().max() <= 1e-5
    assert (res.x - seq.x).abs().max() <= 1e-5
    assert res.rounds == 50 and res.stopped_by == "end"


@pytest.mark.parametrize("prediction", ["v_prediction", "sample"])
def test_equality_holds_for_other_parameterisations(problem, prediction):
    p = problem(prediction=prediction, steps=30)
    seq = run(Sequential(), p.x, p.step, p.executor)
    res = run(Chords(4), p.x, p.step, p.executor, "none")
    assert (res.x - seq.x).abs().max() <= 1e-5


@pytest.mark.parametrize("cores,steps", [(4, 50), (6, 50), (8, 50), (8, 100), (5, 37), (3, 10)])
def test_core_k_lands_at_round_n_minus_ik_plus_k_minus_1(problem, cores, steps):
    p = problem(steps=steps)
    init = resolve_init(cores, steps)
    hits = []
    run(Chords(cores), p.x, p.step, p.executor, "none", on_hit=hits.append)
    assert sorted((h.core, h.round) for h in hits) == [(k, steps - init[k - 1] + k - 1) for k in range(1, cores + 1)]
    assert landing_round(init, steps, cores) == min(h.round for h in hits)


def test_fastest_of_eight_cores_lands_at_round_17(problem):
    p = problem(steps=50)
    res = run(Chords(8), p.x, p.step, p.executor, "first")
    assert res.rounds == 17 and res.hits[0].core == 8
    assert math.isclose(res.speedup, 50 / 17)


def test_rounds_follow_algorithm_1_schedule(problem):
    """Rounds 1..K-1 evaluate cores 1..r at their own points (later cores share them); then one fine step each."""
    p = problem(steps=20)
    ex = CountingExecutor(p.executor)
    run(Chords(4, [0, 2, 6, 12]), p.x, p.step, ex, "none")
    assert ex.rounds[0] == [0]
    assert ex.rounds[1] == [1, 2]
    assert ex.rounds[2] == [2, 3, 6]
    assert ex.rounds[3] == [3, 4, 7, 12]
    assert len(ex.rounds) == 20 and ex.rounds[-1] == [19]


def test_nfe_counts_each_distinct_evaluation_once(problem):
    p = problem(steps=50)
    init = PAPER_INIT[(8, 50)]
    res = run(Chords(8), p.x, p.step, p.executor, "none")
    assert res.nfe == sum(50 - i for i in init)  # each core's fine steps; init jumps reuse them


def test_later_cores_are_more_accurate(problem):
    p = problem(steps=50)
    seq = run(Sequential(), p.x, p.step, p.executor)
    hits = []
    run(Chords(8), p.x, p.step, p.executor, "none", on_hit=hits.append)
    errors = [rmse(h.x, seq.x) for h in hits]  # landing order: fastest first
    assert all(b <= a * 1.0001 for a, b in zip(errors, errors[1:]))
    assert errors[0] > 0 and errors[-1] == 0


def test_rectification_reduces_error_on_linear_ode():
    """Prop. 2.1 with f(x, t) = x: rectified error is o(unrectified error) as the jump shrinks."""

    class Euler:
        def __call__(self, x, out, i, j, noise=None):
            return x + (j - i) * 1e-3 * out

    step = Euler()
    x_acc = torch.tensor([1.0], dtype=torch.float64)
    x_stale = torch.tensor([0.8], dtype=torch.float64)
    ratios = []
    for jump in (400, 200, 100, 50):  # delta = jump * 1e-3
        delta = jump * 1e-3
        exact = x_acc * math.exp(delta)
        fine = x_stale * math.exp(delta)  # exact solve from the stale start
        fixed = rectify(step, fine, x_stale, x_stale, x_acc, x_acc, 0, jump)
        ratios.append(float((fixed - exact).abs() / (fine - exact).abs()))
    assert all(r < 1 for r in ratios)
    assert all(b < a / 1.5 for a, b in zip(ratios, ratios[1:]))  # ratio -> 0 like delta


def test_rectification_improves_the_fastest_core(problem):
    """The fastest core with rectification is closer to sequential than the same core left alone."""
    p = problem(steps=50)
    seq = run(Sequential(), p.x, p.step, p.executor).x
    init = PAPER_INIT[(8, 50)]
    res = run(Chords(8), p.x, p.step, p.executor, "first").x

    def den(x, i):
        return p.denoiser(x, torch.full((x.shape[0],), i))

    x = p.x
    for a, b in zip(init, init[1:]):
        x = p.step(x, den(x, a), a, b)
    for i in range(init[-1], 50):
        x = p.step(x, den(x, i), i, i + 1)
    assert rmse(res, seq) < 0.5 * rmse(x, seq)


def test_continuous_init_matches_figure_2():
    assert continuous_init(4, 10 / 3) == pytest.approx([0, 0.2, 0.4, 0.7])


def test_paper_sequences_and_uniform():
    assert resolve_init(4, 50) == [0, 8, 16, 32]
    assert resolve_init(6, 50) == [0, 3, 6, 12, 24, 36]
    assert resolve_init(8, 50) == [0, 2, 4, 8, 16, 24, 32, 40]
    assert uniform_init(8, 50) == [0, 6, 12, 18, 24, 30, 36, 42]
    assert resolve_init(2, 50) == [0, 20]  # t_2 = 0.4 < 1/2: core 2 is rectified before it lands
    assert resolve_init(8, 50, speedup=5.0) == [0, 1, 3, 5, 10, 20, 30, 40]  # 1.25 -> 1, 2.5 -> 3


@pytest.mark.parametrize("cores", range(1, 13))
@pytest.mark.parametrize("steps", [13, 20, 50, 75, 100, 1000])
@pytest.mark.parametrize("speedup", [None, 1.5, 3.0, 20.0])
def test_computed_init_sequences_are_valid(cores, steps, speedup):
    init = resolve_init(cores, steps, speedup=speedup)
    assert len(init) == cores and init[0] == 0
    assert all(b > a for a, b in zip(init, init[1:])) and init[-1] < steps
    assert all(2 * init[c] - init[c - 1] <= steps for c in range(1, cores))  # every core is rectified before it lands


def test_hits_stream_while_sampling_runs(problem):
    p = problem(steps=50)
    ex = CountingExecutor(p.executor)
    method = Chords(8)
    init = method.init_sequence(50)
    stream = hasten.engine.HitStream(hasten.iterate(method, p.x, p.step, ex, "none"))
    seen = []
    for hit in stream:
        seen.append((hit.core, len(ex.rounds)))  # rounds executed when the hit reached us
    assert seen == [(k, landing_round(init, 50, k)) for k in range(8, 0, -1)]
    assert stream.result is not None and stream.result.rounds == 50


def test_only_o_k_latents_are_kept(problem):
    """Delivered hits are not retained by the engine: only the latest one stays alive."""
    p = problem(steps=50, batch=2)
    refs = []
    stream = hasten.engine.HitStream(hasten.iterate(Chords(8), p.x, p.step, p.executor, "none"))
    for hit in stream:
        refs.append(weakref.ref(hit.x))
        del hit
    gc.collect()
    alive = [r for r in refs if r() is not None]
    assert len(alive) <= 1  # the last hit is the result
    assert stream.result.hits and all(not isinstance(v, torch.Tensor) for v in vars(stream.result.hits[0]).values())


@pytest.mark.parametrize("stop,expect_core", [("first", 8), ("core:5", 5), ("core:1", 1), ("none", 1)])
def test_stop_rules(problem, stop, expect_core):
    p = problem(steps=50)
    init = PAPER_INIT[(8, 50)]
    res = run(Chords(8), p.x, p.step, p.executor, stop)
    assert res.hits[-1].core == expect_core
    assert res.rounds == landing_round(init, 50, expect_core)


def test_residual_stop_is_relative_and_size_independent(problem):
    p = problem(steps=50)
    full = run(Chords(8), p.x, p.step, p.executor, "none")
    residuals = [h.residual for h in full.hits]
    tol = 1e-3
    expected = next(h for h in full.hits if h.residual is not None and h.residual <= tol)
    res = run(Chords(8), p.x, p.step, p.executor, f"residual:{tol}")
    assert res.hits[-1].core == expected.core and res.rounds == expected.round
    # the same latents scaled and tiled give the same residuals
    a, b = torch.randn(3, 16), torch.randn(3, 16)
    r1 = hasten.stopping.relative_residual(a, b)
    r2 = hasten.stopping.relative_residual(10 * a.repeat(1, 50), 10 * b.repeat(1, 50))
    assert r1 == pytest.approx(r2, rel=1e-5)
    assert residuals[0] is None


def test_sample_api_end_to_end():
    seq = hasten.sample("gmm", "sequential", steps=30, batch=3, seed=7)
    res = hasten.sample("gmm", "chords", cores=4, steps=30, batch=3, seed=7, stop="none")
    assert (res.x - seq.x).abs().max() <= 1e-5
    assert seq.rounds == 30 and seq.nfe == 30
    other = hasten.sample("gmm", "sequential", steps=30, batch=3, seed=8)
    assert (other.x - seq.x).abs().max() > 1e-2  # the seed matters


def test_round_requests_are_independent_batches(problem):
    """The batched executor answers each request exactly as a lone call would."""
    p = problem(steps=10)
    evals = [Eval(p.x, 0), Eval(p.x * 0.5, 3), Eval(p.x + 1, 7)]
    outs = p.executor.evaluate(evals)
    for e, o in zip(evals, outs):
        lone = p.denoiser(e.x, torch.full((e.x.shape[0],), e.index))
        assert torch.allclose(o, lone, atol=1e-6)
