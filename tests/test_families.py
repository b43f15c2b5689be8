"""The text-to-image / video families beyond the first nine, on tiny pipelines built from configs (issue 18).

For each family: sequential reproduces ``pipe()`` (default scheduler and
arguments, and the arguments people use), every method and the default cache
run on it (CHORDS run to the end lands on the sequential latents), and call
options hasten does not reproduce are refused by name before sampling.
"""

import pytest
import torch

pytest.importorskip("transformers")

import hasten  # noqa: E402
from hasten import HastenError  # noqa: E402
from hasten.testing.pipelines import TINY_CALLS, tiny_image, tiny_pipeline  # noqa: E402

STEPS = 4
_PIPES: dict = {}


def pipe_of(kind):
    if kind not in _PIPES:
        _PIPES[kind] = tiny_pipeline(kind)
    return _PIPES[kind]


def final(output):
    return torch.as_tensor(output.frames if hasattr(output, "frames") else output.images)


def both(kind_or_pipe, seed=0, **call):
    """(hasten sequential, the pipeline's own) outputs for one call."""
    pipe = pipe_of(kind_or_pipe) if isinstance(kind_or_pipe, str) else kind_or_pipe
    ours = hasten.accelerate(pipe)(generator=torch.Generator().manual_seed(seed), **call)
    theirs = pipe(generator=torch.Generator().manual_seed(seed), **call)
    return final(ours), final(theirs)


def assert_reproduced(kind, **call):
    ours, theirs = both(kind, **{"num_inference_steps": STEPS, **TINY_CALLS[kind], **call})
    assert ours.shape == theirs.shape
    # 1e-5 relative to the outputs' size: float32 rounding differs with the CPU's kernels (1.2e-5 on Lumina 2 here)
    assert (ours - theirs).abs().max() <= 1e-5 * max(1.0, float(theirs.abs().max()))


