"""ParaDiGMS, SRDS, ParaSolver and ParaSolver-Turbo on the shared engine."""


import pytest
import torch
from diffusers import DDIMScheduler

import hasten
from hasten import Grid, HastenError, Sequential, run
from hasten.noise import draw_noise
from hasten.methods import SRDS, ParaDiGMS, ParaSolver, ParaSolverTurbo, make_method, parse_method_spec
from hasten.methods.subintervals import NotConvergedWarning
from hasten.metrics import rmse
from hasten.parameterisation import output_for_x0
from hasten.steps import DDPMStep, linear_step, make_step, predicted_x0


def seq(p):
    return run(Sequential(), p.x, p.step, p.executor)


class RecordingExecutor:
    def __init__(self, inner):
        self.inner, self.sizes = inner, []

    def evaluate(self, evals):
        self.sizes.append(len(evals))
        return self.inner.evaluate(evals)


def ddpm_problem(problem, steps=40, prediction=None):
    p = problem(steps=steps, prediction=prediction)
    p.step = DDPMStep(p.grid, draw_noise(p.x, steps, "ddpm", 0))
    return p


# --- reductions to the parent or to sequential ---------------------------------------------------

@pytest.mark.parametrize("kind", ["vp", "flow"])
def test_window_of_one_is_sequential(problem, kind):
    p = problem(kind=kind, steps=30)
    for method in (ParaDiGMS(window=1), ParaSolver(window=1), ParaSolverTurbo(window=1, rho=1)):
        res = run(method, p.x, p.step, p.executor)
        assert torch.equal(res.x, seq(p).x) and res.rounds == 30 and res.nfe == 30


def test_parasolver_with_one_subinterval_is_sequential(problem):
    p = problem(steps=30)
    res = run(ParaSolver(window=4, subintervals=1, precondition=0), p.x, p.step, p.executor)
    assert torch.equal(res.x, seq(p).x) and res.rounds == 30 and res.nfe == 30


def test_turbo_with_rho_equal_to_window_is_parasolver(problem):
    p = problem(steps=50)
    ex1, ex2 = RecordingExecutor(p.executor), RecordingExecutor(p.executor)
    a = run(ParaSolver(window=8, tol=0.03), p.x, p.step, ex1)
    b = run(ParaSolverTurbo(window=8, rho=8, tol=0.03, precondition=1), p.x, p.step, ex2)  # ParaSolver's M
    assert torch.equal(a.x, b.x) and ex1.sizes == ex2.sizes


@pytest.mark.parametrize("rho", [9, 50])
def test_turbo_refuses_rho_beyond_its_window(problem, rho):
    """Issue 10: rho > window used to be clamped silently and reported as the rho asked for."""
    p = problem(steps=50)
    with pytest.raises(HastenError, match=f"rho={rho} exceeds window=8"):
        run(ParaSolverTurbo(window=8, rho=rho, tol=0.03), p.x, p.step, p.executor)


def test_srds_with_one_block_is_sequential(problem):
    p = problem(steps=30)
    res = run(SRDS(blocks=1), p.x, p.step, p.executor)
    assert torch.equal(res.x, seq(p).x) and res.rounds == 30


# --- tight tolerances reproduce sequential sampling ----------------------------------------------
# Bound: 1e-5 max abs in float32. At a tight tolerance every point is accepted only after its inputs
# stopped moving, so the remaining gap is float rounding of the Newton / Picard sums (~1e-6 here).

TIGHT = [ParaDiGMS(window=8, tol=1e-5), ParaSolver(window=16, tol=1e-6), ParaSolverTurbo(window=16, rho=4, tol=1e-6),
         SRDS(tol=1e-6)]


@pytest.mark.parametrize("method", TIGHT, ids=lambda m: m.name)
@pytest.mark.parametrize("kind,prediction", [("vp", None), ("vp", "v_prediction"), ("flow", None)])
def test_tight_tolerance_reproduces_sequential(problem, method, kind, prediction):
    p = problem(kind=kind, prediction=prediction, steps=50)
    res = run(method, p.x, p.step, p.executor)
    assert (res.x - seq(p).x).abs().max() <= 1e-5
    assert res.rounds < 50


