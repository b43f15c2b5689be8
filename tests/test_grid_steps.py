"""Grids read from diffusers schedulers; stateless steps reproduce the schedulers' own loops."""

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from hasten import Grid, HastenError, Sequential, run
from hasten.denoise import TimestepDenoiser
from hasten.steps import DDIMStep, EulerStep, make_step


def diffusers_loop(scheduler, denoise, x, steps):
    """The plain diffusers sampling loop, as a pipeline runs it."""
    scheduler.set_timesteps(steps)
    for i, t in enumerate(scheduler.timesteps):
        out = denoise(x, torch.full((x.shape[0],), i))
        x = scheduler.step(out, t, x).prev_sample
    return x


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
# "linspace" is left out on purpose: diffusers' DDIM steps from t to t - num_train // N, which is not the
# next timestep of a linspace grid; hasten walks the grid's own points (docs/DESIGN.md).
@pytest.mark.parametrize("spacing,alpha_one", [("trailing", True), ("leading", False), ("leading", True)])
def test_ddim_sequential_matches_diffusers_ddim(problem, prediction, spacing, alpha_one):
    p = problem(prediction=prediction, steps=20)
    scheduler = DDIMScheduler(timestep_spacing=spacing, set_alpha_to_one=alpha_one, prediction_type=prediction,
                              clip_sample=False)
    grid = Grid.from_scheduler(scheduler, 20)
    denoise = p.model.denoiser(grid)
    ours = run(Sequential(), p.x, make_step(grid), type(p.executor)(denoise)).x
    theirs = diffusers_loop(scheduler, denoise, p.x.clone(), 20)
    assert (ours - theirs).abs().max() <= 1e-5


def test_euler_sequential_matches_diffusers_flow_match(problem):
    p = problem(kind="flow", steps=25)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    grid = Grid.from_scheduler(scheduler, 25)
    denoise = p.model.denoiser(grid)
    ours = run(Sequential(), p.x, make_step(grid), type(p.executor)(denoise)).x
    theirs = diffusers_loop(scheduler, denoise, p.x.clone(), 25)
    assert (ours - theirs).abs().max() <= 1e-5


def test_ddim_on_flow_grid_equals_euler(problem):
    """DDIM written in (x0, eps) form is the flow-matching Euler step on a flow grid."""
    p = problem(kind="flow", steps=10)
    out = p.denoiser(p.x, torch.full((p.x.shape[0],), 2))
    for j in (3, 7, 10):
        assert torch.allclose(DDIMStep(p.grid)(p.x, out, 2, j), EulerStep(p.grid)(p.x, out, 2, j), atol=1e-5)


def test_steps_are_linear_and_float32(problem):
    p = problem(steps=10)
    step = p.step
    x1, x2 = torch.randn(2, 8), torch.randn(2, 8)
    o1, o2 = torch.randn(2, 8), torch.randn(2, 8)
    lhs = step(2 * x1 - 3 * x2, 2 * o1 - 3 * o2, 1, 6)
    rhs = 2 * step(x1, o1, 1, 6) - 3 * step(x2, o2, 1, 6)
    assert torch.allclose(lhs, rhs, atol=1e-5)
    half = step(x1.half(), o1.half(), 0, 1)
    assert half.dtype == torch.float32


def test_timestep_denoiser_returns_float32_for_half_models():
    class Half(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones((), dtype=torch.float16))

        def forward(self, x, t):
            assert x.dtype == torch.float16
            return x * self.w + t.to(x.dtype)[:, None] * 0

    grid = Grid.flow(torch.linspace(1, 0, 5))
    out = TimestepDenoiser(Half(), grid)(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    assert out.dtype == torch.float32


def test_grid_validation_errors():
    with pytest.raises(HastenError, match="prediction 'flow' is not valid for a vp grid"):
        Grid("vp", "flow", torch.ones(3), torch.ones(3), torch.ones(2))
    with pytest.raises(HastenError, match="grid arrays disagree"):
        Grid("flow", "flow", torch.ones(3), torch.ones(3), torch.ones(5))
    with pytest.raises(HastenError, match="needs a flow-matching grid"):
        EulerStep(Grid.vp(torch.linspace(0.99, 0.01, 1000), torch.tensor([999, 500]), 1.0))
    with pytest.raises(HastenError, match="unknown solver"):
        make_step(Grid.flow(torch.linspace(1, 0, 5)), "heun")
