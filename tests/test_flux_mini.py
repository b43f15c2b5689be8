"""flux-mini: the shipped Flux pipeline folder loads offline, is small, samples through hasten as diffusers does,
and its samples show what their captions ask (issue 26)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

import hasten  # noqa: E402
from hasten.errors import HastenError  # noqa: E402
from hasten.models import flux_mini, shapes  # noqa: E402


@pytest.fixture(scope="module")
def pipe():
    return flux_mini.load_pipeline()


def test_folder_is_a_small_offline_flux_pipeline(pipe):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    folder = flux_mini.pipeline_path()
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size <= 40 * 2**20, f"{size / 2**20:.1f} MiB"
    assert not list(folder.rglob("*.bin")), "weights are safetensors only"
    assert isinstance(pipe, FluxPipeline)
    assert isinstance(pipe.transformer, FluxTransformer2DModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert pipe.default_sample_size * pipe.vae_scale_factor == 64  # the trained size, not FluxPipeline's 512


def test_every_grammar_word_is_one_token(pipe):
    for word in shapes.VOCABULARY:
        assert len(pipe.tokenizer(word).input_ids) == 3, word  # start, the word, end
        assert len(pipe.tokenizer_2(word).input_ids) == 2, word  # the word, end


def test_missing_weights_name_the_trainer(monkeypatch, tmp_path):
    monkeypatch.setattr(flux_mini, "PIPELINE_DIR", tmp_path)
    with pytest.raises(HastenError, match="train_flux_mini"):
        flux_mini.pipeline_path()


def test_hasten_reproduces_the_pipeline(pipe):
    kwargs = dict(prompt=list(flux_mini.PROMPTS[:2]), num_inference_steps=4, height=64, width=64,
                  max_sequence_length=16, output_type="pt")
    theirs = pipe(generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **kwargs).images
    ours = hasten.accelerate(pipe)(generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **kwargs).images
    assert ours.shape == (2, 3, 64, 64)
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def test_padding_stand_in_equals_the_full_t5_sequence(pipe):
    """Training keeps 12 text tokens and a log-count attention bias for T5's 512-token padding: the same output."""
    prompt = "a small green circle at the top right"
    embeds, pooled, txt_ids = pipe.encode_prompt(prompt, prompt_2=None, max_sequence_length=512)
    n = len(pipe.tokenizer_2(prompt).input_ids)
    img_ids = pipe._prepare_latent_image_ids(1, 8, 8, "cpu", torch.float32)
    x, t = torch.randn(1, 64, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([0.6])
    with torch.no_grad():
        full = pipe.transformer(hidden_states=x, timestep=t, pooled_projections=pooled, encoder_hidden_states=embeds,
                                txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        bias = torch.zeros(1, 1, 1, 12 + 64)
        bias[..., n:12] = torch.log(torch.tensor((512 - n) / (12 - n)))
        short = pipe.transformer(hidden_states=x, timestep=t, pooled_projections=pooled,
                                 encoder_hidden_states=embeds[:, :12], txt_ids=txt_ids[:12], img_ids=img_ids,
                                 joint_attention_kwargs={"attention_mask": bias}, return_dict=False)[0]
    assert torch.allclose(full, short, atol=1e-4)


def test_samples_follow_their_captions(pipe):
    """8 Euler steps (of the default 28) on the held-out captions: well above chance, which is 1/144 for
    colour, shape, place and size all right (the 28-step figure is in docs/flux_mini.md)."""
    prompts = list(flux_mini.PROMPTS[:8])
    images = pipe(prompts, num_inference_steps=8, height=64, width=64, output_type="pt",
                  generator=[torch.Generator().manual_seed(100 + k) for k in range(len(prompts))]).images
    score = shapes.adherence_breakdown(images, prompts)
    assert score["colour"] >= 0.5, score
    assert score["all"] >= 0.25, score


def test_hasten_sample_model_flux_mini(tmp_path, capsys):
    """``--model flux-mini`` names the shipped folder: the CLI samples it as the pipeline it is."""
    import json

    from hasten.cli import main

    out = tmp_path / "out"
    assert main(["sample", "--model", "flux-mini", "--prompt", "a red circle", "--steps", "4", "--cores", "2",
                 "--stop", "none", "--out", str(out), "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] and (out / "samples.png").is_file()
    assert summary["hits"][-1]["rmse"] < 1e-3  # CHORDS' last core lands on the sequential result


def test_flux_mini_is_served_with_text_prompts():
    from hasten.serve.model import ServedModel

    served = ServedModel("flux-mini", torch.device("cpu"))
    assert served.name == "flux-mini" and served.takes_prompt and served.size == (64, 64)
    served.check_prompt("a small blue square at the bottom")


def test_an_unknown_model_names_flux_mini():
    from hasten.opening import model_source

    with pytest.raises(HastenError, match="flux-mini"):
        model_source("flux-maxi")


def test_bench_and_tune_report_adherence_on_flux_mini(tmp_path, capsys):
    """A model with a caption score gets an adherence column in bench and tune (issue 26, part 2), beside SSIM."""
    import json

    from hasten.cli import main

    prompt = "a large red circle at the top left"
    assert main(["bench", "--model", "flux-mini", "--prompt", prompt, "--methods", "sequential,chords",
                 "--cores", "2", "--steps", "6", "--batch", "2", "--stop", "none", "--no-progress",
                 "--out", str(tmp_path / "bench")]) == 0
    rows = json.loads((tmp_path / "bench" / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["sequential", "chords"]
    for row in rows:
        assert isinstance(row["adherence"], float) and 0 <= row["adherence"] <= 1 and 0 < row["ssim"] <= 1
    assert rows[1]["adherence"] == rows[0]["adherence"]  # read at the last core: the sequential images
    assert "adherence" in (tmp_path / "bench" / "results.md").read_text()
    assert main(["tune", "--model", "flux-mini", "--prompt", prompt, "--steps", "6", "--batch", "2",
                 "--target", "ssim:0.9", "--devices", "2", "--methods", "chords", "--no-progress",
                 "--out", str(tmp_path / "tune")]) == 0
    tuned = json.loads((tmp_path / "tune" / "tune.json").read_text())["rows"]
    assert all(isinstance(r["adherence"], float) for r in tuned)
    assert "adherence" in (tmp_path / "tune" / "tune.md").read_text()
    capsys.readouterr()
    assert main(["bench", "--model", "flux-mini", "--prompt", "a cat", "--methods", "sequential", "--steps", "2",
                 "--batch", "1", "--no-progress", "--out", str(tmp_path / "cat")]) == 0
    assert json.loads((tmp_path / "cat" / "results.json").read_text())["rows"][0]["adherence"] is None