#: per family: the default call (output decoded) and the arguments people use
REPRODUCED = {
    "ltx": [dict(output_type="pt"),
            dict(negative_prompt="a dog", guidance_scale=4.0, guidance_rescale=0.5, num_videos_per_prompt=2,
                 decode_timestep=[0.05, 0.1], decode_noise_scale=0.02, output_type="pt"),
            dict(prompt=["a cat", "a red dog"], guidance_scale=1.0, height=64, width=32, num_frames=5,
                 frame_rate=12, output_type="latent")],
    "qwenimage": [dict(output_type="pt"),
                  dict(prompt=["a cat", "a photo of a red dog"], negative_prompt=["", "blue"], true_cfg_scale=3.0,
                       num_images_per_prompt=2, height=64, output_type="latent"),
                  dict(negative_prompt=None, output_type="latent"),
                  dict(sigmas=[1.0, 0.7, 0.4, 0.1], output_type="latent")],
    "wan22": [dict(output_type="pt"),
              dict(negative_prompt="a dog", guidance_scale=4.0, guidance_scale_2=2.0, num_videos_per_prompt=2,
                   num_frames=9, output_type="latent"),
              dict(guidance_scale=1.0, output_type="latent")],
    "wan22-ti2v": [dict(output_type="pt"),
                   dict(prompt=["a cat", "a dog"], negative_prompt="blue", guidance_scale=3.0, output_type="latent")],
    "wan-i2v": [dict(output_type="pt"),
                dict(prompt=["a cat", "a dog"], negative_prompt="blue", guidance_scale=3.0, output_type="latent")],
    "wan22-i2v": [dict(output_type="latent"),
                  dict(negative_prompt="blue", guidance_scale=3.0, guidance_scale_2=1.5, num_videos_per_prompt=2,
                       last_image=tiny_image(), output_type="latent")],
    "chroma": [dict(output_type="pt"),
               dict(prompt=["a cat", "a photo of a red dog"], negative_prompt=None, num_images_per_prompt=2, height=32,
                    output_type="latent"),
               dict(guidance_scale=1.0, sigmas=[1.0, 0.6, 0.3, 0.1], output_type="latent")],
    "auraflow": [dict(output_type="pt"),
                 dict(prompt=["a cat", "a photo of a red dog"], negative_prompt=None, num_images_per_prompt=2,
                      height=32, guidance_scale=5.0, output_type="latent")],
    "cogview4": [dict(output_type="pt"),
                 dict(prompt=["a cat", "a photo of a red dog"], negative_prompt=None, num_images_per_prompt=2,
                      height=32, original_size=(64, 32), crops_coords_top_left=(4, 0), output_type="latent"),
                 dict(guidance_scale=1.0, timesteps=[999, 700, 400, 100], output_type="latent")],
    "lumina2": [dict(output_type="pt"),
                dict(prompt=["a cat", "a photo of a red dog"], negative_prompt=None, num_images_per_prompt=2,
                     height=64, output_type="latent"),
                dict(cfg_trunc_ratio=0.5, guidance_scale=6.0, output_type="latent"),
                dict(cfg_normalization=False, system_prompt="a red cat", output_type="latent")],
    "pixart-sigma": [dict(output_type="pt"),
                     dict(prompt=["a cat", "a photo of a red dog"], negative_prompt="", num_images_per_prompt=2,
                          output_type="latent"),
                     dict(use_resolution_binning=True, height=48, output_type="pt")],  # the 256 bin, resized back
    "sana": [dict(output_type="pt"),
             dict(prompt=["a cat", "a photo of a red dog"], negative_prompt="", num_images_per_prompt=2,
                  guidance_scale=1.0, output_type="latent"),
             dict(use_resolution_binning=True, height=96, output_type="pt"),  # the 512 bin, resized back
             dict(complex_human_instruction=["describe:", "then: "], max_sequence_length=6, output_type="latent")],
    "hidream": [dict(output_type="pt"),
                dict(prompt=["a cat", "a photo of a red dog"], negative_prompt=None, num_images_per_prompt=2,
                     prompt_4="a red dog", height=64, width=32, output_type="latent")],
}


@pytest.mark.parametrize("kind,case", [(k, i) for k, cases in REPRODUCED.items() for i in range(len(cases))])
def test_sequential_reproduces_the_pipeline(kind, case):
    assert_reproduced(kind, **REPRODUCED[kind][case])


def test_wan22_ti2v_image_to_video_reproduces_the_pipeline():
    """WanImageToVideoPipeline with expand_timesteps: the first frame pasted, timestep 0 on its tokens."""
    import diffusers

    ti2v = pipe_of("wan22-ti2v")
    pipe = diffusers.WanImageToVideoPipeline(tokenizer=ti2v.tokenizer, text_encoder=ti2v.text_encoder, vae=ti2v.vae,
                                             transformer=ti2v.transformer, scheduler=ti2v.scheduler,
                                             expand_timesteps=True)
    pipe.set_progress_bar_config(disable=True)
    ours, theirs = both(pipe, image=tiny_image(32), negative_prompt="a dog", guidance_scale=3.0,
                        num_inference_steps=STEPS, output_type="pt", **TINY_CALLS["wan22-ti2v"])
    assert (ours - theirs).abs().max() <= 1e-5


METHODS = [("chords", {"cores": 3, "stop": "none"}), ("paradigms", {"tol": 1e-7}), ("srds", {"tol": 1e-7}),
           ("parasolver-turbo", {"cores": 2, "tol": 1e-7})]
_SEQUENTIAL: dict = {}


def latents(kind, method="sequential", cache=None, **options):
    call = {"num_inference_steps": STEPS, "output_type": "latent", **TINY_CALLS[kind]}
    out = hasten.accelerate(pipe_of(kind), method, cache=cache, **options)(
        generator=torch.Generator().manual_seed(0), **call)
    return out.hasten


