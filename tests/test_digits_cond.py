"""The embedded conditional digits model: its prompts, its guidance, its quality, and every method on it."""

import math
import subprocess
import sys

import pytest
import torch

import hasten
from hasten.errors import HastenError
from hasten.metrics import digit_features
from hasten.models import load_embedded
from hasten.models.digits import NULL_CLASS
from hasten.models.digits_cond import DEFAULT_GUIDANCE


@pytest.fixture(scope="module")
def model():
    return load_embedded("digits-cond")


def sample(model, prompt, method="sequential", batch=2, seed=0, steps=20, **kw):
    call = {"prompt": prompt, **({"guidance_scale": kw.pop("guidance_scale")} if "guidance_scale" in kw else {})}
    return hasten.sample(model, method, steps=steps, batch=batch, seed=seed, call=call, **kw)


@pytest.mark.parametrize("prompt", ["a cat", "77", "-1", "٣", "7.0"])
def test_a_prompt_that_is_not_one_digit_is_refused_by_name(model, prompt):
    with pytest.raises(HastenError, match=r"prompt must be one digit 0-9, or empty"):
        model.with_call({"prompt": prompt})


@pytest.mark.parametrize("call, match", [
    ({"prompt": 7}, r"prompt must be a digit 0-9 as a string"),
    ({"prompt": ["1", "x"]}, r"prompt\[1\] must be one digit"),
    ({"prompt": []}, r"one per sample, got an empty list"),
    ({"guidance_scale": math.nan}, r"guidance_scale must be a finite number >= 1"),
    ({"guidance_scale": 0.5}, r"guidance_scale must be a finite number >= 1"),
    ({"guidance_scale": True}, r"guidance_scale must be a finite number >= 1"),
    ({"negative_prompt": "3"}, r"negative_prompt apply to diffusers pipelines; the embedded model digits-cond takes prompt and guidance_scale"),
])
def test_bad_calls_are_refused_before_any_network_call(model, call, match):
    with pytest.raises(HastenError, match=match):
        model.with_call(call)


def test_a_prompt_list_needs_one_prompt_per_sample():
    with pytest.raises(HastenError, match=r"3 samples, 2 prompts"):
        hasten.sample("digits-cond", "sequential", steps=4, batch=3, call={"prompt": ["1", "2"]})


def test_guidance_costs_two_rows_only_where_it_applies(model):
    grid = model.grid(10)
    assert model.with_call({"prompt": "7"}).denoiser(grid).rows_per_input == 2
    assert model.with_call({"prompt": "7", "guidance_scale": 1}).denoiser(grid).rows_per_input == 1
    assert model.with_call({"prompt": ""}).denoiser(grid).rows_per_input == 1
    assert model.denoiser(grid).rows_per_input == 1  # no call: unconditional
    assert model.with_call({"prompt": " 4 "}).labels == (4,)
    assert model.with_call({"prompt": ""}).labels == (NULL_CLASS,)


def test_the_prompt_and_the_guidance_change_the_sample(model):
    seven = sample(model, "7").x
    assert (sample(model, "1").x - seven).abs().max() > 0.1
    assert (sample(model, "7", guidance_scale=4.0).x - seven).abs().max() > 0.1
    assert (sample(model, "").x - seven).abs().max() > 0.1
    # the default guidance is the one a call without guidance_scale gets
    assert torch.equal(sample(model, "7", guidance_scale=DEFAULT_GUIDANCE).x, seven)


def test_each_sample_of_a_prompt_list_is_its_own_prompts_sample(model):
    mixed = sample(model, ["3", "5", ""], batch=3).x
    for row, prompt in enumerate(["3", "5", ""]):
        alone = sample(model, prompt, batch=3).x
        assert (mixed[row] - alone[row]).abs().max() <= 1e-5, prompt


def test_samples_show_the_digit_asked_for(model):
    """A classifier fitted on the real digits reads the asked digit in most guided samples (default guidance)."""
    prompts = [str(d) for d in range(10) for _ in range(4)]
    result = sample(model, prompts, batch=len(prompts), steps=30)
    accuracy = digit_features().accuracy(model.decode(result.x), [int(p) for p in prompts])
    unguided = sample(model, prompts, batch=len(prompts), steps=30, guidance_scale=1.0)
    assert accuracy >= 0.8, accuracy
    assert accuracy >= digit_features().accuracy(model.decode(unguided.x), [int(p) for p in prompts])


@pytest.mark.parametrize("method", ["chords", "paradigms:tol=1e-6", "parasolver-turbo:tol=1e-7", "srds:tol=1e-7"])
def test_every_method_reaches_the_sequential_result_on_the_guided_model(model, method):
    """Run to convergence (CHORDS to its last core; the iterative methods at a tight tolerance)."""
    ref = sample(model, ["2", "8"], steps=24).x
    got = sample(model, ["2", "8"], method, steps=24, stop="none", **({"cores": 4} if method == "chords" else {}))
    assert (got.x - ref).abs().max() <= 2e-4, method


def test_the_default_cache_runs_on_the_guided_model(model):
    ref = sample(model, "6", steps=24)
    cached = sample(model, "6", steps=24, cache="abcache")
    assert cached.nfe < ref.nfe
    assert (cached.x - ref.x).abs().max() < 0.5


def test_bfloat16_runs_the_network_in_bfloat16():
    model = load_embedded("digits-cond", dtype="bfloat16")
    assert next(model.unet.parameters()).dtype == torch.bfloat16
    out = sample(model, "3", steps=6)
    assert out.x.dtype == torch.float32 and torch.isfinite(out.x).all()


def test_the_command_line_takes_a_digit_prompt(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "hasten", "sample", "--model", "digits-cond", "--prompt", "7",
                         "--guidance-scale", "2", "--steps", "8", "--batch", "2", "--out", str(tmp_path / "run")],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "run" / "result.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "hasten", "sample", "--model", "digits-cond", "--prompt", "cat",
                          "--steps", "8", "--out", str(tmp_path / "bad")], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "prompt must be one digit" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_a_bad_prompt_is_refused_before_the_weights_load(monkeypatch):
    from hasten.models import digits

    def no_loading(*args, **kw):
        raise AssertionError("the weights were loaded before the call was checked")

    monkeypatch.setattr(digits, "_load_unet", no_loading)
    monkeypatch.setattr("hasten.models.digits_cond._load_unet", no_loading)
    with pytest.raises(HastenError, match="prompt must be one digit"):
        hasten.load_model("digits-cond", call={"prompt": "a cat"})
