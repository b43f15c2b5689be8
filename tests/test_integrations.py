"""hasten.accelerate on tiny diffusers pipelines built offline from configs (random weights)."""

import pytest
import torch

pytest.importorskip("transformers")

from diffusers import (  # noqa: E402
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
)
import hasten  # noqa: E402
from hasten import HastenError  # noqa: E402
from hasten.testing.pipelines import TINY_CALLS, tiny_pipeline, tiny_unet2d  # noqa: E402


def tiny_unet():
    torch.manual_seed(0)
    return tiny_unet2d()


def tiny_sd(prediction="epsilon", scheduler_cls=None):
    return tiny_pipeline("sd", prediction=prediction, scheduler_cls=scheduler_cls)


def latents_of(output):
    return output.hasten["latents"]


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_sequential_reproduces_ddim_pipeline(spacing):
    pipe = DDIMPipeline(unet=tiny_unet(), scheduler=DDIMScheduler(clip_sample=False, timestep_spacing=spacing))
    pipe.set_progress_bar_config(disable=True)
    ours = hasten.accelerate(pipe)(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=10,
                                   output_type="np")
    theirs = pipe(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=10, output_type="np")
    assert abs(ours.images - theirs.images).max() <= 1e-5
    assert ours.hasten["rounds"] == 10 and ours.hasten["nfe"] == 10


def test_sequential_reproduces_ddpm_pipeline_noise_and_all():
    pipe = DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(clip_sample=False, num_train_timesteps=50))
    pipe.set_progress_bar_config(disable=True)
    ours = hasten.accelerate(pipe)(batch_size=2, generator=torch.Generator().manual_seed(1), num_inference_steps=50,
                                   output_type="np")
    theirs = pipe(batch_size=2, generator=torch.Generator().manual_seed(1), num_inference_steps=50, output_type="np")
    assert abs(ours.images - theirs.images).max() <= 1e-5
    assert ours.hasten["solver"] == "ddpm"


@pytest.mark.parametrize("method,options", [("chords", {"cores": 4}), ("paradigms", {"cores": 4}),
                                            ("srds", {}), ("parasolver-turbo", {"cores": 3})])
def test_parallel_methods_on_ddpm_pipeline_converge_to_its_trajectory(method, options):
    pipe = DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(clip_sample=False, num_train_timesteps=40))
    pipe.set_progress_bar_config(disable=True)
    seq = hasten.accelerate(pipe)(batch_size=1, generator=torch.Generator().manual_seed(0), output_type="np",
                                  num_inference_steps=40)
    tight = {"tol": 1e-6} if method != "chords" else {}
    fast = hasten.accelerate(pipe, method, stop="none", **options, **tight)(
        batch_size=1, generator=torch.Generator().manual_seed(0), output_type="np", num_inference_steps=40)
    assert (latents_of(fast) - latents_of(seq)).abs().max() <= 1e-4


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_sequential_reproduces_stable_diffusion_with_cfg(prediction):
    pipe = tiny_sd(prediction)
    kwargs = dict(prompt=["a photo of a cat", "a red dog"], negative_prompt=["blue", "the"], guidance_scale=5.0,
                  num_inference_steps=8, output_type="latent", num_images_per_prompt=2)
    ours = hasten.accelerate(pipe)(generator=torch.Generator().manual_seed(2), **kwargs)
    theirs = pipe(generator=torch.Generator().manual_seed(2), **kwargs)
    assert ours.images.shape == theirs.images.shape == (4, 4, 8, 8)
    assert (ours.images - theirs.images).abs().max() <= 1e-5