@pytest.mark.parametrize("method,options", METHODS, ids=[m for m, _ in METHODS])
@pytest.mark.parametrize("kind", list(REPRODUCED))
def test_every_method_lands_on_the_sequential_latents(kind, method, options):
    if kind not in _SEQUENTIAL:
        _SEQUENTIAL[kind] = latents(kind)["latents"]
    stats = latents(kind, method, **options)
    # CHORDS run to the end: its slowest core is the sequential solve; the others converge to it
    tol = 1e-5 if method == "chords" else 1e-4
    assert (stats["latents"] - _SEQUENTIAL[kind]).abs().max() <= tol
    assert stats["nfe"] >= stats["rounds"] >= 1


@pytest.mark.parametrize("kind", list(REPRODUCED))
def test_the_default_cache_runs(kind):
    stats = latents(kind, cache="abcache")
    assert torch.isfinite(stats["latents"]).all() and stats["nfe"] < STEPS


REFUSED = {
    "ltx": dict(timesteps=[900, 500, 100, 10]),
    "qwenimage": dict(attention_kwargs={"scale": 0.5}),
    "wan22": dict(attention_kwargs={"scale": 0.5}),
    "wan-i2v": dict(attention_kwargs={"scale": 0.5}),
    "chroma": dict(ip_adapter_image=tiny_image()),
    "auraflow": dict(attention_kwargs={"scale": 0.5}),
    "cogview4": dict(attention_kwargs={"scale": 0.5}),
    "lumina2": dict(attention_kwargs={"scale": 0.5}),
    "pixart-sigma": dict(eta=0.5),
    "sana": dict(timesteps=[999, 500, 100, 10]),
    "hidream": dict(attention_kwargs={"scale": 0.5}),
}


@pytest.mark.parametrize("kind", list(REFUSED))
def test_options_not_reproduced_are_refused_by_name(kind):
    pipe = pipe_of(kind)
    (name, value), = REFUSED[kind].items()
    network = pipe.transformer
    calls = []
    hook = network.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(HastenError, match=f"not supported by hasten: {name}"):
            hasten.accelerate(pipe)(num_inference_steps=STEPS, **TINY_CALLS[kind], **{name: value})
    finally:
        hook.remove()
    assert calls == []  # refused before any forward


def test_wan22_experts_follow_the_grid_point_in_a_mixed_round():
    """A round mixing grid points on both sides of the boundary runs each row on its own expert."""
    from hasten.integrations.adapters import adapter_for
    from hasten.integrations.model import prepare_call

    pipe = pipe_of("wan22")

    def prepared():
        return prepare_call(adapter_for(pipe), num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                            guidance_scale=4.0, guidance_scale_2=2.0, negative_prompt="a dog", output_type="latent",
                            **TINY_CALLS["wan22"])

    call = prepared()
    boundary = pipe.config.boundary_ratio * pipe.scheduler.config.num_train_timesteps
    times = call.grid.timesteps
    assert (times >= boundary).any() and (times < boundary).any()  # the switch lies inside this grid
    denoiser, x = call.denoiser, call.latents
    high, low = int((times >= boundary).nonzero()[-1]), int((times < boundary).nonzero()[0])
    alone = [denoiser(x, torch.tensor([i]), torch.tensor([0])) for i in (high, low)]
    mixed = denoiser(torch.cat([x, x]), torch.tensor([high, low]), torch.tensor([0, 0]))
    assert (mixed[:1] - alone[0]).abs().max() <= 1e-6 and (mixed[1:] - alone[1]).abs().max() <= 1e-6
    experts = pipe.transformer, pipe.transformer_2
    pipe.transformer, pipe.transformer_2 = experts[1], experts[0]
    try:  # the experts differ, so a wrong switch would show
        swapped = prepared().denoiser
        for i, out in zip((high, low), alone):
            assert (swapped(x, torch.tensor([i]), torch.tensor([0])) - out).abs().max() > 1e-3
    finally:
        pipe.transformer, pipe.transformer_2 = experts


