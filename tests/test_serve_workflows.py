"""hasten serve on image-input pipelines (issue 27): an img2img pipeline starts (its probe passes an image)."""

import os
import sys

import httpx
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("transformers")

from hasten.testing.pipelines import save_tiny_pipeline  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from serve_helpers import Server  # noqa: E402


def test_a_saved_img2img_pipeline_starts(tmp_path):
    folder = save_tiny_pipeline("sd-img2img", tmp_path / "tiny-img2img")
    server = Server("--model", str(folder), "--steps", "4", "--cores", "2")
    try:
        assert server.health()["status"] == "ok", server.output()
        assert [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]] == ["tiny-img2img"]
    finally:
        assert server.stop() == 0, server.output()