@pytest.mark.parametrize("method", TIGHT + [hasten.Chords(4)], ids=lambda m: m.name)
def test_ddpm_parallel_converges_to_the_sequential_ddpm_trajectory(problem, method):
    p = ddpm_problem(problem, steps=40)
    ref = seq(p).x
    res = run(method, p.x, p.step, p.executor, "none")
    assert (res.x - ref).abs().max() <= 1e-5
    ddim = run(Sequential(), p.x, make_step(p.grid), p.executor).x
    assert (ddim - ref).abs().max() > 0.1  # the noise really is in the trajectory


# --- the steps ----------------------------------------------------------------------------------

def test_ddpm_step_matches_diffusers_ddim_with_eta_one(problem):
    """DDPM written as DDIM(eta=1) against diffusers' own eta=1 step with the same noise."""
    p = problem(steps=20)
    scheduler = DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False)
    grid = Grid.from_scheduler(scheduler, 20)
    noise = draw_noise(p.x, 20, "ddpm", 3)
    ours = run(Sequential(), p.x, DDPMStep(grid, noise), type(p.executor)(p.model.denoiser(grid))).x
    x = p.x.clone()
    den = p.model.denoiser(grid)
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(den(x, torch.full((x.shape[0],), i)), t, x, eta=1.0, variance_noise=noise[i]).prev_sample
    assert (ours - x).abs().max() <= 1e-5


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_linear_step_keeps_x0_and_is_affine(problem, prediction):
    p = problem(prediction=prediction, steps=10)
    x, x0 = torch.randn(3, 8), torch.randn(3, 8)
    out = output_for_x0(p.grid, x, x0, 2)
    assert torch.allclose(predicted_x0(p.step, x, out, 2), x0, atol=1e-4)
    a, b = linear_step(p.step, x, x0, 2, 5), linear_step(p.step, 2 * x, x0, 2, 5)
    c = linear_step(p.step, torch.zeros_like(x), x0, 2, 5)
    assert torch.allclose(b - c, 2 * (a - c), atol=1e-4)


# --- costs and behaviour -------------------------------------------------------------------------

def test_turbo_calls_the_model_on_rho_points_per_round(problem):
    p = problem(steps=50)
    ex = RecordingExecutor(p.executor)
    res = run(ParaSolverTurbo(window=24, rho=6, tol=0.03, precondition=2), p.x, p.step, ex)
    assert ex.sizes[:2] == [1, 1]  # preconditioning: M sequential steps
    assert max(ex.sizes) == 6 and res.nfe == sum(ex.sizes)
    assert res.nfe < 1.5 * 50 and res.rounds < 20


def test_paradigms_evaluates_the_whole_window(problem):
    p = problem(steps=50)
    ex = RecordingExecutor(p.executor)
    run(ParaDiGMS(window=8, tol=0.1), p.x, p.step, ex)
    assert ex.sizes[0] == 8 and max(ex.sizes) == 8


def test_srds_pipelines_and_respects_its_core_cap(problem):
    p = problem(steps=49)  # 7 blocks of 7 steps
    ex = RecordingExecutor(p.executor)
    hits = []
    run(SRDS(tol=1e-9), p.x, p.step, ex, on_hit=hits.append)
    assert [h.core for h in hits] == list(range(len(hits)))
    assert hits[0].round == 7  # the coarse sweep: one jump per block
    assert hits[1].round < 7 + 7 + 7  # iteration 1 overlaps the coarse sweep (pipelined)
    capped = RecordingExecutor(p.executor)
    run(SRDS(tol=1e-9, max_per_round=3), p.x, p.step, capped)
    assert max(capped.sizes) == 3


def test_turbo_trades_nfe_for_accuracy_through_rho(problem):
    """Few nonlinear equations leave the linear ones on a stale x0: cheaper, and measurably less exact."""
    p = problem(steps=50)
    ref = seq(p).x
    results = [run(ParaSolverTurbo(window=50, rho=rho, tol=0.03), p.x, p.step, p.executor) for rho in (2, 8, 50)]
    nfes = [r.nfe for r in results]
    errors = [rmse(r.x, ref) for r in results]
    assert nfes[0] < nfes[1] < nfes[2]
    assert errors[0] > errors[1] > errors[2]


