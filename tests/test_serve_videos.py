"""/v1/videos on a real server with the official openai client (issue 27): create, retrieve, download, cancel."""

import os
import sys
import time

import httpx
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("transformers")
pytest.importorskip("av")
openai = pytest.importorskip("openai")

from hasten.mp4 import decode_mp4  # noqa: E402
from hasten.testing.pipelines import save_tiny_pipeline  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from serve_helpers import Server, metric  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = save_tiny_pipeline("wan", tmp_path_factory.mktemp("videos") / "tiny-wan")
    server = Server("--model", str(folder), "--steps", "4", "--cores", "2", "--size", "16x16", "--frames", "5")
    yield server
    assert server.stop() == 0, server.output()


def wait(client, video_id, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        video = client.videos.retrieve(video_id)
        if video.status in ("completed", "failed"):
            return video
        time.sleep(0.2)
    raise AssertionError(f"video {video_id} did not finish")


def test_a_video_job_is_created_retrieved_and_downloaded_as_mp4(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    created = client.videos.create(prompt="a cat", extra_body={"seed": "1"})
    assert created.status in ("queued", "in_progress") and created.id.startswith("video_")
    done = wait(client, created.id)
    assert done.status == "completed" and done.progress == 100, done
    mp4 = client.videos.download_content(created.id).read()
    frames = decode_mp4(mp4)
    assert frames.shape == (5, 16, 16, 3)
    assert httpx.get(f"{server.url}/v1/videos/video_nope").status_code == 404
    image_only = httpx.post(server.url + "/v1/videos", json={"prompt": "a cat", "bogus": 1})
    assert image_only.status_code == 400 and image_only.json()["error"]["param"] == "bogus"


def test_a_cancelled_video_job_stops_its_run_and_frees_the_device(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    cancelled = metric(server, "hasten_cancelled")
    long = httpx.post(server.url + "/v1/videos", json={"prompt": "a cat", "hasten": {"steps": 400}}).json()
    server.wait_for(lambda s: s["running"] == 1, 60, "the long job to start")
    reply = httpx.delete(f"{server.url}/v1/videos/{long['id']}")
    assert reply.status_code == 200 and reply.json()["deleted"] is True
    server.wait_for(lambda s: s["running"] == 0, 30, "the run to stop")
    assert metric(server, "hasten_cancelled") == cancelled + 1
    assert httpx.get(f"{server.url}/v1/videos/{long['id']}").status_code == 404
    after = client.videos.create(prompt="a dog")  # the device is free again
    assert wait(client, after.id).status == "completed"
