"""The web console in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright; nothing is
downloaded) loads the page, a prompt is typed, Generate pressed, and the image that appears is the PNG with its
recipe. The screenshot it takes is the one docs/web.md shows (set FLUXBOT_WEB_SCREENSHOT=docs/web-console.png
to write it there)."""
from __future__ import annotations

import io
import os
import shutil

import pytest
from PIL import Image

from tests.support.web_console import RunningConsole

CHROMIUM = next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on this machine (Debian: apt-get "
                                "install chromium; .ci/run installs it)")
sync_api = pytest.importorskip("playwright.sync_api")

PROMPT = "a lighthouse on a cliff in a storm"
TIMEOUT_MS = 90_000  # a loaded 2-core machine: the page's first load and a tiny-model image


@pytest.fixture(scope="module")
def console(tmp_path_factory, tiny_model_dir):
    running = RunningConsole(tmp_path_factory.mktemp("web"), tiny_model_dir.parent).start()
    yield running
    running.stop()


@pytest.fixture
def page(console):
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: CI and containers run as root, where Chromium's sandbox cannot start
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        yield page
        browser.close()


def test_a_person_types_a_prompt_presses_generate_and_gets_the_png(console, page, tmp_path):
    # 1. the page loads, with the form
    page.goto(console.url)
    prompt = page.locator("#prompt textarea")
    prompt.wait_for()
    # 2. type a prompt and a seed, press Generate
    prompt.fill(PROMPT)
    page.locator("#seed input").fill("1234")
    page.locator("#size input").click()
    page.get_by_role("option", name="3:4 256×320").click()
    page.locator("button#generate").click()
    # 3. the job ends: its status, then the image
    sync_api.expect(page.locator("#status")).to_contain_text("done", timeout=TIMEOUT_MS)
    image = page.locator("#result img")
    image.wait_for()
    # 4. the image the browser shows is the PNG with its parameters (what A1111-style tools read)
    png = Image.open(io.BytesIO(page.request.get(image.get_attribute("src")).body()))
    assert png.size == (256, 320)
    assert png.text["parameters"].startswith(f"{PROMPT}\nSteps: 2,") and "Seed: 1234," in png.text["parameters"]
    assert page.locator("#parameters textarea").input_value() == png.text["parameters"]
    assert page.locator("#used-seed input").input_value() == "1234"
    # 5. the history shows it; the screenshot for docs/web.md
    sync_api.expect(page.locator("#history")).to_contain_text(f"seed 1234 · {PROMPT}")
    shot = tmp_path / "web-console.png"
    page.screenshot(path=str(shot), full_page=True)
    assert Image.open(shot).size[0] == 1280
    if os.environ.get("FLUXBOT_WEB_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["FLUXBOT_WEB_SCREENSHOT"])
