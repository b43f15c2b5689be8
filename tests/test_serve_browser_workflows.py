"""The page on image-input and video models, in headless Chromium (issue 27): an image picker, an MP4 player."""

import os
import shutil
import sys

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("transformers")

from hasten.testing.pipelines import save_tiny_pipeline  # noqa: E402
from hasten.testing.workflows import tiny_images  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from serve_helpers import Server  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.skip("Chromium is not installed (apt-get install -y chromium chromium-driver; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1000, "height": 560})
        yield context
        context.close()


def test_the_page_picks_an_image_and_a_mask_for_an_inpaint_model(browser, tmp_path):
    folder = save_tiny_pipeline("sd-inpaint", tmp_path / "tiny-inpaint")
    images = tiny_images(32)
    images["image"].save(tmp_path / "image.png")
    images["mask_image"].save(tmp_path / "mask.png")
    server = Server("--model", str(folder), "--steps", "4", "--cores", "2")
    try:
        page = browser.new_page()
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('method').options.length > 0")
        assert page.is_visible("#image") and page.is_visible("#mask")
        page.set_input_files("#image", str(tmp_path / "image.png"))
        page.set_input_files("#mask", str(tmp_path / "mask.png"))
        page.fill("#prompt", "a cat")
        page.fill("#steps", "4")
        page.click("#generate")
        page.wait_for_selector("figure.final", timeout=60_000)
        size = page.eval_on_selector("figure.final img", "i => [i.naturalWidth, i.naturalHeight]")
        assert size == [32, 32], size
    finally:
        assert server.stop() == 0, server.output()


def test_the_page_plays_the_mp4_of_a_video_model(browser, tmp_path):
    pytest.importorskip("av")
    folder = save_tiny_pipeline("wan", tmp_path / "tiny-wan")
    server = Server("--model", str(folder), "--steps", "4", "--cores", "2", "--size", "16x16", "--frames", "5")
    try:
        page = browser.new_page()
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('method').options.length > 0")
        assert not page.is_visible("#image")
        page.fill("#prompt", "a cat")
        page.fill("#steps", "4")
        page.click("#generate")
        page.wait_for_selector("#video[src]", state="attached", timeout=60_000)
        for _ in range(100):  # the metadata decoded by Chromium's own H.264 decoder
            if page.eval_on_selector("#video", "v => v.readyState") >= 1:
                break
            page.wait_for_timeout(100)
        state = page.eval_on_selector("#video", "v => [v.hidden, v.videoWidth, v.videoHeight, v.duration]")
        assert state[:3] == [False, 16, 16] and state[3] > 0, state
        assert page.inner_text("#status").startswith("done: 5 frames")
    finally:
        assert server.stop() == 0, server.output()
