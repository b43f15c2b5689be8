"""Issue 18's silent differences: each was a call that sampled something other than ``pipe(...)`` without a word.

Each test now asserts that sequential hasten reproduces the pipeline's own output for that call, or
refuses it before any network call with a message naming what works.
"""

from __future__ import annotations

import inspect
import logging

import pytest
import torch

pytest.importorskip("transformers")

import diffusers  # noqa: E402
from diffusers import callbacks  # noqa: E402

import hasten  # noqa: E402
from hasten import HastenError  # noqa: E402
from hasten.testing.pipelines import TINY_CALLS, cogvideox_scheduler, tiny_pipeline  # noqa: E402

_PIPES: dict = {}


def pipe_of(kind: str):
    """One tiny pipeline per family for the module, with its own scheduler put back before each use."""
    if kind not in _PIPES:
        _PIPES[kind] = tiny_pipeline(kind)
        _PIPES[kind].own_scheduler = _PIPES[kind].scheduler
    pipe = _PIPES[kind]
    pipe.scheduler = pipe.own_scheduler
    return pipe


def final(output) -> torch.Tensor:
    return torch.as_tensor(output.frames if hasattr(output, "frames") else output.images).float()


def both(pipe, *args, seed: int = 0, **call):
    """(hasten's sequential output, the pipeline's own) for the same call and seed."""
    torch.manual_seed(seed)
    ours = hasten.accelerate(pipe)(*args, generator=torch.Generator().manual_seed(seed), **call)
    torch.manual_seed(seed)
    theirs = pipe(*args, generator=torch.Generator().manual_seed(seed), **call)
    return final(ours), final(theirs)


class NetworkCalls:
    """Counts forward calls of every network of a pipeline (text encoders, UNet / transformer, VAE)."""

    def __init__(self, pipe):
        self.count = 0
        self.handles = [module.register_forward_pre_hook(self._seen) for module in pipe.components.values()
                        if isinstance(module, torch.nn.Module)]

    def _seen(self, *_):
        self.count += 1

    def close(self):
        for handle in self.handles:
            handle.remove()


# ---- 1. positional arguments ----

@pytest.mark.parametrize("kind", ["sd", "sdxl", "flux", "sd3", "wan"])
def test_positional_arguments_bind_as_the_pipelines_own_signature(kind):
    """``fast("a cat", 48, 48)``: hasten kept the prompt only (the default size; a traceback on Wan)."""
    pipe = pipe_of(kind)
    call = {**TINY_CALLS[kind], "height": 48, "width": 48}  # no family's default size
    params = inspect.signature(pipe.__call__).parameters
    names = list(params)
    last = max(names.index(k) for k in ("prompt", "height", "width"))
    args = tuple(call.pop(k) if k in call else params[k].default for k in names[:last + 1])
    ours, theirs = both(pipe, *args, num_inference_steps=2, output_type="latent", **call)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() <= 1e-5


def test_positional_arguments_of_an_unconditional_pipeline():
    pipe = tiny_pipeline("ddpm")
    ours = hasten.accelerate(pipe)(2, torch.Generator().manual_seed(0), 4, "np")
    theirs = pipe(2, torch.Generator().manual_seed(0), 4, "np")
    assert ours.images.shape == theirs.images.shape == (2, 8, 8, 3)
    assert abs(ours.images - theirs.images).max() <= 1e-5


def test_too_many_or_repeated_arguments_are_the_pipelines_own_type_error():
    pipe = pipe_of("sd")
    with pytest.raises(TypeError, match="multiple values for argument 'prompt'"):
        pipe("a cat", prompt="a dog", num_inference_steps=1)
    with pytest.raises(HastenError, match="multiple values for argument 'prompt'.*positional order: prompt, height"):
        hasten.accelerate(pipe)("a cat", prompt="a dog", num_inference_steps=1)
    with pytest.raises(HastenError, match="too many positional arguments"):
        hasten.accelerate(pipe)(*[None] * 60)


# ---- 2. Wan's num_frames ----

def test_wan_rounds_num_frames_to_4k_plus_1_as_its_pipeline(caplog):
    """num_frames=8: the pipeline samples 9 frames (3 latent frames); hasten sampled 2 latent frames."""
    pipe = pipe_of("wan")
    call = {**TINY_CALLS["wan"], "num_frames": 8, "num_inference_steps": 2, "output_type": "latent"}
    with caplog.at_level(logging.WARNING, logger="hasten"):
        ours, theirs = both(pipe, **call)
    assert ours.shape == theirs.shape and ours.shape[2] == 3
    assert (ours - theirs).abs().max() <= 1e-5
    assert "rounding 8 to 9" in caplog.text


# ---- 3. schedulers the pipeline itself does not sample as intended ----

@pytest.mark.parametrize("scheduler_cls", [diffusers.EulerDiscreteScheduler,
                                           diffusers.EulerAncestralDiscreteScheduler])
