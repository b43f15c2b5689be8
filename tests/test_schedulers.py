"""Every family x every scheduler diffusers ships for it: hasten reproduces the pipeline, or refuses.

The cells come from tools/scheduler_matrix.py (the same code writes docs/SCHEDULERS.md).
"""

from __future__ import annotations

import inspect
import logging
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import diffusers  # noqa: E402

import hasten  # noqa: E402
from hasten.errors import HastenError  # noqa: E402
from hasten.grid import Grid  # noqa: E402
from hasten.integrations.schedulers import MULTISTEP, REPRODUCED, first_order_scheduler  # noqa: E402
from hasten.testing.pipelines import tiny_pipeline  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import scheduler_matrix as matrix  # noqa: E402

CELLS = [(kind, name, options) for kind in matrix.VP_FAMILIES + matrix.FLOW_FAMILIES
         for name, options in matrix.cases(kind)]
VE = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler",
      "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "EDMEulerScheduler", "DPMSolverSDEScheduler")


def expected(kind: str, name: str, options: dict) -> set[str]:
    """The outcomes a cell may have: what the issue asks of each scheduler."""
    if options.get("thresholding"):
        return {"refused"}
    if kind == "ddim":
        return {"reproduces"}  # DDIMPipeline turns any scheduler into DDIM
    if name == "UniPCMultistepScheduler" and kind not in ("flux", "hunyuanvideo") and (
            options.get("solver_type") == "bh1" and options.get("final_sigmas_type", "zero") == "zero"
            or options.get("use_karras_sigmas") and options.get("final_sigmas_type") == "sigma_min"):
        return {"refused"}  # the pipeline's own bh1 step onto sigma = 0 is NaN; Karras to sigma_min twice: h = 0
    if name == "DPMSolverMultistepScheduler" and options.get("use_flow_sigmas") and (
            options.get("algorithm_type") == "sde-dpmsolver++"):
        return {"refused"}  # the SDE step on flow sigmas is not hasten's
    if options.get("variance_type") == "fixed_large" or "LCM" in name:
        return {"refused"}
    if kind == "ddpm" and name in VE:
        return {"refused"}  # DDPMPipeline neither scales noise nor model input
    if kind == "wan" and not (name.startswith("FlowMatch") or options.get("use_flow_sigmas")):
        return {"refused"}  # a VP scheduler on a flow model: unscaled (VE) or failing in the pipeline itself
    if kind == "ddpm" and "generator" not in inspect.signature(getattr(diffusers, name).step).parameters:
        return {"refused"}  # DDPMPipeline passes step a generator, and itself fails on these
    if name.startswith("EDM"):
        return {"refused"}
    if kind == "sd3" and name in MULTISTEP and options.get("use_flow_sigmas"):
        return {"reproduces"}  # SD3 leaves the sigmas to its scheduler: the flow multistep ones run as themselves
    if kind in ("flux", "sd3", "hunyuanvideo") and name != "FlowMatchEulerDiscreteScheduler":
        return {"refused"}
    if name in REPRODUCED or name in MULTISTEP:  # DPM-Solver++ 2M and UniPC: the multistep steps
        return {"reproduces"}
    return {"counterpart"}


@pytest.mark.parametrize("kind,name,options", CELLS, ids=[f"{k}-{matrix.label(n, o)}" for k, n, o in CELLS])
def test_every_scheduler_reproduces_or_is_refused(kind, name, options):
    if name in matrix.OPTIONAL:
        pytest.importorskip(matrix.OPTIONAL[name])
    cell = matrix.check(kind, name, options)
    assert cell["outcome"] != "silent", cell  # the pipeline itself fails here: hasten must refuse
    assert cell["outcome"] in expected(kind, name, options), cell
    if cell["outcome"] == "refused":
        assert "supported" in cell["detail"] or "use " in cell["detail"]
    else:
        assert cell["max_diff"] <= 1e-4 * max(1.0, cell["scale"]), cell


def test_non_dividing_ddim_spacing_lands_where_diffusers_lands():
    scheduler = diffusers.DDIMScheduler(timestep_spacing="trailing")
    grid = Grid.from_scheduler(scheduler, 7)  # 1000 // 7 = 142, grid points 143 apart
    assert (grid.alpha[1:-1] - grid.model_alpha[1:]).abs().max() > 1e-3
    t0, landed = int(scheduler.timesteps[0]), int(scheduler.timesteps[0]) - 1000 // 7
    assert float(grid.alpha[1]) == pytest.approx(float(scheduler.alphas_cumprod[landed].sqrt()))
    assert float(grid.model_alpha[0]) == pytest.approx(float(scheduler.alphas_cumprod[t0].sqrt()))


