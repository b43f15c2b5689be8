"""POST /v1/images/edits and --lora on a real server, through the official openai client (issue 27)."""

import concurrent.futures
import io
import json
import os
import sys

import httpx
import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("transformers")
pytest.importorskip("peft")
openai = pytest.importorskip("openai")

import hasten  # noqa: E402
from hasten.testing.lora import save_tiny_lora  # noqa: E402
from hasten.testing.pipelines import tiny_pipeline  # noqa: E402
from hasten.testing.workflows import tiny_images  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from serve_helpers import Server, latents, metric, png_pixels  # noqa: E402

STEPS, CORES = 4, 2


def close(a, b) -> bool:
    """Equal to float32 rounding: within 1e-5 of the latents' scale (they reach about 5 here)."""
    return bool((a - b).abs().max() <= 1e-5 * max(1.0, float(b.abs().max())))


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("edits")
    pipe = tiny_pipeline("sd-inpaint")
    pipe.save_pretrained(str(root / "tiny-inpaint"))
    loras = {"a": save_tiny_lora(pipe, root / "a.safetensors", seed=1),
             "b": save_tiny_lora(pipe, root / "b.safetensors", seed=2)}
    server = Server("--model", str(root / "tiny-inpaint"), "--method", "chords", "--steps", str(STEPS), "--cores",
                    str(CORES), "--lora", f"a={loras['a']}", "--lora", f"b={loras['b']}:0.5", "--max-batch", "4")
    for name, path in loras.items():  # the same network as the server's: both adapters loaded, none on by default
        pipe.load_lora_weights(str(path), adapter_name=name)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    images = tiny_images(32)
    yield server, client, pipe, loras, images
    assert server.stop() == 0, server.output()


def reference(pipe, images, seed, adapter=None):
    """What hasten.accelerate gives for the same edit (the adapter at its server scale)."""
    if adapter is None:
        pipe.disable_lora() if getattr(pipe.unet, "_hf_peft_config_loaded", False) else None
    else:
        pipe.enable_lora()
        pipe.set_adapters([adapter], [{"a": 1.0, "b": 0.5}[adapter]])
    out = hasten.accelerate(pipe, "chords", cores=CORES, stop="none")(
        prompt="a cat", image=images["image"], mask_image=images["mask_image"], height=32, width=32,
        num_inference_steps=STEPS, generator=torch.Generator().manual_seed(seed), output_type="latent")
    return out.hasten["latents"]


def edit(client, images, seed, lora=None, **kw):
    extra = {"latents": True, **({"lora": lora} if lora else {})}
    return client.images.edit(image=("image.png", png(images["image"]), "image/png"),
                              mask=("mask.png", png(images["mask_image"]), "image/png"), prompt="a cat",
                              extra_body={"seed": str(seed), "hasten": json.dumps(extra)}, **kw)


def test_models_list_the_adapters_and_an_edit_equals_accelerate_with_and_without_stream(served):
    server, client, pipe, loras, images = served
    assert httpx.get(server.url + "/v1/models").json()["data"][0]["hasten"]["loras"] == ["a", "b"]
    reply = edit(client, images, 3)
    item = reply.data[0].model_dump()
    assert close(latents(item), reference(pipe, images, 3))
    assert png_pixels(item["b64_json"]).shape == (32, 32, 3)
    stream = edit(client, images, 3, stream=True, partial_images=1)
    kinds = [event.type for event in stream]
    assert kinds == ["image_edit.partial_image", "image_edit.completed"]


def test_lora_batching_gives_each_request_its_own_adapter(served):
    server, client, pipe, loras, images = served
    asks = [("a", 5), ("b", 5), (None, 5), ("a", 6), ("b", 6)]
    with concurrent.futures.ThreadPoolExecutor(len(asks)) as pool:
        replies = list(pool.map(lambda ask: edit(client, images, ask[1], lora=ask[0]), asks))
    refs = {ask: reference(pipe, images, ask[1], ask[0]) for ask in asks}
    for ask, reply in zip(asks, replies):
        assert close(latents(reply.data[0].model_dump()), refs[ask]), ask
    assert (refs["a", 5] - refs["b", 5]).abs().max() > 1e-2  # the adapters differ
    bad = httpx.post(server.url + "/v1/images/generations", json={"prompt": "a cat", "hasten": {"lora": "/etc/x"}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "hasten.lora"


def _bomb() -> bytes:
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


def test_twenty_bad_uploads_are_refused_before_any_work(served):
    from PIL import Image

    server, client, pipe, loras, images = served
    good, mask = png(images["image"]), png(images["mask_image"])
    small_mask = png(Image.new("L", (8, 8)))
    huge = png(Image.new("RGB", (4100, 4100)))
    gif = io.BytesIO()
    images["image"].save(gif, format="GIF")
    cases = [
        ({"prompt": "a cat"}, {"mask": mask}, "image"),  # no image
        ({"prompt": "a cat"}, {"image": b"not an image", "mask": mask}, "image"),
        ({"prompt": "a cat"}, {"image": b"", "mask": mask}, "image"),
        ({"prompt": "a cat"}, {"image": good[:40], "mask": mask}, "image"),  # truncated PNG
        ({"prompt": "a cat"}, {"image": _bomb(), "mask": mask}, "image"),
        ({"prompt": "a cat"}, {"image": huge, "mask": mask}, "image"),
        ({"prompt": "a cat"}, {"image": good, "mask": small_mask}, "mask"),
        ({"prompt": "a cat"}, {"image": good}, "mask"),  # inpaint needs a mask
        ({"prompt": "a cat"}, {"image": good, "mask": b"garbage"}, "mask"),
        ({"prompt": "a cat"}, {"image": good, "mask": mask, "extra": good}, "extra"),
        ({"prompt": "a cat", "n": "many"}, {"image": good, "mask": mask}, "n"),
        ({"prompt": "a cat", "n": "99"}, {"image": good, "mask": mask}, "n"),
        ({"prompt": "a cat", "size": "31x32"}, {"image": good, "mask": mask}, "size"),
        ({"prompt": "a cat", "stream": "maybe"}, {"image": good, "mask": mask}, "stream"),
        ({"prompt": "a cat", "response_format": "url"}, {"image": good, "mask": mask}, "response_format"),
        ({"prompt": "a cat", "hasten": "{not json"}, {"image": good, "mask": mask}, "hasten"),
        ({"prompt": "a cat", "bogus": "1"}, {"image": good, "mask": mask}, "bogus"),
        ({"prompt": "a cat", "image": "text"}, {"mask": mask}, "image"),  # an image as text
        ({"prompt": "x" * 5000}, {"image": good, "mask": mask}, "prompt"),
    ]
    runs = metric(server, "hasten_run_seconds_count")
    for data, files, field in cases:
        reply = httpx.post(server.url + "/v1/images/edits", data=data,
                           files={k: (k + ".png", v, "image/png") for k, v in files.items()}, timeout=60)
        assert reply.status_code == 400 and reply.json()["error"]["param"] == field, (field, reply.text)
    wrong_type = httpx.post(server.url + "/v1/images/edits", json={"prompt": "a cat", "image": "x"})
    assert wrong_type.status_code == 400 and wrong_type.json()["error"]["param"] == "content-type"
    assert len(cases) + 1 == 20
    assert metric(server, "hasten_run_seconds_count") == runs  # no run started for any of them
    with pytest.raises(openai.BadRequestError, match="decompression bomb|pixels"):
        client.images.edit(image=("x.png", _bomb(), "image/png"), mask=("m.png", mask, "image/png"), prompt="a cat")