def test_wan_refuses_ve_schedulers_it_neither_scales_nor_conditions(scheduler_cls):
    """WanPipeline neither multiplies its noise by init_noise_sigma nor calls scale_model_input (and draws the
    ancestral noise from the global generator); hasten assumed the opposite and differed by hundreds."""
    pipe = pipe_of("wan")
    pipe.scheduler = scheduler_cls.from_config(pipe.own_scheduler.config)
    calls = NetworkCalls(pipe)
    try:
        with pytest.raises(HastenError, match=f"WanPipeline with {scheduler_cls.__name__} is not supported: the "
                                              "pipeline neither scales .* supported: FlowMatchEulerDiscrete"):
            hasten.accelerate(pipe)(num_inference_steps=2, output_type="latent", **TINY_CALLS["wan"])
    finally:
        calls.close()
    assert calls.count == 0


@pytest.mark.parametrize("kind,name,message", [
    ("ddpm", "DEISMultistepScheduler", "which DEISMultistepScheduler.step does not take"),
    ("ddpm", "UniPCMultistepScheduler", "which UniPCMultistepScheduler.step does not take"),
    ("wan", "DDIMScheduler", "this is not a flow scheduler"),
    ("wan", "CogVideoXDDIMScheduler", "this is not a flow scheduler"),
])
def test_a_scheduler_the_pipeline_itself_cannot_run_is_refused(kind, name, message):
    """DDPMPipeline passes step a generator (DEIS, PNDM, UniPC take none); WanPipeline calls set_begin_index,
    which DDIM, DDPM and CogVideoX's schedulers lack. The pipeline raises; hasten sampled a counterpart quietly."""
    pipe = pipe_of(kind)
    pipe.scheduler = getattr(diffusers, name).from_config(pipe.own_scheduler.config)
    call = dict(num_inference_steps=2, output_type="latent" if kind == "wan" else "np", **TINY_CALLS[kind])
    with pytest.raises((TypeError, AttributeError)):
        pipe(**call)
    calls = NetworkCalls(pipe)
    try:
        with pytest.raises(HastenError, match=f"{type(pipe).__name__} with {name} is not supported: .*{message}"):
            hasten.accelerate(pipe)(**call)
    finally:
        calls.close()
    assert calls.count == 0


# ---- 4. CogVideoX's schedulers ignore clip_sample ----

@pytest.mark.parametrize("name", ["CogVideoXDDIMScheduler", "CogVideoXDPMScheduler"])
def test_cogvideox_schedulers_never_clip_whatever_clip_sample_says(name, caplog):
    """clip_sample=True is these classes' default, and their step never clips; hasten clamped x0."""
    pipe = pipe_of("cogvideox")
    scheduler = getattr(diffusers, name).from_config(pipe.own_scheduler.config, clip_sample=True)
    call = dict(num_inference_steps=4, output_type="latent", **TINY_CALLS["cogvideox"])
    pipe.scheduler = scheduler
    with caplog.at_level(logging.WARNING, logger="hasten"):
        torch.manual_seed(0)
        ours = final(hasten.accelerate(pipe)(generator=torch.Generator().manual_seed(0), **call))
    if name == "CogVideoXDPMScheduler":  # a notice naming the true counterpart, which does not clip either
        assert "counterpart CogVideoXDDIMScheduler built from the same config" in caplog.text
        assert "clip_sample" not in caplog.text
        pipe.scheduler = diffusers.CogVideoXDDIMScheduler.from_config(scheduler.config)
    theirs = final(pipe(generator=torch.Generator().manual_seed(0), **call))
    assert (ours - theirs).abs().max() <= 1e-5


# ---- 5. Flux with use_flow_sigmas in its scheduler config ----

def test_flux_leaves_the_sigmas_to_a_scheduler_config_with_use_flow_sigmas():
    """FlowMatchEuler built from a UniPC flow config keeps use_flow_sigmas; FluxPipeline then drops its own sigmas."""
    pipe = pipe_of("flux")
    unipc = diffusers.UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0)
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(unipc.config)
    assert pipe.scheduler.config.use_flow_sigmas
    ours, theirs = both(pipe, num_inference_steps=4, output_type="latent", **TINY_CALLS["flux"])
    assert (ours - theirs).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", ["flux-img2img", "flux-kontext"])
def test_flux_image_input_pipelines_keep_their_sigmas_whatever_the_scheduler_config(kind):
    """Only FluxPipeline reads use_flow_sigmas; its image-input siblings pass their own sigmas regardless."""
    from hasten.testing.workflows import workflow_call, workflow_pipeline

    pipe = workflow_pipeline(kind)
    unipc = diffusers.UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0)
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(unipc.config)
    ours, theirs = both(pipe, num_inference_steps=4, output_type="latent", **workflow_call(kind))
    assert (ours - theirs).abs().max() <= 1e-5


# ---- 6. notices and refusals that named the wrong thing ----