def _sd(scheduler_cls, **options):
    pipe = tiny_pipeline("sd")
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config, **options)
    return pipe


CALL = dict(prompt="a cat", num_inference_steps=8, output_type="latent")


@pytest.mark.parametrize("method", ["chords", "paradigms", "parasolver-turbo"])
def test_ancestral_euler_converges_under_parallel_methods(method):
    pipe = _sd(diffusers.EulerAncestralDiscreteScheduler)
    theirs = pipe(generator=torch.Generator().manual_seed(1), **CALL).images
    ours = hasten.accelerate(pipe, method, cores=2, stop="none" if method == "chords" else None)(
        generator=torch.Generator().manual_seed(1), **CALL)
    assert ours.hasten["solver"] == "ddpm"
    assert (ours.images - theirs).abs().max() <= 1e-3 * theirs.abs().max()


def test_euler_latents_keep_the_pipelines_scale():
    pipe = _sd(diffusers.EulerDiscreteScheduler)
    theirs = pipe(generator=torch.Generator().manual_seed(0), **CALL).images
    ours = hasten.accelerate(pipe)(generator=torch.Generator().manual_seed(0), **CALL).images
    assert (ours - theirs).abs().max() <= 1e-4 * theirs.abs().max()


def test_stochastic_flow_sampling_draws_noise_and_parallel_methods_converge():
    pipe = tiny_pipeline("flux")
    call = dict(prompt="a cat", height=16, width=16, max_sequence_length=8, num_inference_steps=6,
                output_type="latent")
    torch.manual_seed(5)
    deterministic = hasten.accelerate(pipe)(generator=torch.Generator().manual_seed(0), **call).images
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                                           stochastic_sampling=True)
    torch.manual_seed(5)  # the pipeline draws this noise from torch's global generator
    theirs = pipe(generator=torch.Generator().manual_seed(0), **call).images
    torch.manual_seed(5)
    seq = hasten.accelerate(pipe)(generator=torch.Generator().manual_seed(0), **call)
    torch.manual_seed(5)
    chords = hasten.accelerate(pipe, "chords", cores=2, stop="none")(generator=torch.Generator().manual_seed(0),
                                                                     **call)
    assert seq.hasten["solver"] == "euler-stochastic"
    assert (seq.images - deterministic).abs().max() > 0.1  # the noise is really there
    assert (seq.images - theirs).abs().max() <= 1e-5
    assert (chords.images - theirs).abs().max() <= 1e-4


def test_counterparts_do_not_inherit_ddim_clip_sample():
    config = diffusers.DEISMultistepScheduler().config  # no clip_sample key at all
    counterpart, solver, replaced = first_order_scheduler(diffusers.DEISMultistepScheduler.from_config(config))
    assert solver == "ddim" and replaced == "DEISMultistepScheduler"
    assert counterpart.config.clip_sample is False


def test_cogvideox_dpm_runs_as_cogvideox_ddim_keeping_its_snr_shift(caplog):
    dpm = diffusers.CogVideoXDPMScheduler(snr_shift_scale=1.5, prediction_type="v_prediction")
    with caplog.at_level(logging.WARNING, logger="hasten"):
        counterpart, solver, replaced = first_order_scheduler(dpm)
    assert type(counterpart).__name__ == "CogVideoXDDIMScheduler" and counterpart.config.snr_shift_scale == 1.5
    assert "first-order counterpart CogVideoXDDIMScheduler" in caplog.text


def test_cogvideox_makes_one_video_per_prompt_like_its_pipeline(caplog):
    pipe = tiny_pipeline("cogvideox")
    call = dict(prompt="a cat", height=16, width=16, num_frames=9, max_sequence_length=16, num_inference_steps=4,
                num_videos_per_prompt=2, output_type="latent")
    theirs = pipe(generator=torch.Generator().manual_seed(0), **call).frames
    with caplog.at_level(logging.WARNING, logger="hasten"):
        ours = hasten.accelerate(pipe)(generator=torch.Generator().manual_seed(0), **call).frames
    assert ours.shape == theirs.shape and ours.shape[0] == 1
    assert "one video per prompt" in caplog.text


