"""LoRA (issue 27): hasten.accelerate after load_lora_weights, --lora on the CLI, make-tiny --lora, bad files."""

import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

import hasten  # noqa: E402
from hasten.cli import main  # noqa: E402
from hasten.testing.lora import save_tiny_lora  # noqa: E402
from hasten.testing.pipelines import TINY_CALLS, tiny_pipeline  # noqa: E402


def seeded(seed=3):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def sd_lora(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    pipe = tiny_pipeline("sd")
    path = save_tiny_lora(pipe, root / "sd.safetensors")
    return pipe, path


KW = dict(TINY_CALLS["sd"], num_inference_steps=8, output_type="latent")
METHODS = {"chords": {"cores": 3, "stop": "none"}, "paradigms": {"cores": 4, "tol": 1e-6},
           "srds": {"tol": 1e-6}, "parasolver": {"cores": 3, "tol": 1e-6},
           "parasolver-turbo": {"cores": 3, "tol": 1e-6}}


def test_every_method_and_cache_runs_on_a_loaded_lora_and_scale_0_is_the_base_model(sd_lora):
    pipe, path = sd_lora
    base = hasten.accelerate(pipe)(generator=seeded(), **KW).images
    pipe.load_lora_weights(str(path), adapter_name="tiny")
    try:
        pipe.set_adapters(["tiny"], [1.0])
        theirs = pipe(generator=seeded(), **KW).images
        seq = hasten.accelerate(pipe)(generator=seeded(), **KW).images
        assert (seq - theirs).abs().max() <= 1e-5  # the pipeline's own output with its LoRA
        assert (seq - base).abs().max() > 1e-2  # and the LoRA changes it
        for method, options in METHODS.items():
            out = hasten.accelerate(pipe, method, **options)(generator=seeded(), **KW)
            assert (out.images - seq).abs().max() <= 1e-4, method
        cached = hasten.accelerate(pipe, cache="abcache")(generator=seeded(), **KW)
        assert cached.hasten["nfe"] < cached.hasten["steps"] and torch.isfinite(cached.images).all()
        pipe.set_adapters(["tiny"], [0.0])
        zero = hasten.accelerate(pipe, "chords", cores=3, stop="none")(generator=seeded(), **KW).images
        assert (zero - base).abs().max() <= 1e-5
    finally:
        pipe.delete_adapters(["tiny"])


def test_sample_lora_equals_accelerate_and_make_tiny_writes_one(tmp_path, capsys):
    from diffusers import DiffusionPipeline
    from safetensors.torch import load_file

    folder, lora = tmp_path / "sd", tmp_path / "sd-lora.safetensors"
    assert main(["make-tiny", "--kind", "sd", "--out", str(folder), "--lora", str(lora)]) == 0
    capsys.readouterr()
    for scale in ("0.5", "0"):
        out = tmp_path / f"out{scale}"
        assert main(["sample", "--model", str(folder), "--prompt", "a cat", "--method", "sequential", "--steps", "8",
                     "--batch", "1", "--seed", "3", "--lora", f"{lora}:{scale}", "--out", str(out),
                     "--no-progress", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["lora"] == f"{lora}:{scale}"
        pipe = DiffusionPipeline.from_pretrained(str(folder))
        pipe.set_progress_bar_config(disable=True)
        base = hasten.accelerate(pipe)(generator=seeded(), **KW).hasten["latents"]
        pipe.load_lora_weights(str(lora), adapter_name="x")
        pipe.set_adapters(["x"], [float(scale)])
        ours = hasten.accelerate(pipe)(generator=seeded(), **KW).hasten["latents"]
        got = load_file(str(out / "latents.safetensors"))["latents"]
        assert (got - ours).abs().max() <= 1e-5
        assert ((got - base).abs().max() <= 1e-5) == (scale == "0")


def test_bad_lora_files_get_one_line_naming_them(tmp_path, capsys):
    from safetensors.torch import save_file

    folder = tmp_path / "sd"
    sdxl_lora = tmp_path / "sdxl.safetensors"
    assert main(["make-tiny", "--kind", "sd", "--out", str(folder)]) == 0
    assert main(["make-tiny", "--kind", "sdxl", "--lora", str(sdxl_lora)]) == 0
    capsys.readouterr()
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    save_file({"unet.nowhere.lora_A.weight": torch.zeros(4, 8), "unet.nowhere.lora_B.weight": torch.zeros(8, 4)},
              str(tmp_path / "nowhere.safetensors"))
    cases = {"missing.safetensors": "no such file", "corrupt.safetensors": "not a readable safetensors file",
             "plain.safetensors": "holds no LoRA weights", "sdxl.safetensors": "does not fit StableDiffusionPipeline",
             "nowhere.safetensors": "StableDiffusionPipeline"}
    for name, message in cases.items():
        path = tmp_path / name
        assert main(["sample", "--model", str(folder), "--steps", "4", "--lora", str(path), "--out",
                     str(tmp_path / "o"), "--no-progress"]) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"--lora {path}" in err and message in err, err
        assert not (tmp_path / "o").exists()
    assert main(["sample", "--model", "digits", "--lora", str(sdxl_lora), "--out", str(tmp_path / "o")]) == 2
    assert "applies to diffusers pipelines" in capsys.readouterr().err
