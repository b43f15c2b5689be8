"""The multistep schedulers checkpoints ship (DPM-Solver++ 2M, 2M SDE, UniPC bh2 + UniC), reproduced.

Sequential sampling equals ``pipe()`` with the scheduler itself; every
parallel method converges to that multistep trajectory; CHORDS' slowest core
is it; the default AB-Cache runs on it; SRDS refuses by name; the schedulers
still substituted log a notice naming their true counterpart.
"""

from __future__ import annotations

import logging

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import diffusers  # noqa: E402

import hasten  # noqa: E402
from hasten.errors import HastenError  # noqa: E402
from hasten.grid import Grid  # noqa: E402
from hasten.inpaint import KnownRegion, KnownRegionStep  # noqa: E402
from hasten.integrations.schedulers import first_order_scheduler, plan_scheduler  # noqa: E402
from hasten.multistep import MultistepSchedule, remember  # noqa: E402
from hasten.steps import DDIMStep, make_step  # noqa: E402
from hasten.testing.pipelines import TINY_CALLS, tiny_pipeline  # noqa: E402

STEPS = 6  # fewer than 15: lower_order_final applies, so the schedule's last-step orders are exercised
FLOW = dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0)  # Wan 2.1's UniPC config
CONFIGS = {
    "sd-dpm++2m": ("sd", "DPMSolverMultistepScheduler", {}),
    "sd-dpm++2m-sde": ("sd", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "sd-unipc": ("sd", "UniPCMultistepScheduler", {}),
    "sdxl-dpm++2m-karras": ("sdxl", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "wan-unipc-flow-shift": ("wan", "UniPCMultistepScheduler", FLOW),
    "wan-dpm++2m-flow-shift": ("wan", "DPMSolverMultistepScheduler", FLOW),
    "sd3-dpm++2m-flow-shift": ("sd3", "DPMSolverMultistepScheduler", FLOW),  # SD3 leaves the sigmas to the scheduler
    "sd3-unipc-flow-shift": ("sd3", "UniPCMultistepScheduler", FLOW),
}
SOLVER = {"DPMSolverMultistepScheduler": "dpm++2m", "UniPCMultistepScheduler": "unipc"}

_PIPES: dict = {}


def pipe_for(config: str):
    kind, name, options = CONFIGS[config]
    if kind not in _PIPES:
        _PIPES[kind] = tiny_pipeline(kind)
        _PIPES[kind].own_config = dict(_PIPES[kind].scheduler.config)
    pipe = _PIPES[kind]
    base = {"num_train_timesteps": 1000} if options.get("use_flow_sigmas") else pipe.own_config
    pipe.scheduler = getattr(diffusers, name).from_config(base, **options)
    return pipe, {**TINY_CALLS[kind], "num_inference_steps": STEPS, "output_type": "latent"}


def seeded():
    return torch.Generator().manual_seed(3)


def final(output) -> torch.Tensor:
    return torch.as_tensor(output.frames if hasattr(output, "frames") else output.images).float()


_SEQUENTIAL: dict = {}


def sequential(config: str):
    """hasten's sequential run of a config (its output and the pipeline's final latents), once per config."""
    if config not in _SEQUENTIAL:
        pipe, call = pipe_for(config)
        ours = hasten.accelerate(pipe)(generator=seeded(), **call)
        theirs = final(pipe(generator=seeded(), **call))
        _SEQUENTIAL[config] = ours, theirs
    return _SEQUENTIAL[config]


def close(a: torch.Tensor, b: torch.Tensor, rel: float) -> bool:
    """``max |a - b| <= rel * max(1, max |b|)``: float32 rounding is relative to the latents' size (~45 on SD)."""
    return float((a - b).abs().max()) <= rel * max(1.0, float(b.abs().max()))


# ---- the steps themselves, without a pipeline ----

def vp_grid(steps: int = 8) -> Grid:
    scheduler = diffusers.DPMSolverMultistepScheduler()
    scheduler.set_timesteps(steps)
    return Grid.from_scheduler(scheduler)


@pytest.mark.parametrize("solver", ["dpm++2m", "unipc"])
def test_without_history_a_multistep_step_is_ddim(solver):
    """DPM-Solver++ 1 and UniP-1 are the first-order exponential integrator: DDIM (Lu et al. 2022, Eq. 6)."""
    grid = vp_grid()
    schedule = (MultistepSchedule.unipc(diffusers.UniPCMultistepScheduler().config, 8) if solver == "unipc"
                else MultistepSchedule.dpm_solver(diffusers.DPMSolverMultistepScheduler().config, 8))
    step = make_step(grid, solver, schedule=schedule)
    x, out = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    for i, j in ((0, 1), (2, 3), (1, 5)):
        assert torch.allclose(step(x, out, i, j), DDIMStep(grid)(x, out, i, j), atol=1e-5)
    history = remember(step, (), x, torch.randn_like(out), 1)
    assert not torch.allclose(step(x, out, 2, 3, history=history), DDIMStep(grid)(x, out, 2, 3), atol=1e-3)


def test_a_multistep_step_keeps_no_state_and_the_known_region_wrapper_passes_history_on():
    grid = vp_grid()
    step = make_step(grid, "unipc", schedule=MultistepSchedule.unipc(diffusers.UniPCMultistepScheduler().config, 8))
    x, out, prev = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)
    history = remember(step, remember(step, (), x, prev, 1), x, out, 2)
    first = step(x, out, 3, 4, history=history)
    assert torch.equal(first, step(x, out, 3, 4, history=history))  # the same call, the same result
    region = KnownRegion(mask=torch.ones(1, 1, 4, 4), image=torch.zeros(1, 2, 4, 4), noise=torch.zeros(1, 2, 4, 4))
    wrapped = KnownRegionStep(step, region)
    assert wrapped.memory == step.memory == 2
    assert torch.equal(wrapped(x, out, 3, 4, history=history), first)  # all repainted: the inner step, history used


def test_the_schedule_follows_the_schedulers_order_rules_and_slices_for_image_to_image():
    dpm = MultistepSchedule.dpm_solver(diffusers.DPMSolverMultistepScheduler().config, 6)
    assert dpm.orders == (2, 2, 2, 2, 2, 1)  # final_sigmas_type="zero": first order into sigma 0
    unipc = MultistepSchedule.unipc(diffusers.UniPCMultistepScheduler(disable_corrector=[1]).config, 6)
    assert unipc.orders == (2, 2, 2, 2, 2, 1)
    assert unipc.corrector == (False, True, False, True, True, True)
    assert unipc.starting_at(3).corrector == (False, True, True)  # the first step run corrects nothing


# ---- sequential equals the pipeline ----

@pytest.mark.parametrize("config", list(CONFIGS))
def test_sequential_reproduces_the_pipeline_with_its_multistep_scheduler(config, caplog):
    kind, name, options = CONFIGS[config]
    with caplog.at_level(logging.WARNING, logger="hasten"):
        ours, theirs = sequential(config)
    assert "counterpart" not in caplog.text
    assert ours.hasten["scheduler"] == name
    assert ours.hasten["solver"] == SOLVER[name] + ("-sde" if "sde" in options.get("algorithm_type", "") else "")
    assert close(final(ours), theirs, 1e-5)


def test_the_sde_variant_really_draws_its_noise():
    """2M SDE differs from 2M on the same seed: the pre-drawn noise is there (and reproduced above)."""
    assert not close(sequential("sd-dpm++2m-sde")[1], sequential("sd-dpm++2m")[1], 1e-2)


# ---- every method on the multistep system ----

#: tol 1e-6: a point is accepted once its last iteration moved it by at most 1e-6 of its scale, so the result is
#: the fixed point up to that and float32 rounding (the same 1e-5 relative as sequential against the pipeline)
METHODS = [("chords", {"cores": 3}), ("paradigms", {"cores": 4, "tol": 1e-6}),
           ("parasolver", {"cores": 4, "tol": 1e-6}), ("parasolver-turbo", {"cores": 2, "tol": 1e-6})]


@pytest.mark.parametrize("config", ["sd-dpm++2m", "sd-unipc", "wan-unipc-flow-shift", "sd3-dpm++2m-flow-shift"])
@pytest.mark.parametrize("method,options", METHODS, ids=[m for m, _ in METHODS])
def test_every_method_converges_to_the_sequential_multistep_trajectory(config, method, options):
    seq, _ = sequential(config)
    pipe, call = pipe_for(config)
    out = hasten.accelerate(pipe, method, stop="none", **options)(generator=seeded(), **call)
    assert out.hasten["solver"] == seq.hasten["solver"]
    assert close(out.hasten["latents"], seq.hasten["latents"], 1e-5)


def test_parasolver_turbo_converges_on_the_sde_with_its_pre_drawn_noise():
    seq, _ = sequential("sd-dpm++2m-sde")
    pipe, call = pipe_for("sd-dpm++2m-sde")
    out = hasten.accelerate(pipe, "parasolver-turbo", stop="none", cores=2, tol=1e-6)(generator=seeded(), **call)
    assert close(out.hasten["latents"], seq.hasten["latents"], 1e-5)


def test_chords_fast_cores_land_early_and_its_last_hit_is_sequential():
    seq, _ = sequential("sd-unipc")
    pipe, call = pipe_for("sd-unipc")
    hits = []
    out = hasten.accelerate(pipe, "chords", cores=3, stop="none",
                             on_hit=lambda hit, decode: hits.append(hit))(generator=seeded(), **call)
    assert len(hits) == 3 and hits[-1].round == STEPS
    assert close(hits[-1].x, seq.hasten["latents"], 1e-5) and close(out.hasten["latents"], seq.hasten["latents"], 1e-5)
    assert not close(hits[0].x, seq.hasten["latents"], 1e-5)  # a fast core's first-order jumps: an approximation


@pytest.mark.parametrize("config", ["sd-dpm++2m", "wan-unipc-flow-shift"])
def test_the_default_ab_cache_runs_on_multistep_steps(config):
    seq, _ = sequential(config)
    pipe, call = pipe_for(config)
    every = hasten.accelerate(pipe, cache="abcache:2:interval=1")(generator=seeded(), **call)
    assert close(every.hasten["latents"], seq.hasten["latents"], 1e-6)  # caching nothing changes nothing
    cached = hasten.accelerate(pipe, cache="abcache")(generator=seeded(), **call)
    assert cached.hasten["nfe"] < STEPS and bool(torch.isfinite(cached.hasten["latents"]).all())


def test_flux_still_refuses_them_by_name():
    """FluxPipeline sets its own sigmas (and mu) for FlowMatchEuler; a multistep scheduler there is refused."""
    pipe = tiny_pipeline("flux")
    pipe.scheduler = diffusers.UniPCMultistepScheduler(**FLOW)
    with pytest.raises(HastenError, match="FluxPipeline with UniPCMultistepScheduler is not supported; supported: "
                                          "FlowMatchEulerDiscreteScheduler"):
        hasten.accelerate(pipe)(generator=seeded(), **TINY_CALLS["flux"], num_inference_steps=STEPS)


def test_srds_refuses_multistep_steps_by_name():
    pipe, call = pipe_for("sd-unipc")
    with pytest.raises(HastenError, match="srds runs first-order steps only, not the multistep 'unipc'.*use "
                                          "sequential, chords, paradigms"):
        hasten.accelerate(pipe, "srds")(generator=seeded(), **call)


# ---- the schedulers still substituted ----

@pytest.mark.parametrize("name,options,counterpart", [
    ("PNDMScheduler", {"skip_prk_steps": True}, "DDIMScheduler"),  # SD 1.5's own
    ("DPMSolverMultistepScheduler", {"solver_order": 3}, "DDIMScheduler"),
    ("UniPCMultistepScheduler", {"predict_x0": False}, "DDIMScheduler"),
    ("UniPCMultistepScheduler", {**FLOW, "solver_type": "bh1", "predict_x0": False}, "FlowMatchEulerDiscreteScheduler"),
    ("CogVideoXDPMScheduler", {}, "CogVideoXDDIMScheduler"),
])
def test_substituted_schedulers_log_a_notice_naming_their_true_counterpart(name, options, counterpart, caplog):
    scheduler = getattr(diffusers, name)(**options)
    with caplog.at_level(logging.WARNING, logger="hasten"):
        sampled, solver, replaced = first_order_scheduler(scheduler)
    assert replaced == name and type(sampled).__name__ == counterpart
    assert f"{name} is not reproduced (" in caplog.text
    assert f"sampling with its first-order counterpart {counterpart} built from the same config" in caplog.text
    plan = plan_scheduler(scheduler, STEPS)
    assert plan.schedule is None and plan.describe() == f"{counterpart} (first-order counterpart of {name})"


@pytest.mark.parametrize("kind", ["sd-img2img", "sd-inpaint"])
def test_unipc_mid_grid_reproduces_image_to_image_and_inpainting(kind):
    """strength < 1 starts mid-grid: the schedule is sliced (the first step run corrects nothing, as
    set_begin_index leaves no last_sample); inpainting blends through KnownRegionStep with the history kept."""
    from hasten.testing.workflows import workflow_call, workflow_pipeline

    pipe = workflow_pipeline(kind, unet_channels=4, scheduler_cls=diffusers.UniPCMultistepScheduler)
    call = dict(workflow_call(kind), num_inference_steps=10, strength=0.7, guidance_scale=3.0, output_type="latent")
    ours = hasten.accelerate(pipe)(generator=seeded(), **call)
    assert ours.hasten["solver"] == "unipc" and ours.hasten["steps"] == 7
    theirs = pipe(generator=seeded(), **call).images
    assert close(ours.images, theirs, 1e-5)
    turbo = hasten.accelerate(pipe, "parasolver-turbo", cores=2, tol=1e-6, stop="none")(generator=seeded(), **call)
    assert close(turbo.images, theirs, 1e-5)
