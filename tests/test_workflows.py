"""Image-input workflows on tiny pipelines: img2img, inpaint, Flux Kontext / Fill, ControlNet (issue 18)."""

import pytest
import torch

pytest.importorskip("transformers")

import diffusers as d  # noqa: E402
import hasten  # noqa: E402
from hasten import HastenError  # noqa: E402
from hasten.integrations.adapters import adapter_for  # noqa: E402
from hasten.integrations.model import prepare_call  # noqa: E402
from hasten.methods.chords_init import landing_round, resolve_init  # noqa: E402
from hasten.testing.workflows import WORKFLOW_KINDS, tiny_images, workflow_call, workflow_pipeline  # noqa: E402

#: every workflow pipeline, the UNet inpaint pipelines with both UNets
VARIANTS = [(k, 9) for k in WORKFLOW_KINDS] + [("sd-inpaint", 4), ("sdxl-inpaint", 4)]
_PIPES: dict = {}


def pipe_of(kind: str, channels: int = 9):
    if (kind, channels) not in _PIPES:
        _PIPES[kind, channels] = workflow_pipeline(kind, unet_channels=channels)
    return _PIPES[kind, channels]


def seeded(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def variant_id(variant) -> str:
    kind, channels = variant
    return kind if channels == 9 or "inpaint" not in kind else f"{kind}-{channels}ch"


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_sequential_reproduces_the_pipeline_with_its_defaults(variant):
    """Default scheduler, strength and guidance of each pipeline; a small image built in memory."""
    pipe = pipe_of(*variant)
    kw = dict(workflow_call(variant[0]), num_inference_steps=10, output_type="latent")
    theirs = pipe(generator=seeded(), **kw).images
    out = hasten.accelerate(pipe)(generator=seeded(), **kw)
    assert out.images.shape == theirs.shape
    assert (out.images - theirs).abs().max() <= 1e-5
    assert out.hasten["rounds"] == out.hasten["steps"] <= 10


def _strength_for(kind: str) -> dict:
    """A strength that leaves 6 of 8 steps, for the pipelines that take one."""
    return {} if kind.split("-", 1)[1] in ("kontext", "controlnet") else {"strength": 0.75}


METHODS = {"chords": {"cores": 3, "stop": "none"}, "paradigms": {"cores": 4, "tol": 1e-6},
           "srds": {"tol": 1e-6}, "parasolver": {"cores": 3, "tol": 1e-6},
           "parasolver-turbo": {"cores": 3, "tol": 1e-6}}


@pytest.mark.parametrize("method", [*METHODS, "abcache"])
@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_every_method_and_the_default_cache_run_on_each_workflow(variant, method):
    kind, channels = variant
    pipe = pipe_of(kind, channels)
    kw = dict(workflow_call(kind), num_inference_steps=8, output_type="latent", **_strength_for(kind))
    seq = hasten.accelerate(pipe)(generator=seeded(), **kw)
    if method == "abcache":
        out = hasten.accelerate(pipe, cache="abcache")(generator=seeded(), **kw)
        assert out.hasten["nfe"] < out.hasten["steps"] and torch.isfinite(out.images).all()
    else:
        out = hasten.accelerate(pipe, method, **METHODS[method])(generator=seeded(), **kw)
        # converged (or CHORDS run to the end): the sequential trajectory of the same start
        assert (out.images - seq.images).abs().max() <= 1e-4
        assert out.hasten["rounds"] <= out.hasten["steps"] + 3
    assert out.hasten["steps"] == seq.hasten["steps"] == (8 if kind.endswith(("kontext", "controlnet")) else 6)
    if channels == 4 or kind == "flux-inpaint":  # the known region is the clean image, whatever the method
        known = prepare_call(adapter_for(pipe), generator=seeded(), **kw).known
        keep = 1 - known.mask
        assert (keep * (out.hasten["latents"] - known.image)).abs().max() <= 1e-6


def test_chords_runs_the_steps_that_strength_leaves():
    """strength=0.6 of 10 steps runs 6: the grid, CHORDS' init and its landing rounds are those of 6 steps."""
    pipe = pipe_of("sd-img2img")
    kw = dict(workflow_call("sd-img2img"), num_inference_steps=10, strength=0.6, output_type="latent")
    seq = hasten.accelerate(pipe)(generator=seeded(), **kw)
    hits = []
    out = hasten.accelerate(pipe, "chords", cores=3, stop="none", on_hit=lambda hit, decode: hits.append(hit))(
        generator=seeded(), **kw)
    assert seq.hasten["steps"] == out.hasten["steps"] == 6 and seq.hasten["rounds"] == 6
    init = resolve_init(3, 6)
    assert out.hasten["params"]["init"] == init
    assert [h.round for h in hits] == sorted(landing_round(init, 6, k) for k in range(1, 4))
    assert (hits[-1].x - seq.hasten["latents"]).abs().max() <= 1e-5
    assert (out.images - seq.images).abs().max() <= 1e-5


@pytest.mark.parametrize("scheduler", ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DDPMScheduler",
                                       "DPMSolverMultistepScheduler"])