def test_a_thresholding_multistep_scheduler_is_refused_not_run_without_thresholding():
    pipe = pipe_of("sd")
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.own_scheduler.config, thresholding=True)
    with pytest.raises(HastenError, match="DPMSolverMultistepScheduler with thresholding=True .* multistep step "
                                          "'dpm\\+\\+2m' does not threshold; use thresholding=False"):
        hasten.accelerate(pipe)("a cat", num_inference_steps=2, output_type="latent")


def test_euler_with_log_linear_interpolation_reproduces():
    """log_linear makes one sigma more than the timesteps; the pipeline stops at sigma_min. hasten refused it with
    an internal message ("grid arrays disagree")."""
    pipe = pipe_of("sd")
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.own_scheduler.config,
                                                                  interpolation_type="log_linear")
    ours, theirs = both(pipe, "a cat", num_inference_steps=5, output_type="latent")
    assert (ours - theirs).abs().max() <= 1e-4 * theirs.abs().max()


# ---- 7. diffusers' own PipelineCallbacks ----

@pytest.mark.parametrize("kind,callback", [
    ("sd", lambda: callbacks.SDCFGCutoffCallback(cutoff_step_ratio=0.5)),
    ("sdxl", lambda: callbacks.SDXLCFGCutoffCallback(cutoff_step_ratio=0.5)),
    ("sd", lambda: callbacks.MultiPipelineCallbacks(
        [callbacks.SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=1)])),
])
def test_cfg_cutoff_callbacks_are_refused_before_any_network_call(kind, callback):
    """They name their own tensor inputs (prompt_embeds, ...), which the pipeline passes whatever
    callback_on_step_end_tensor_inputs says; hasten crashed mid-sampling with KeyError 'prompt_embeds'."""
    pipe = pipe_of(kind)
    calls = NetworkCalls(pipe)
    try:
        with pytest.raises(HastenError, match=r"tensor_inputs: hasten passes 'latents' only, got \['prompt_embeds'"):
            hasten.accelerate(pipe)(num_inference_steps=4, output_type="latent", callback_on_step_end=callback(),
                                    **TINY_CALLS[kind])
    finally:
        calls.close()
    assert calls.count == 0


class HalveLatents(callbacks.PipelineCallback):
    """A PipelineCallback on latents only: halves them after step ``cutoff_step_index``."""

    tensor_inputs = ["latents"]

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        if step_index == self.config.cutoff_step_index:
            callback_kwargs["latents"] = callback_kwargs["latents"] * 0.5
        return callback_kwargs


def test_a_pipeline_callback_on_latents_runs_as_in_the_pipeline():
    pipe = pipe_of("sd")
    callback = HalveLatents(cutoff_step_ratio=None, cutoff_step_index=1)
    ours, theirs = both(pipe, "a cat", num_inference_steps=4, output_type="latent", callback_on_step_end=callback)
    plain, _ = both(pipe, "a cat", num_inference_steps=4, output_type="latent")
    assert (ours - plain).abs().max() > 0.1  # the edit is really there
    assert (ours - theirs).abs().max() <= 1e-5


# ---- 8. the default AB-Cache on zero-SNR grids ----

def test_the_default_cache_is_close_to_sequential_on_a_zero_snr_grid():
    """CogVideoX's released grid has alpha = 0 at its first point; the default cache stopped there with
    "form 'eps' needs alpha > 0". Now it takes form index there, close to sequential on the exact GMM."""
    from hasten import Grid, Sequential, run
    from hasten.caches import make_cache
    from hasten.executors.batched import BatchedExecutor
    from hasten.models.gmm import GaussianMixture
    from hasten.steps import make_step

    mixture = GaussianMixture(dim=16, kind="vp", prediction="v_prediction")
    x = torch.randn(16, 16, generator=torch.Generator().manual_seed(0))

    def sample(steps, cache=None):
        grid = Grid.from_scheduler(cogvideox_scheduler(), steps)
        assert float(grid.alpha[0]) == 0.0
        return run(Sequential(), x, make_step(grid), BatchedExecutor(mixture.denoiser(grid)), cache=cache)

    reference = sample(50).x
    cached = sample(50, make_cache("abcache"))
    fewer = sample(cached.nfe).x  # the same model calls spent on a coarser grid
    error = float((cached.x - reference).pow(2).mean().sqrt())
    assert cached.cache["config"].endswith("form=index") and cached.nfe < 25
    assert error <= 0.02 * float(reference.pow(2).mean().sqrt())
    assert error < float((fewer - reference).pow(2).mean().sqrt())  # better than the same calls without a cache


def test_the_default_cache_runs_on_cogvideox_with_its_own_scheduler():
    pipe = pipe_of("cogvideox")
    pipe.scheduler = cogvideox_scheduler()
    call = dict(num_inference_steps=8, output_type="latent", **TINY_CALLS["cogvideox"])
    ours = hasten.accelerate(pipe, cache="abcache")(generator=torch.Generator().manual_seed(0), **call)
    assert ours.hasten["nfe"] < 8 and torch.isfinite(final(ours)).all()