def test_every_method_runs_on_stable_diffusion_and_streams_decoded_hits():
    pipe = tiny_sd()
    decoded = []
    fast = hasten.accelerate(pipe, "chords", cores=3, stop="none",
                             on_hit=lambda hit, decode: decoded.append(decode(hit.x).images))
    out = fast("a photo of a cat", num_inference_steps=10, guidance_scale=3.0, output_type="np",
               generator=torch.Generator().manual_seed(0))
    assert len(decoded) == 3 and out.images.shape == (1, 16, 16, 3)
    seq = hasten.accelerate(pipe)("a photo of a cat", num_inference_steps=10, guidance_scale=3.0, output_type="np",
                                  generator=torch.Generator().manual_seed(0))
    assert abs(decoded[-1] - seq.images).max() <= 1e-4  # the last hit is the sequential result
    for method in ("paradigms", "srds", "parasolver", "parasolver-turbo"):
        res = hasten.accelerate(pipe, method)("a cat", num_inference_steps=10, output_type="latent",
                                             generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(res.images).all() and res.hasten["rounds"] <= 10
    cached = hasten.accelerate(pipe, cache="abcache:2:interval=2")("a cat", num_inference_steps=10,
                                                                   output_type="latent")
    assert cached.hasten["nfe"] < 10


def test_unreproduced_multistep_scheduler_runs_as_its_first_order_counterpart(caplog):
    """DPM-Solver++ 3M is not reproduced (2M is, tests/test_multistep.py): the notice names why and what runs."""
    pipe = tiny_sd()
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, solver_order=3)
    with caplog.at_level("WARNING", logger="hasten"):
        out = hasten.accelerate(pipe, "chords", cores=2)("a cat", num_inference_steps=6, output_type="latent")
    assert "DPMSolverMultistepScheduler is not reproduced (solver_order=3" in caplog.text
    assert "first-order counterpart DDIMScheduler" in caplog.text and out.hasten["solver"] == "ddim"


def test_bad_input_is_refused_before_any_model_call():
    class NotAPipeline:
        pass

    with pytest.raises(HastenError, match="pipeline NotAPipeline is not supported yet; supported: AuraFlowPipeline, "
                                          "ChromaPipeline, CogVideoXPipeline, CogView4Pipeline, DDIMPipeline"):
        hasten.accelerate(NotAPipeline())
    pipe = tiny_sd()
    with pytest.raises(HastenError, match="not supported by hasten: ip_adapter_image \\(hasten takes "
                                          "ip_adapter_image=None, the pipeline's default, only\\); supported: clip_skip"):
        hasten.accelerate(pipe)("a cat", ip_adapter_image=object())
    with pytest.raises(HastenError, match="unknown method 'magic'"):
        hasten.accelerate(pipe, "magic")
    with pytest.raises(ValueError):  # the pipeline's own check_inputs: prompt and embeddings together
        hasten.accelerate(pipe)("a cat", prompt_embeds=torch.zeros(1, 16, 16))


def tiny_flux():
    return tiny_pipeline("flux")


@pytest.mark.parametrize("true_cfg", [False, True])
def test_sequential_reproduces_flux(true_cfg):
    pipe = tiny_flux()
    kwargs = dict(prompt="a photo of a cat", height=16, width=16, num_inference_steps=6, guidance_scale=3.5,
                  output_type="latent", max_sequence_length=8, num_images_per_prompt=2)
    if true_cfg:
        kwargs.update(negative_prompt="a red dog", true_cfg_scale=2.0)
    ours = hasten.accelerate(pipe)(generator=torch.Generator().manual_seed(4), **kwargs)
    theirs = pipe(generator=torch.Generator().manual_seed(4), **kwargs)
    assert ours.images.shape == theirs.images.shape
    assert (ours.images - theirs.images).abs().max() <= 1e-5


def test_every_method_runs_on_flux_and_decodes():
    pipe = tiny_flux()
    seq = hasten.accelerate(pipe)("a cat", height=16, width=16, num_inference_steps=8, output_type="np",
                                  max_sequence_length=8, generator=torch.Generator().manual_seed(0))
    assert seq.images.shape == (1, 16, 16, 3)
    for method, opts in [("chords", {"cores": 3, "stop": "none"}), ("paradigms", {"tol": 1e-6}),
                         ("srds", {"tol": 1e-7}), ("parasolver-turbo", {"cores": 2, "tol": 1e-6})]:
        out = hasten.accelerate(pipe, method, **opts)("a cat", height=16, width=16, num_inference_steps=8,
                                                      output_type="np", max_sequence_length=8,
                                                      generator=torch.Generator().manual_seed(0))
        assert abs(out.images - seq.images).max() <= 1e-3, method


@pytest.fixture(scope="module")
def saved_sd(tmp_path_factory):
    from hasten.testing.pipelines import save_tiny_pipeline

    return save_tiny_pipeline("sd", tmp_path_factory.mktemp("pipes") / "tiny-sd")