@pytest.mark.parametrize("kind,strength", [("sd-img2img", 0.7), ("sd-inpaint", 0.7), ("sd-inpaint", 1.0)])
def test_image_input_reproduces_the_pipeline_with_other_schedulers(kind, strength, scheduler):
    """VE latents (Euler), pre-drawn step noise (ancestral, DDPM), and a multistep step mid-grid (DPM-Solver++ 2M)."""
    pipe = workflow_pipeline(kind, unet_channels=4, scheduler_cls=getattr(d, scheduler))
    kw = dict(workflow_call(kind), num_inference_steps=10, strength=strength, guidance_scale=3.0,
              output_type="latent")
    out = hasten.accelerate(pipe)(generator=seeded(), **kw)
    assert out.hasten["scheduler"] == scheduler
    theirs = pipe(generator=seeded(), **kw).images
    # 1e-5 on the latents' own scale: Euler's VE latents start at init_noise_sigma (~15) with strength 1
    assert (out.images - theirs).abs().max() <= 1e-5 * max(1.0, float(theirs.abs().max()))


def test_the_decoded_outputs_are_the_pipelines():
    for kind, channels in (("sd-inpaint", 4), ("flux-fill", 9), ("sdxl-controlnet", 9)):
        pipe = pipe_of(kind, channels)
        kw = dict(workflow_call(kind), num_inference_steps=4, output_type="np")
        ours, theirs = hasten.accelerate(pipe)(generator=seeded(), **kw), pipe(generator=seeded(), **kw)
        assert ours.images.shape == theirs.images.shape == (1, 16, 16, 3)
        assert abs(ours.images - theirs.images).max() <= 1e-5


def _record_control_weights(pipe):
    """Each ControlNet forward's per-row weights (its ``conditioning_scale``)."""
    seen = []

    def hook(module, args, kwargs):
        seen.append(kwargs["conditioning_scale"].flatten().clone())

    return seen, pipe.controlnet.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("kind", ["sd-controlnet", "flux-controlnet"])
def test_controlnet_guidance_window_is_a_function_of_the_grid_index(kind):
    pipe = pipe_of(kind)
    window = dict(control_guidance_start=0.3, control_guidance_end=0.7, controlnet_conditioning_scale=0.5)
    kw = dict(workflow_call(kind), num_inference_steps=10, output_type="latent", **window)
    prepared = prepare_call(adapter_for(pipe), generator=seeded(), **kw)
    # one forward over rows at indices outside (1) and inside (5) the window equals the two alone
    x = torch.cat([prepared.latents, prepared.latents * 0.5])
    index, sample = torch.tensor([1, 5]), torch.tensor([0, 0])
    both = prepared.denoiser(x, index, sample)
    for row in range(2):
        alone = prepared.denoiser(x[row:row + 1], index[row:row + 1], sample[row:row + 1])
        assert (both[row:row + 1] - alone).abs().max() <= 1e-5
    seq = hasten.accelerate(pipe)(generator=seeded(), **kw)
    seen, handle = _record_control_weights(pipe)
    try:
        fast = hasten.accelerate(pipe, "chords", cores=3, stop="none")(generator=seeded(), **kw)
    finally:
        handle.remove()
    mixed = [w for w in seen if (w == 0).any() and (w == 0.5).any()]
    assert mixed, "no CHORDS round mixed indices inside and outside the guidance window"
    # 1e-5 relative to the latents' size (float32 rounding of CHORDS' batched rows: 1.3e-5 on SD latents of ~4 here)
    assert (fast.images - seq.images).abs().max() <= 1e-5 * max(1.0, float(seq.images.abs().max()))
    theirs = pipe(generator=seeded(), **kw).images
    assert (seq.images - theirs).abs().max() <= 1e-5


def test_multi_controlnet_reproduces_the_pipeline():
    single = pipe_of("sd-controlnet")
    torch.manual_seed(7)
    other = d.ControlNetModel.from_unet(single.unet, conditioning_embedding_out_channels=(4, 8)).eval()
    multi = d.MultiControlNetModel([single.controlnet, other])
    pipe = d.StableDiffusionControlNetPipeline(**{**single.components, "controlnet": multi})
    pipe.set_progress_bar_config(disable=True)
    images = tiny_images()
    kw = dict(prompt="a cat", image=[images["control_image"], images["image"]], num_inference_steps=8,
              controlnet_conditioning_scale=[1.0, 0.5], control_guidance_start=[0.0, 0.25],
              control_guidance_end=[0.5, 1.0], output_type="latent")
    theirs = pipe(generator=seeded(), **kw).images
    ours = hasten.accelerate(pipe)(generator=seeded(), **kw).images
    assert (ours - theirs).abs().max() <= 1e-5
    fast = hasten.accelerate(pipe, "paradigms", cores=4, tol=1e-6)(generator=seeded(), **kw).images
    assert (fast - ours).abs().max() <= 1e-4


