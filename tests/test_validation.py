"""Bad input gets one clear error naming the argument, before any model call."""

import pytest
import torch

import hasten
from hasten import Chords, HastenError, NonFiniteOutputError, Sequential, run
from hasten.executors.batched import BatchedExecutor


class NoCallDenoiser:
    def __call__(self, x, index):
        raise AssertionError("the model must not be called for invalid input")


@pytest.mark.parametrize("kwargs,message", [
    (dict(cores=0), "cores must be an integer >= 1"),
    (dict(cores=-3), "cores must be an integer >= 1"),
    (dict(cores=2.5), "cores must be an integer >= 1"),
    (dict(cores=4, speedup=1.0), "speedup must be > 1"),
    (dict(cores=4, speedup=0.5), "speedup must be > 1"),
])
def test_invalid_method_options(kwargs, message):
    with pytest.raises(HastenError, match=message):
        Chords(**kwargs)


@pytest.mark.parametrize("init,steps,message", [
    ([1, 8, 16, 32], 50, "init must start at 0"),
    ([0, 8, 8, 32], 50, "strictly increasing"),
    ([0, 16, 8, 32], 50, "strictly increasing"),
    ([0, 8, 16, 50], 50, "below steps=50"),
    ([0, 8, 16, 60], 50, "below steps=50"),
    ([0, 8, 16], 50, "one entry per core \\(4\\)"),
    ([0, 8, 16, 32, 40], 50, "one entry per core \\(4\\)"),
    ([0, 8.0, 16, 32], 50, "integer grid indices"),
    ("fancy", 50, "init must be 'paper', 'uniform'"),
    (None, 4, "steps must be greater than cores"),
    (None, 3, "steps must be greater than cores"),
])
def test_invalid_init_or_steps_refused_before_any_model_call(problem, init, steps, message):
    p = problem(steps=max(steps, 1))
    with pytest.raises(HastenError, match=message):
        run(Chords(4, init), p.x, p.step, BatchedExecutor(NoCallDenoiser()))


@pytest.mark.parametrize("stop,message", [
    ("residual:0", "tolerance must be a finite number > 0"),
    ("residual:-1e-3", "tolerance must be a finite number > 0"),
    ("residual:nan", "tolerance must be a finite number > 0"),
    ("residual:abc", "needs a number"),
    ("core:0", "stop core must be >= 1"),
    ("core:x", "needs an integer core"),
    ("core:9", "asks for a core the method does not have"),
    ("sometimes", "stop must be one of first, core:K, residual:TOL, none"),
])
def test_invalid_stop_rules(problem, stop, message):
    p = problem(steps=50)
    with pytest.raises(HastenError, match=message):
        run(Chords(8), p.x, p.step, BatchedExecutor(NoCallDenoiser()), stop)


def test_unknown_model_method_solver():
    with pytest.raises(HastenError, match=r"model 'sd9' is not an embedded model \(gmm, gmm-flow, digits, digits-cond\)"):
        hasten.sample("sd9")
    with pytest.raises(HastenError, match="unknown method 'picard'; valid: sequential, chords, paradigms"):
        hasten.sample("gmm", "picard")
    with pytest.raises(HastenError, match="solver 'euler' needs a flow-matching grid"):
        hasten.sample("gmm", "sequential", solver="euler")
    with pytest.raises(HastenError, match="batch must be an integer >= 1"):
        hasten.sample("gmm", "sequential", batch=0)
    with pytest.raises(HastenError, match="method sequential does not take init; its options: none"):
        hasten.sample("gmm", "sequential", init=[0, 1])


@pytest.mark.parametrize("method", [Sequential(), Chords(4)])
def test_non_finite_model_output_names_the_step(problem, method):
    p = problem(steps=20)

    def broken(x, index):
        out = p.denoiser(x, index)
        out[index == 5] = float("nan")
        return out

    with pytest.raises(NonFiniteOutputError, match=r"grid step 5 of 20 \(model time \d+\) in round \d+"):
        run(method, p.x, p.step, BatchedExecutor(broken), "none")


def test_inf_is_caught_too(problem):
    p = problem(steps=10)
    with pytest.raises(NonFiniteOutputError, match="grid step 0 of 10"):
        run(Sequential(), p.x, p.step, BatchedExecutor(lambda x, i: torch.full_like(x, float("inf"))))