def test_cli_sample_and_bench_on_a_saved_pipeline(saved_sd, tmp_path, capsys):
    import json

    from hasten.cli import main

    assert main(["sample", "--model", str(saved_sd), "--prompt", "a photo of a cat", "--method", "chords",
                 "--cores", "3", "--steps", "12", "--batch", "2", "--stop", "none", "--json", "--no-progress",
                 "--out", str(tmp_path / "s")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "StableDiffusionPipeline" and data["rmse"] <= 1e-4 and len(data["hits"]) == 3
    assert (tmp_path / "s" / "samples.png").is_file()
    assert main(["bench", "--model", str(saved_sd), "--prompt", "a cat", "--methods", "sequential,chords,paradigms",
                 "--cores", "2", "--steps", "10", "--batch", "2", "--no-progress", "--out", str(tmp_path / "b")]) == 0
    rows = json.loads((tmp_path / "b" / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["sequential", "chords", "paradigms"]


def test_cli_refuses_prompts_for_embedded_models_and_non_pipeline_folders(tmp_path, capsys):
    from hasten.cli import main

    assert main(["sample", "--model", "gmm", "--prompt", "a cat", "--out", str(tmp_path / "x")]) == 2
    assert "apply to diffusers pipelines" in capsys.readouterr().err
    assert main(["sample", "--model", "gmm", "--frames", "5", "--out", str(tmp_path / "x")]) == 2
    assert "apply to diffusers pipelines" in capsys.readouterr().err
    assert main(["sample", "--model", str(tmp_path), "--out", str(tmp_path / "y")]) == 2
    assert "is not a saved diffusers pipeline" in capsys.readouterr().err


def test_load_model_opens_a_pipeline_folder_as_the_cli_does(saved_sd):
    from hasten.session import Session
    from hasten.cli import build_parser
    from hasten.cli.options import run_spec
    from hasten.integrations.model import PipelineModel

    args = build_parser().parse_args(["sample", "--model", str(saved_sd), "--prompt", "a cat", "--batch", "2"])
    by_cli = Session.open(run_spec(args, 4)).model
    by_api = hasten.load_model(str(saved_sd), call={"prompt": "a cat"}, batch=2)
    assert isinstance(by_api, PipelineModel) and type(by_cli) is type(by_api)
    assert (by_api.name, by_api.call, by_api.batch) == (by_cli.name, by_cli.call, by_cli.batch)
    assert torch.equal(by_api.initial_latents(2, 0), by_cli.initial_latents(2, 0))
    with pytest.raises(HastenError, match="apply to diffusers pipelines"):
        hasten.load_model("gmm", call={"prompt": "a cat"})


def test_a_pipeline_model_prepares_each_step_count_once_and_knows_its_grids():
    from hasten.session import run_spec as prepare
    from hasten.integrations.model import PipelineModel
    from hasten.spec import RunSpec

    model = PipelineModel(tiny_sd(), {"prompt": "a cat"}, batch=2)
    calls = []
    real = model.adapter.prepare
    model.adapter.prepare = lambda call: calls.append(call["num_inference_steps"]) or real(call)
    s = prepare(RunSpec.build(model, "sequential", steps=6, seed=0, batch=2))
    assert calls == [6]  # the latents come from the same call as the grid
    assert model.grid(6) is s.step.grid and torch.equal(model.initial_latents(2, 0), s.x) and calls == [6]
    assert model.denoiser(model.grid(4)) is not model.denoiser(model.grid(6)) and calls == [6, 4]
    foreign = PipelineModel(tiny_sd(), {"prompt": "a cat"}, batch=2).grid(6)
    with pytest.raises(HastenError, match="not one of this pipeline's"):
        model.denoiser(foreign)


def test_euler_linspace_latents_keep_the_pipelines_start():
    """The latents come from the call of the run's step count, not from a one-step call (which starts at t = 0)."""
    from diffusers import EulerDiscreteScheduler

    from hasten.session import run_spec as prepare
    from hasten.integrations.model import PipelineModel
    from hasten.spec import RunSpec

    pipe = tiny_sd()
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
    s = prepare(RunSpec.build(PipelineModel(pipe, {"prompt": "a cat"}), "sequential", steps=8, seed=0, batch=1))
    bench_order = PipelineModel(pipe, {"prompt": "a cat"})  # latents asked for before any grid
    assert 0.5 < float(s.x.std()) < 2
    assert torch.allclose(bench_order.initial_latents(1, 0), s.x, atol=1e-6)


def test_adapters_own_the_pipelines_call_rules():
    from hasten.integrations.adapters import ADAPTERS

    flux, wan, ddpm = ADAPTERS["FluxPipeline"](None), ADAPTERS["WanPipeline"](None), ADAPTERS["DDPMPipeline"](None)
    assert flux.normalize_call({"prompt": "a", "negative_prompt": "b", "guidance_scale": 2.0}) == {
        "prompt": "a", "negative_prompt": "b", "true_cfg_scale": 2.0}
    assert flux.normalize_call({"negative_prompt": "b"})["true_cfg_scale"] == 4.0
    assert flux.normalize_call({"prompt": "a", "guidance_scale": 2.0}) == {"prompt": "a", "guidance_scale": 2.0}
    assert wan.normalize_call({"negative_prompt": "b", "guidance_scale": 2.0})["guidance_scale"] == 2.0
    assert ddpm.per_prompt_count(3) == {"batch_size": 3}
    assert flux.per_prompt_count(3) == {"num_images_per_prompt": 3}
    assert wan.per_prompt_count(3) == {"num_videos_per_prompt": 3}


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_sequential_reproduces_wan_video(guidance):
    pipe = tiny_pipeline("wan")
    kwargs = dict(prompt="a cat", negative_prompt="a dog", height=16, width=16, num_frames=5, num_inference_steps=6,
                  guidance_scale=guidance, output_type="latent", max_sequence_length=8)
    ours = hasten.accelerate(pipe)(generator=torch.Generator().manual_seed(1), **kwargs)
    theirs = pipe(generator=torch.Generator().manual_seed(1), **kwargs)
    assert ours.frames.shape == theirs.frames.shape and ours.frames.shape[2] == 2  # latent frames > 1
    assert (ours.frames - theirs.frames).abs().max() <= 1e-5


def test_methods_run_on_wan_and_decode_frames():
    pipe = tiny_pipeline("wan")
    call = dict(prompt="a cat", height=16, width=16, num_frames=5, num_inference_steps=8, guidance_scale=3.0,
                max_sequence_length=8, generator=torch.Generator().manual_seed(0))
    seq = hasten.accelerate(pipe)(**call)
    assert seq.frames.shape[1] == 5  # decoded video frames
    fast = hasten.accelerate(pipe, "chords", cores=3, stop="none")(**{**call, "generator": torch.Generator().manual_seed(0)})
    assert abs(fast.frames - seq.frames).max() <= 1e-4
    with pytest.raises(HastenError, match="boundary_ratio=0.5 needs its second expert, transformer_2"):
        pipe.register_to_config(boundary_ratio=0.5)
        hasten.accelerate(pipe)(**call)


@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_sequential_reproduces_sd3(guidance):
    pipe = tiny_pipeline("sd3")
    kwargs = dict(prompt="a photo of a cat", negative_prompt="a red dog", height=16, width=16, num_inference_steps=6,
                  guidance_scale=guidance, output_type="latent", max_sequence_length=8, num_images_per_prompt=2)
    ours = hasten.accelerate(pipe)(generator=torch.Generator().manual_seed(5), **kwargs)
    theirs = pipe(generator=torch.Generator().manual_seed(5), **kwargs)
    assert ours.images.shape == theirs.images.shape
    assert (ours.images - theirs.images).abs().max() <= 1e-5
    fast = hasten.accelerate(pipe, "parasolver-turbo", cores=2, tol=1e-6)(generator=torch.Generator().manual_seed(5),
                                                                          **kwargs)
    assert (fast.images - theirs.images).abs().max() <= 1e-4


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_sequential_reproduces_sdxl(prediction):
    pipe = tiny_pipeline("sdxl", prediction=prediction)
    kwargs = dict(prompt="a photo of a cat", negative_prompt="blue", guidance_scale=5.0, height=16, width=16,
                  num_inference_steps=6, output_type="latent", num_images_per_prompt=2)
    ours = hasten.accelerate(pipe)(generator=torch.Generator().manual_seed(6), **kwargs)
    theirs = pipe(generator=torch.Generator().manual_seed(6), **kwargs)
    assert ours.images.shape == theirs.images.shape
    assert (ours.images - theirs.images).abs().max() <= 1e-5
    out = hasten.accelerate(pipe, "chords", cores=3)(prompt="a cat", height=16, width=16, num_inference_steps=8,
                                                     output_type="np")
    assert out.images.shape == (1, 16, 16, 3) and out.hasten["rounds"] < 8


@pytest.mark.parametrize("dynamic", [False, True])
def test_sequential_reproduces_cogvideox(dynamic):
    pipe = tiny_pipeline("cogvideox")
    kwargs = dict(prompt="a cat", negative_prompt="a dog", height=16, width=16, num_frames=9, num_inference_steps=6,
                  guidance_scale=6.0, use_dynamic_cfg=dynamic, output_type="latent", max_sequence_length=16)
    ours = hasten.accelerate(pipe)(generator=torch.Generator().manual_seed(2), **kwargs)
    theirs = pipe(generator=torch.Generator().manual_seed(2), **kwargs)
    assert ours.frames.shape == theirs.frames.shape and ours.frames.shape[1] == 3  # latent frames
    assert (ours.frames - theirs.frames).abs().max() <= 1e-5
    fast = hasten.accelerate(pipe, "chords", cores=2, stop="none")(generator=torch.Generator().manual_seed(2), **kwargs)
    assert (fast.frames - theirs.frames).abs().max() <= 1e-4


FAMILY_CALLS = TINY_CALLS
_PIPES = {}


@pytest.mark.parametrize("method", ["sequential", "chords", "paradigms", "srds", "parasolver", "parasolver-turbo"])
@pytest.mark.parametrize("kind", list(FAMILY_CALLS))
def test_every_method_runs_end_to_end_on_every_family(kind, method):
    if kind not in _PIPES:
        _PIPES[kind] = tiny_pipeline(kind)
    steps = 10 if kind == "ddpm" else 6
    out = hasten.accelerate(_PIPES[kind], method, cores=None if method in ("sequential", "srds") else 2)(
        num_inference_steps=steps, output_type="latent", generator=torch.Generator().manual_seed(0),
        **FAMILY_CALLS[kind])
    stats = out.hasten
    assert torch.isfinite(stats["latents"]).all()
    assert 1 <= stats["rounds"] <= steps + 4 and stats["nfe"] >= stats["rounds"]


@pytest.mark.parametrize("true_cfg", [False, True])
def test_sequential_reproduces_hunyuanvideo(true_cfg):
    pipe = tiny_pipeline("hunyuanvideo")
    kwargs = dict(prompt="a photo of a cat", height=16, width=16, num_frames=5, num_inference_steps=6,
                  guidance_scale=4.0, output_type="latent", max_sequence_length=16,
                  prompt_template={"template": "{}", "crop_start": 0})
    if true_cfg:
        kwargs.update(negative_prompt="a red dog", true_cfg_scale=3.0)
    ours = hasten.accelerate(pipe)(generator=torch.Generator().manual_seed(3), **kwargs)
    theirs = pipe(generator=torch.Generator().manual_seed(3), **kwargs)
    assert ours.frames.shape == theirs.frames.shape and ours.frames.shape[2] == 2  # latent frames
    assert (ours.frames - theirs.frames).abs().max() <= 1e-5


def test_diffusers_cache_hooks_run_through_the_bench(tmp_path, capsys):
    import json

    from hasten.cli import main
    from hasten.testing.pipelines import save_tiny_pipeline

    flux = save_tiny_pipeline("flux", tmp_path / "flux")
    common = ["--model", str(flux), "--prompt", "a cat", "--height", "16", "--width", "16", "--steps", "8",
              "--batch", "1", "--no-progress"]
    assert main(["bench", *common, "--methods", "sequential", "--caches",
                 "none,diffusers:firstblock:threshold=0.2,diffusers:taylorseer", "--out", str(tmp_path / "b")]) == 0
    rows = json.loads((tmp_path / "b" / "results.json").read_text())["rows"]
    assert [r["cache"] for r in rows] == ["none", "diffusers:firstblock:threshold=0.2", "diffusers:taylorseer"]
    assert all(r["gflops"] is None for r in rows[1:])  # a hook's savings inside the network are not countable here
    assert main(["bench", *common, "--methods", "chords", "--caches", "diffusers:taylorseer",
                 "--out", str(tmp_path / "c")]) == 2
    assert "serve sequential sampling only" in capsys.readouterr().err