def _no_forward(pipe):
    network = getattr(pipe, "transformer", None) or pipe.unet

    def hook(*_):
        raise AssertionError("the network ran before the refusal")

    return network.register_forward_pre_hook(hook)


@pytest.mark.parametrize("kind,given,named", [
    ("sd-img2img", {"timesteps": [900, 500]}, "timesteps"),
    ("sd-img2img", {"eta": 0.5}, "eta"),
    ("sd-img2img", {"ip_adapter_image": object()}, "ip_adapter_image"),
    ("sd-inpaint", {"padding_mask_crop": 4}, "padding_mask_crop"),
    ("sdxl-img2img", {"denoising_start": 0.5}, "denoising_start"),
    ("sdxl-inpaint", {"denoising_end": 0.5}, "denoising_end"),
    ("flux-img2img", {"sigmas": [1.0, 0.5]}, "sigmas"),
    ("flux-inpaint", {"joint_attention_kwargs": {"scale": 0.5}}, "joint_attention_kwargs"),
    ("flux-kontext", {"ip_adapter_image": object()}, "ip_adapter_image"),
    ("sd-controlnet", {"guess_mode": True}, "guess_mode"),
    ("sdxl-controlnet", {"negative_original_size": (8, 8)}, "negative_original_size"),
    ("flux-controlnet", {"control_mode": [0, 1]}, "control_mode"),
    ("sd-img2img", {"strength": 0.05}, "strength=0.05"),
])
def test_options_not_reproduced_are_refused_by_name_before_sampling(kind, given, named):
    pipe = pipe_of(kind)
    handle = _no_forward(pipe)
    try:
        with pytest.raises(HastenError, match=named):
            hasten.accelerate(pipe)(generator=seeded(), num_inference_steps=10, output_type="latent",
                                    **{**workflow_call(kind), **given})
    finally:
        handle.remove()


def test_a_saved_workflow_pipeline_samples_through_the_api(tmp_path):
    from hasten.testing.pipelines import save_tiny_pipeline

    folder = save_tiny_pipeline("sd-img2img", tmp_path / "tiny-img2img")
    call = {"prompt": "a cat", "image": tiny_images()["image"], "strength": 0.6}
    result = hasten.sample(str(folder), "chords", cores=2, steps=10, stop="none", call=call)
    reference = hasten.sample(str(folder), "sequential", steps=10, call=call)
    assert result.steps == reference.steps == 6 and reference.rounds == 6
    assert (result.x - reference.x).abs().max() <= 1e-5


def test_a_grid_started_mid_way_keeps_the_model_scales_of_its_first_point():
    from hasten.grid import Grid

    scheduler = d.DDIMScheduler(timestep_spacing="linspace")  # landing and reading scales differ
    grid = Grid.from_scheduler(scheduler, 10)
    tail = grid.starting_at(4)
    assert tail.steps == 6 and torch.equal(tail.timesteps, grid.timesteps[4:])
    assert float(tail.alpha[0]) == float(grid.model_alpha[4]) != float(grid.alpha[4])
    assert torch.equal(tail.alpha[1:], grid.alpha[5:]) and torch.equal(tail.model_sigma, grid.model_sigma[4:])
    with pytest.raises(HastenError, match="starts at a point 0..9"):
        grid.starting_at(10)


@pytest.mark.parametrize("variant", [("sdxl-inpaint", 9), ("sdxl-inpaint", 4), ("sd-inpaint", 9)], ids=variant_id)
def test_inpainting_without_a_size_takes_the_pipelines_default_size(variant):
    """StableDiffusionXLInpaintPipeline has no default_sample_size: its default is the UNet's sample_size."""
    pipe = pipe_of(*variant)
    kw = {k: v for k, v in workflow_call(variant[0]).items() if k not in ("height", "width")}
    kw.update(num_inference_steps=4, output_type="latent")
    theirs = pipe(generator=seeded(), **kw).images
    side = pipe.unet.config.sample_size
    assert theirs.shape[-2:] == (side, side)
    out = hasten.accelerate(pipe)(generator=seeded(), **kw)
    assert out.images.shape == theirs.shape and (out.images - theirs).abs().max() <= 1e-5