def test_guidance_scale_2_needs_a_boundary():
    pipe = pipe_of("wan")
    with pytest.raises(HastenError, match="guidance_scale_2"):
        hasten.accelerate(pipe)(num_inference_steps=STEPS, guidance_scale_2=2.0, **TINY_CALLS["wan"])


def test_ltx_decode_timesteps_must_number_the_videos():
    with pytest.raises(HastenError, match="one decode_timestep per video"):
        hasten.accelerate(pipe_of("ltx"))(num_inference_steps=STEPS, num_videos_per_prompt=2, output_type="pt",
                                          **TINY_CALLS["ltx"])


def test_wan_i2v_with_an_image_encoder_makes_one_video_per_prompt():
    with pytest.raises(HastenError, match="one video per prompt"):
        hasten.accelerate(pipe_of("wan-i2v"))(num_inference_steps=STEPS, num_videos_per_prompt=2,
                                              **TINY_CALLS["wan-i2v"])


def test_sana_stochastic_flow_steps_draw_from_the_call_generator():
    """SanaPipeline hands its generator to ``step``: stochastic flow noise comes from it, not the global RNG."""
    import diffusers

    pipe = tiny_pipeline("sana")
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0, stochastic_sampling=True)
    call = {"num_inference_steps": STEPS, **TINY_CALLS["sana"], "output_type": "latent"}
    torch.manual_seed(1)
    ours = hasten.accelerate(pipe)(generator=torch.Generator().manual_seed(0), **call).images
    torch.manual_seed(2)  # a different global state: the pipeline does not read it
    theirs = pipe(generator=torch.Generator().manual_seed(0), **call).images
    assert (ours - theirs).abs().max() <= 1e-5


def test_pixart_binning_needs_a_binned_sample_size():
    pipe = pipe_of("pixart-sigma")
    pipe.transformer.register_to_config(sample_size=8)
    try:
        with pytest.raises(HastenError, match="use_resolution_binning=True needs a transformer sample_size"):
            hasten.accelerate(pipe)(num_inference_steps=STEPS, **{**TINY_CALLS["pixart-sigma"],
                                                                  "use_resolution_binning": True})
    finally:
        pipe.transformer.register_to_config(sample_size=32)


SHIPPED = {  # the multistep schedulers these checkpoints ship, reproduced by hasten's multistep steps
    "wan22": ("UniPCMultistepScheduler", dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)),
    "wan-i2v": ("UniPCMultistepScheduler", dict(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                flow_shift=3.0)),
    "pixart-sigma": ("DPMSolverMultistepScheduler", {}),
    "sana": ("DPMSolverMultistepScheduler", dict(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                 flow_shift=3.0)),
    "hidream": ("UniPCMultistepScheduler", dict(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                flow_shift=3.0)),
}


@pytest.mark.parametrize("kind", list(SHIPPED))
def test_shipped_multistep_schedulers_are_reproduced(kind, caplog):
    """Sequential equals the pipeline run with the scheduler it ships, with no notice of a counterpart."""
    import diffusers

    pipe = tiny_pipeline(kind)
    name, options = SHIPPED[kind]
    pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config, **options)
    call = {"num_inference_steps": STEPS, **TINY_CALLS[kind], "output_type": "latent"}
    with caplog.at_level("WARNING", logger="hasten"):
        out = hasten.accelerate(pipe)(generator=torch.Generator().manual_seed(0), **call)
    assert "counterpart" not in caplog.text and out.hasten["scheduler"] == name
    theirs = final(pipe(generator=torch.Generator().manual_seed(0), **call))
    # float32 rounding is relative: the tiny PixArt grows its latents to ~70
    assert (final(out) - theirs).abs().max() <= 1e-5 * max(1.0, float(theirs.abs().max()))
