"""A real browser on the page: headless Chromium (Debian's package) driven by Playwright.

Skipped only when Chromium or Playwright is not installed (``.ci/run`` installs both); the reason says so.
``HASTEN_SERVE_SCREENSHOT=PATH`` also saves the screenshot there (docs/serve_page.png was made so).
"""

import os
import shutil
import sys

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

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
        profile = tmp_path_factory.mktemp("chromium-profile")
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1000, "height": 560})
        yield context
        context.close()


@pytest.fixture(scope="module")
def server():
    s = Server()  # the default model: the conditional digits, which takes a digit as its prompt
    yield s
    assert s.stop() == 0, s.output()


def test_the_page_generates_shows_previews_then_the_exact_final(browser, server, tmp_path):
    page = browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('method').options.length > 0")
    page.select_option("#method", "chords")
    page.fill("#cores", "6")
    page.fill("#steps", "50")
    page.fill("#seed", "3")
    page.fill("#prompt", "7")
    page.click("#generate")
    page.wait_for_selector("figure.final", timeout=60_000)
    assert page.inner_text("#shown-prompt") == "7"
    figures = page.eval_on_selector_all("#previews figure", "fs => fs.map(f => [f.className, f.innerText])")
    kinds = [kind for kind, _ in figures]
    assert kinds.count("preview") >= 2 and kinds[-1] == "final" and kinds.count("final") == 1, figures
    assert all("round" in text and " s" in text for _, text in figures)
    assert "= sequential sampling" in figures[-1][1]
    rounds = page.eval_on_selector_all("#previews figure", "fs => fs.map(f => Number(f.dataset.round))")
    assert rounds == sorted(rounds)  # previews land in order of rising round, the final last
    assert page.eval_on_selector_all("#previews img", "is => is.every(i => i.complete && i.naturalWidth == 16)")
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 5000
    if os.environ.get("HASTEN_SERVE_SCREENSHOT"):
        shutil.copy(shot, os.environ["HASTEN_SERVE_SCREENSHOT"])
    page.close()


def test_a_prompt_is_shown_as_text_never_as_html(browser, server):
    page = browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('method').options.length > 0")
    attack = '<img src=x id=injected onerror="document.title=\'pwned\'">'
    page.fill("#prompt", attack)
    page.click("#generate")
    page.wait_for_selector("#status.error")  # not a digit: the server refuses the prompt
    assert page.inner_text("#shown-prompt") == attack
    assert page.query_selector("#injected") is None and page.title() != "pwned"
    assert "prompt" in page.inner_text("#status")
    page.close()