@pytest.mark.parametrize("method", [ParaDiGMS(window=4, tol=1e-6, max_iters=3),
                                    ParaSolverTurbo(window=8, rho=2, tol=1e-6, max_iters=2),
                                    SRDS(tol=1e-9, max_iters=1)], ids=lambda m: m.name)
def test_iteration_cap_warns_and_returns_a_full_result(problem, method):
    p = problem(steps=40)
    with pytest.warns(NotConvergedWarning, match="max_iters"):
        res = run(method, p.x, p.step, p.executor)
    assert res.x.shape == p.x.shape and torch.isfinite(res.x).all()
    assert (res.x - seq(p).x).abs().max() > 1e-4  # it really is unconverged, and says so


# --- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,options,message", [
    ("paradigms", dict(window=0), "window must be an integer >= 1"),
    ("paradigms", dict(tol=0.0), "tol must be a finite number > 0"),
    ("paradigms", dict(tol=-1.0), "tol must be a finite number > 0"),
    ("paradigms", dict(max_iters=0), "max_iters must be an integer >= 1"),
    ("parasolver-turbo", dict(rho=0), "rho must be an integer >= 1"),
    ("parasolver", dict(precondition=-1), "precondition must be an integer in 0..50"),
    ("parasolver", dict(subintervals=51), "subintervals must be an integer in 1..50"),
    ("srds", dict(blocks=0), "blocks must be an integer in 1..50"),
    ("srds", dict(tol=float("nan")), "tol must be a finite number > 0"),
    ("paradigms", dict(rho=3), "method paradigms does not take rho"),
])
def test_out_of_range_options_are_refused_before_any_model_call(name, options, message):
    with pytest.raises(HastenError, match=message):
        hasten.sample("gmm", name, steps=50, **options)


def test_ddpm_needs_a_vp_grid_and_noise():
    with pytest.raises(HastenError, match="solver 'ddpm' needs a VP grid"):
        hasten.sample("gmm-flow", "sequential", solver="ddpm")
    grid = hasten.load_model("gmm").grid(10)
    with pytest.raises(HastenError, match="needs noise of shape"):
        make_step(grid, "ddpm")


def test_method_specs():
    assert parse_method_spec("parasolver-turbo:window=24:rho=8") == ("parasolver-turbo", {"window": 24, "rho": 8})
    with pytest.raises(HastenError, match="bad option 'speed=2' for srds"):
        parse_method_spec("srds:speed=2")
    with pytest.raises(HastenError, match="option rho of parasolver-turbo needs an integer"):
        parse_method_spec("parasolver-turbo:rho=many")
    turbo = make_method("parasolver-turbo", cores=8)
    assert (turbo.rho, turbo.window, turbo.precondition) == (8, None, None)  # window and M: per solver
    assert (turbo.window_for("ddim", 50), turbo.precondition_for("ddim")) == (50, 0)  # the paper's DDIM-50
    assert (turbo.window_for("ddpm", 1000), turbo.precondition_for("ddpm")) == (24, 1)  # paper's p = 100 degrades
    assert make_method("paradigms", cores=6).window == 6


def test_turbo_window_defaults_to_the_papers_p_per_solver():
    """ParaSolver-Turbo Appendix D: p = 50 for DDIM-50, capped at the sub-intervals; DDPM keeps p = 24
    (the paper's p = 100 degrades DDPM samples, docs/BENCHMARKS.md)."""
    turbo = make_method("parasolver-turbo")
    assert [turbo.window_for(s, n) for s, n in (("ddpm", 1000), ("ddim", 50), ("euler", 50))] == [24, 50, 50]
    assert (turbo.window_for("ddpm", 20), turbo.window_for("ddim", 25)) == (20, 25)
    assert make_method("parasolver-turbo", window=24).window_for("ddpm", 1000) == 24
    assert turbo.max_width(1000) == 8 and turbo.max_width(5) == 5
