"""hasten serve on diffusers pipelines: prompts, sizes, approximate previews, video clips; and the conditional digits."""

import base64
import concurrent.futures
import io
import os
import sys

import httpx
import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("transformers")

import hasten  # noqa: E402
from hasten.testing.pipelines import save_tiny_pipeline  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from serve_helpers import Server, latents, png_pixels, sse_events  # noqa: E402


def test_a_prompted_pipeline_with_approximate_previews_answers_as_hasten_sample(tmp_path):
    folder = save_tiny_pipeline("sd", tmp_path / "tiny-sd")
    server = Server("--model", str(folder), "--preview", "approx", "--steps", "8", "--cores", "3")
    try:
        assert [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]] == ["tiny-sd"]  # no path
        body = {"prompt": "a red cat", "n": 2, "seed": 3, "size": "32x24",
                "hasten": {"latents": True, "guidance_scale": 4.0}}
        reply = server.post(body)
        assert reply.status_code == 200, reply.text
        ref = hasten.sample(str(folder), "chords", cores=3, steps=8, seed=3, batch=2, stop="none",
                            call={"prompt": "a red cat", "width": 32, "height": 24, "guidance_scale": 4.0})
        got = torch.stack([latents(d) for d in reply.json()["data"]])
        assert (got - ref.x).abs().max() <= 1e-5
        assert png_pixels(reply.json()["data"][0]["b64_json"]).shape == (24, 32, 3)
        with httpx.stream("POST", server.url + "/v1/images/generations", timeout=120,
                          json={**body, "n": 1, "stream": True}) as s:
            got = list(sse_events(s))
        assert [name for name, _ in got] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
        assert all(png_pixels(data["b64_json"]).shape == (24, 32, 3) for _, data in got)
        for bad, field in (({"size": "30x24"}, "size"), ({"size": "2048x2048"}, "size"),
                           ({"hasten": {"guidance_scale": 0.5}}, "hasten.guidance_scale")):
            refused = server.post({"prompt": "a cat", **bad})
            assert refused.status_code == 400 and refused.json()["error"]["param"] == field
    finally:
        assert server.stop() == 0, server.output()


def test_a_video_pipeline_answers_with_one_animated_png_per_sample(tmp_path):
    from PIL import Image

    folder = save_tiny_pipeline("wan", tmp_path / "tiny-wan")
    server = Server("--model", str(folder), "--steps", "4", "--cores", "2", "--size", "16x16", "--frames", "5")
    try:
        reply = server.post({"prompt": "a cat", "seed": 1})
        assert reply.status_code == 200, reply.text
        clip = Image.open(io.BytesIO(base64.b64decode(reply.json()["data"][0]["b64_json"])))
        assert clip.format == "PNG" and getattr(clip, "n_frames", 1) > 1
    finally:
        assert server.stop() == 0, server.output()


def test_the_conditional_digits_model_takes_a_digit_prompt_alone_or_batched_with_others():
    server = Server("--model", "digits-cond", "--steps", "20", "--cores", "3", "--max-batch", "8", "--queue", "8")
    try:
        reply = server.post({"prompt": "7", "n": 2, "seed": 5, "hasten": {"latents": True}})
        assert reply.status_code == 200, reply.text
        ref = hasten.sample("digits-cond", "chords", cores=3, steps=20, seed=5, batch=2, stop="none",
                            call={"prompt": "7"})
        got = torch.stack([latents(d) for d in reply.json()["data"]])
        assert (got - ref.x).abs().max() <= 1e-5
        for bad in ("a cat", "<b>7</b>"):
            refused = server.post({"prompt": bad})
            assert refused.status_code == 400 and refused.json()["error"]["param"] == "prompt"
        # requests with different digits (and none) queued together run as one batch, each its own prompt's result
        slow = {"prompt": "1", "seed": 0, "hasten": {"method": "sequential", "steps": 600}}
        quick = [{"prompt": p, "seed": s, "n": 1 + s % 2, "hasten": {"cores": 2, "steps": 10, "latents": True,
                                                                     "guidance_scale": 3.0}}
                 for p, s in (("2", 31), ("", 32), ("9", 33))]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            first = pool.submit(server.post, slow)
            server.wait_for(lambda h: h["running"] == 1, what="the slow request running")
            futures = [pool.submit(server.post, body) for body in quick]
            server.wait_for(lambda h: h["queue"] == 3 or h["running"] > 1, what="the quick requests queued")
            replies = [f.result() for f in futures]
            assert first.result().status_code == 200
        assert [r.json()["hasten"]["cost"]["batch_requests"] for r in replies] == [3, 3, 3]
        for body, reply in zip(quick, replies):
            ref = hasten.sample("digits-cond", "chords", cores=2, steps=10, seed=body["seed"], batch=body["n"],
                                stop="none", call={"prompt": body["prompt"], "guidance_scale": 3.0})
            got = torch.stack([latents(d) for d in reply.json()["data"]])
            assert (got - ref.x).abs().max() <= 1e-5, body
    finally:
        assert server.stop() == 0, server.output()
