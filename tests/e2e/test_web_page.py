"""The web page in headless Chromium: fill the form, submit, see the images appear."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.stack import Stack

pytestmark = pytest.mark.e2e
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is not installed (make test installs it with apt-get)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def test_fill_submit_and_see_the_images(browser, stack: Stack, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1100, "height": 1300})
    page.goto(stack.api_url + "/")
    page.get_by_label("Model").select_option("tiny-sd")
    page.get_by_label("Prompt", exact=True).fill("a red fox in the snow")
    page.get_by_label("Negative prompt").fill("blurry")
    page.get_by_label("Number of images").fill("3")
    page.get_by_label("Steps").fill("12")
    page.get_by_label("Seed").fill("42")
    assert "curl -s -XPOST" in page.locator("#curl").inner_text()
    assert '"seed":42' in page.locator("#curl").inner_text()
    page.get_by_role("button", name="Generate").click()

    images = page.locator("#gallery img")
    images.nth(2).wait_for(timeout=60_000)
    page.wait_for_function(
        "Array.from(document.querySelectorAll('#gallery img')).every(i => i.complete "
        "&& i.naturalWidth > 0)", timeout=30_000)
    captions = page.locator("#gallery figcaption").all_inner_texts()
    assert captions == ["seed 42 · 64×64", "seed 43 · 64×64", "seed 44 · 64×64"]
    assert "Done" in page.locator("#status").inner_text()
    shot = tmp_path / "kiln-web.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_bad_input_shows_the_field(browser, stack: Stack) -> None:
    page = browser.new_page()
    page.goto(stack.api_url + "/")
    page.get_by_label("Model").select_option("tiny-sd")
    page.get_by_label("Width").fill("1024")  # above tiny-sd's max_size
    page.get_by_role("button", name="Generate").click()
    error = page.get_by_role("alert")
    error.wait_for(timeout=10_000)
    assert "width" in error.inner_text()