def test_no_op_arguments_are_accepted_and_real_ones_refused():
    pipe = tiny_pipeline("sd")
    out = hasten.accelerate(pipe)(eta=0.0, cross_attention_kwargs=None, timesteps=None, **CALL)
    assert torch.isfinite(out.images).all()
    with pytest.raises(HastenError, match=r"eta \(hasten takes eta=0.0, the pipeline's default, only\)"):
        hasten.accelerate(pipe)(eta=0.5, **CALL)
    flux = tiny_pipeline("flux")
    hasten.accelerate(flux)("a cat", height=16, width=16, max_sequence_length=8, num_inference_steps=2,
                            joint_attention_kwargs=None, output_type="latent")


def test_default_chords_cores_are_capped_on_short_grids(caplog):
    pipe = tiny_pipeline("flux")
    call = dict(prompt="a cat", height=16, width=16, max_sequence_length=8, num_inference_steps=4,
                output_type="latent")
    theirs = pipe(generator=torch.Generator().manual_seed(0), **call).images
    with caplog.at_level(logging.WARNING, logger="hasten"):
        out = hasten.accelerate(pipe, "chords", stop="none")(generator=torch.Generator().manual_seed(0), **call)
    assert "4 steps run on 3 cores instead of 4" in caplog.text and out.hasten["params"]["cores"] == 3
    assert (out.images - theirs).abs().max() <= 1e-5
    with pytest.raises(HastenError, match="steps must be greater than cores"):
        hasten.accelerate(pipe, "chords", cores=4)(**call)  # cores given explicitly are never changed


def test_step_callback_sees_and_edits_latents_as_the_pipeline_does():
    pipe = _sd(diffusers.EulerDiscreteScheduler)

    def recorder(seen):
        def callback(p, i, t, kwargs):
            seen.append((i, float(t), kwargs["latents"].clone()))
            if i == 3:
                kwargs["latents"] = kwargs["latents"] * 0.5  # an edit the next steps must see
            return kwargs
        return callback

    theirs, ours = [], []
    expect = pipe(generator=torch.Generator().manual_seed(0), callback_on_step_end=recorder(theirs), **CALL).images
    got = hasten.accelerate(pipe)(generator=torch.Generator().manual_seed(0), callback_on_step_end=recorder(ours),
                                  callback_on_step_end_tensor_inputs=["latents"], **CALL).images
    assert [i for i, _, _ in ours] == [i for i, _, _ in theirs] == list(range(8))
    assert [t for _, t, _ in ours] == pytest.approx([t for _, t, _ in theirs])
    for (_, _, a), (_, _, b) in zip(ours, theirs):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()
    assert (got - expect).abs().max() <= 1e-4 * expect.abs().max()


def test_parallel_methods_call_the_callback_once_per_hit_and_refuse_edits():
    pipe = tiny_pipeline("sd")
    seen = []
    out = hasten.accelerate(pipe, "chords", cores=3, stop="none")(
        generator=torch.Generator().manual_seed(0), callback_on_step_end=lambda p, i, t, kw: seen.append(i) or kw,
        **CALL)
    assert seen == list(range(len(out.hasten["hits"]))) == [0, 1, 2]
    with pytest.raises(HastenError, match="may not edit it"):
        hasten.accelerate(pipe, "chords", cores=3)(callback_on_step_end=lambda p, i, t, kw: {"latents": 0 * kw["latents"]},
                                                   **CALL)
    with pytest.raises(HastenError, match="'latents' only"):
        hasten.accelerate(pipe)(callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["prompt_embeds"],
                                **CALL)


@pytest.mark.parametrize("kind,name,options,works", [
    ("sd", "UniPCMultistepScheduler", {"solver_type": "bh1", "use_karras_sigmas": True}, "solver_type='bh2'"),
    ("sd", "UniPCMultistepScheduler", {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"},
     "final_sigmas_type='zero'"),
    ("wan", "DPMSolverMultistepScheduler", {"use_flow_sigmas": True, "prediction_type": "flow_prediction",
                                            "algorithm_type": "sde-dpmsolver++"}, "algorithm_type='dpmsolver\\+\\+'"),
])
def test_multistep_variants_hasten_does_not_reproduce_are_refused_naming_what_works(kind, name, options, works):
    pipe = tiny_pipeline(kind)
    config = pipe.scheduler.config if kind == "sd" else {"num_train_timesteps": 1000}
    pipe.scheduler = getattr(diffusers, name).from_config(config, **options)
    calls = []
    pipe.components["unet" if kind == "sd" else "transformer"].register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(HastenError, match=f"{name} with .*supported: .*{works}"):
        hasten.accelerate(pipe)(**{**matrix.TINY_CALLS[kind], "num_inference_steps": 5, "output_type": "latent"})
    assert not calls  # refused before any network call
