"""``--image``, ``--mask``, ``--strength``, ``--control-image`` on ``hasten sample`` / ``bench`` (issue 27)."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

import hasten  # noqa: E402
from hasten.cli import main  # noqa: E402
from hasten.testing.pipelines import save_tiny_pipeline  # noqa: E402
from hasten.testing.workflows import tiny_images  # noqa: E402

_SAVED: dict = {}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipes")
    return {k: save_tiny_pipeline(k, root / k) for k in ("sd", "sd-img2img", "sd-inpaint", "sd-controlnet")}


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    root = tmp_path_factory.mktemp("pictures")
    images = tiny_images(32)
    paths = {}
    for name, im in images.items():
        im.save(root / f"{name}.png")
        paths[name] = root / f"{name}.png"
    return paths


def _latents(out):
    from safetensors.torch import load_file

    return load_file(str(out / "latents.safetensors"))["latents"]


CASES = {"sd-img2img": (["--image", "image", "--strength", "0.75"], {"image": "image", "strength": 0.75}),
         "sd-inpaint": (["--image", "image", "--mask", "mask_image"], {"image": "image", "mask_image": "mask_image"}),
         "sd-controlnet": (["--control-image", "control_image"], {"image": "control_image"})}


@pytest.mark.parametrize("kind", list(CASES))
def test_the_cli_result_equals_accelerate_with_the_same_inputs(kind, folders, pictures, tmp_path, capsys):
    from diffusers import DiffusionPipeline
    from PIL import Image

    flags, call = CASES[kind]
    argv = [a if a not in pictures else str(pictures[a]) for a in flags]
    out = tmp_path / "out"
    assert main(["sample", "--model", str(folders[kind]), "--prompt", "a cat", "--method", "sequential", "--steps",
                 "8", "--batch", "1", "--seed", "5", "--out", str(out), "--no-progress", "--json", *argv]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "sequential"
    pipe = DiffusionPipeline.from_pretrained(str(folders[kind]))
    pipe.set_progress_bar_config(disable=True)
    kw = {k: (Image.open(pictures[v]).convert("L" if k == "mask_image" else "RGB") if isinstance(v, str) else v)
          for k, v in call.items()}
    theirs = hasten.accelerate(pipe)(prompt="a cat", num_inference_steps=8, generator=torch.Generator().manual_seed(5),
                                     output_type="latent", **kw).hasten["latents"]
    assert (_latents(out) - theirs).abs().max() <= 1e-5
    recorded = json.loads((out / "result.json").read_text())
    assert recorded["rmse"] == 0.0


def _bad(tmp_path):
    from PIL import Image

    (tmp_path / "text.png").write_text("not an image")
    Image.new("L", (8, 8)).save(tmp_path / "small_mask.png")
    Image.new("RGB", (4097, 4096)).save(tmp_path / "huge.png")
    return tmp_path


@pytest.mark.parametrize("kind,flags,message", [
    ("sd", ["--image", "{image}"], "--image: StableDiffusionPipeline takes no such input"),
    ("sd-img2img", ["--image", "{image}", "--mask", "{image}"], "--mask: StableDiffusionImg2ImgPipeline"),
    ("sd-controlnet", ["--image", "{image}"], "--image: StableDiffusionControlNetPipeline takes no such input"),
    ("sd-img2img", ["--control-image", "{image}"], "--control-image: StableDiffusionImg2ImgPipeline"),
    ("sd-img2img", ["--image", "{bad}/text.png"], "--image {bad}/text.png: not an image"),
    ("sd-img2img", ["--image", "{bad}/missing.png"], "no such file"),
    ("sd-img2img", ["--image", "{bad}/huge.png"], "more than the 16777216 allowed"),
    ("sd-inpaint", ["--image", "{image}", "--mask", "{bad}/small_mask.png"], "--mask: the mask is 8x8"),
    ("sd-inpaint", ["--mask", "{image}"], "--mask needs --image"),
    ("sd-img2img", ["--image", "{image}", "--strength", "1.5"], "--strength must be in (0, 1]"),
    ("digits", ["--image", "{image}"], "apply to diffusers pipelines"),
])
def test_bad_inputs_are_refused_in_one_line_before_the_model_loads(kind, flags, message, folders, pictures,
                                                                    tmp_path, capsys, monkeypatch):
    import hasten.integrations.model as model

    bad = _bad(tmp_path)

    def no_load(*a, **k):
        raise AssertionError("the model loaded")

    monkeypatch.setattr(model, "load_pipeline", no_load)
    fill = {"image": pictures["image"], "bad": bad}
    argv = [f.format(**fill) for f in flags]
    for command in ("sample", "bench"):
        model_flag = kind if kind == "digits" else str(folders[kind])
        assert main([command, "--model", model_flag, "--out", str(tmp_path / "o"), "--no-progress", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message.format(bad=bad) in err, err
        assert not (tmp_path / "o").exists()


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    """A PNG that claims 30000x30000 pixels: refused without decoding a pixel."""
    import struct
    import zlib

    from hasten import HastenError
    from hasten.integrations.images import image_from_bytes

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    with pytest.raises(HastenError, match="900000000 pixels"):
        image_from_bytes(png, "image")
    assert np.asarray(image_from_bytes(_png_bytes(), "image")).shape == (4, 4, 3)


def _png_bytes():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    return buf.getvalue()
