"""The web page in headless Chromium: fill the form, submit, see the images appear."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest

from app.auth import hash_key, new_key
from harness.stack import SECRETS, Stack

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


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
        "&& i.naturalWidth > 0)",
        timeout=30_000,
    )
    captions = page.locator("#gallery figcaption").all_inner_texts()
    assert captions == ["seed 42 · 64×64", "seed 43 · 64×64", "seed 44 · 64×64"]
    assert "Done" in page.locator("#status").inner_text()
    shot = tmp_path / "kiln-web.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


@pytest.fixture(scope="module")
def keyed_api(stack: Stack) -> tuple[str, dict[str, str]]:
    """A second API process on the session stack, with API keys on."""
    keys = {"painter": new_key(), "viewer": new_key()}
    SECRETS.extend(keys.values())
    spec = (
        f"painter:{hash_key(keys['painter'])}:generate+read,viewer:{hash_key(keys['viewer'])}:read"
    )
    return stack.start_api(env={"KILN_AUTH": "on", "KILN_API_KEYS": spec}), keys


def test_with_keys_on_the_page_asks_for_a_key_then_generates(
    browser, keyed_api: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, keys = keyed_api
    page = browser.new_page(viewport={"width": 1100, "height": 1300})
    page.goto(url + "/")
    error = page.locator("#key-error")
    error.wait_for(timeout=10_000)
    assert "needs an API key" in error.inner_text()
    assert page.locator("#model option").count() == 0
    page.screenshot(path=str(tmp_path / "kiln-web-asks-for-a-key.png"), full_page=True)
    page.get_by_label("API key", exact=True).fill("kiln_not-a-key")
    page.get_by_role("button", name="Use this key").click()
    page.wait_for_function("document.querySelector('#key-error').textContent.includes('refused')")
    assert "invalid API key" in error.inner_text()
    page.get_by_label("API key", exact=True).fill(keys["painter"])
    page.get_by_role("button", name="Use this key").click()
    page.locator("#model option[value='tiny-sd']").wait_for(state="attached", timeout=10_000)
    assert page.locator("#key-form").is_hidden()
    page.get_by_label("Model").select_option("tiny-sd")
    page.get_by_label("Number of images").fill("2")
    page.get_by_label("Steps").fill("4")
    page.get_by_label("Seed").fill("21")
    assert "$KILN_API_KEY" in page.locator("#curl").inner_text()
    assert keys["painter"] not in page.content()
    page.get_by_role("button", name="Generate").click()
    page.locator("#gallery img").nth(1).wait_for(timeout=60_000)
    assert page.locator("#gallery figcaption").all_inner_texts() == [
        "seed 21 · 64×64",
        "seed 22 · 64×64",
    ]
    assert "Done" in page.locator("#status").inner_text()
    # The key lives in this tab's session storage only.
    assert page.evaluate("sessionStorage.getItem('kiln-api-key')") == keys["painter"]
    assert page.evaluate("localStorage.length") == 0 and page.context.cookies() == []
    shot = tmp_path / "kiln-web-key.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_a_key_without_the_scope_sees_why(browser, keyed_api: tuple[str, dict[str, str]]) -> None:
    url, keys = keyed_api
    page = browser.new_page()
    page.goto(url + "/")
    page.get_by_label("API key", exact=True).fill(keys["viewer"])
    page.get_by_role("button", name="Use this key").click()
    page.locator("#model option[value='tiny-sd']").wait_for(state="attached", timeout=10_000)
    page.get_by_role("button", name="Generate").click()
    alert = page.locator("#error")
    alert.wait_for(timeout=10_000)
    assert "lacks the 'generate' scope" in alert.inner_text()


def test_without_an_event_stream_the_page_polls(browser, stack: Stack) -> None:
    page = browser.new_page()
    polled: list[str] = []
    page.route("**/v1/jobs/*/events", lambda route: route.fulfill(status=404))
    page.on("request", lambda r: polled.append(r.url) if "/v1/jobs/" in r.url else None)
    page.goto(stack.api_url + "/")
    page.get_by_label("Model").select_option("tiny-sd")
    page.get_by_label("Number of images").fill("1")
    page.get_by_label("Seed").fill("9")
    page.get_by_role("button", name="Generate").click()
    page.locator("#gallery img").first.wait_for(timeout=60_000)
    assert page.locator("#gallery figcaption").all_inner_texts() == ["seed 9 · 64×64"]
    assert any(not url.endswith("/events") for url in polled)  # GET /v1/jobs/<id>


def test_bad_input_shows_the_field(browser, stack: Stack) -> None:
    page = browser.new_page()
    page.goto(stack.api_url + "/")
    page.get_by_label("Model").select_option("tiny-sd")
    page.get_by_label("Width").fill("1024")  # above tiny-sd's max_size
    page.get_by_role("button", name="Generate").click()
    error = page.get_by_role("alert")
    error.wait_for(timeout=10_000)
    assert "width" in error.inner_text()


def test_api_docs_render_offline(browser, stack: Stack, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1100, "height": 1300})
    outside: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(stack.api_url) else outside.append(r.url))
    page.goto(stack.api_url + "/docs")
    page.locator(".opblock").nth(9).wait_for(timeout=30_000)
    assert page.locator(".opblock-summary-path", has_text="/v1/images/generations").count()
    page.locator(".opblock-summary", has_text="/generate").first.click()
    page.locator(".opblock-body .example").first.wait_for(timeout=10_000)  # the schema example
    assert "a red fox" in page.locator(".opblock-body").first.inner_text()
    page.screenshot(path=str(tmp_path / "kiln-docs.png"), full_page=True)
    assert not [u for u in outside if not u.startswith("data:")]  # no CDN


def gradient(path: Path, size: tuple[int, int] = (64, 64)) -> Path:
    import numpy as np
    from PIL import Image

    w, h = size
    x = np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1))
    y = np.tile(np.linspace(0, 255, h, dtype=np.uint8)[:, None], (1, w))
    Image.fromarray(np.stack([x, y, np.full((h, w), 90, np.uint8)], -1)).save(path)
    return path


def test_start_from_an_image_and_see_the_result_beside_it(
    browser, stack: Stack, tmp_path: Path
) -> None:
    import json

    page = browser.new_page(viewport={"width": 1100, "height": 1500})
    page.goto(stack.api_url + "/")
    page.get_by_label("Model").select_option("tiny-sd")
    page.get_by_label("Prompt", exact=True).fill("the same fox, at night")
    page.get_by_label("Number of images").fill("1")
    page.get_by_label("Steps").fill("4")
    page.get_by_label("Seed").fill("5")
    strength = page.get_by_label("Strength")
    assert strength.is_disabled()  # nothing to redraw yet
    page.get_by_label("Image", exact=True).set_input_files(str(gradient(tmp_path / "start.png")))
    page.locator("#image-preview").wait_for(timeout=10_000)
    assert page.get_by_label("Width").input_value() == ""  # the size comes from the image
    assert page.locator("#mask-preview").is_hidden()  # no mask chosen
    assert strength.is_enabled()
    strength.fill("0.4")
    assert page.locator("#strength-value").inner_text() == "0.40"
    assert '"strength":0.4' in page.locator("#curl").inner_text()
    assert '"image":"data:image/png;base64,..."' in page.locator("#curl").inner_text()
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/v1/jobs")) as sent:
        page.get_by_role("button", name="Generate").click()
    body = json.loads(sent.value.post_data or "{}")
    assert body["image"].startswith("data:image/png;base64,") and body["strength"] == 0.4
    assert "mask" not in body and "width" not in body

    page.locator("#gallery figure:not(.input) img").first.wait_for(timeout=60_000)
    page.wait_for_function(
        "Array.from(document.querySelectorAll('#gallery img')).every(i => i.complete "
        "&& i.naturalWidth > 0)",
        timeout=30_000,
    )
    figures = page.locator("#gallery figure")
    assert figures.count() == 2
    assert figures.nth(0).get_attribute("class") == "input"
    assert page.locator("#gallery figcaption").all_inner_texts() == [
        "input · img2img · strength 0.4",
        "seed 5 · 64×64",
    ]
    given, result = figures.nth(0).bounding_box(), figures.nth(1).bounding_box()
    assert given and result
    assert given["x"] + given["width"] <= result["x"]  # the result to the right of its input
    assert abs(given["y"] - result["y"]) < 1  # on the same row
    assert "Done" in page.locator("#status").inner_text()
    shot = tmp_path / "kiln-web-image.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_a_dropped_mask_of_another_size_is_named(browser, stack: Stack, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1100, "height": 1500})
    page.goto(stack.api_url + "/")
    page.get_by_label("Model").select_option("tiny-sd")
    page.get_by_label("Image", exact=True).set_input_files(str(gradient(tmp_path / "in.png")))
    page.locator("#image-preview").wait_for(timeout=10_000)
    # The mask is dropped on its zone, as a file dragged from the desktop would be.
    mask = gradient(tmp_path / "mask.png", (32, 32)).read_bytes()
    dropped = page.evaluate_handle(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "mask.png", { type: "image/png" }));
            return dt;
        }""",
        base64.b64encode(mask).decode(),
    )
    page.dispatch_event("#mask-drop", "drop", {"dataTransfer": dropped})
    page.locator("#mask-preview").wait_for(timeout=10_000)
    assert '"mask":"data:image/png;base64,..."' in page.locator("#curl").inner_text()
    page.get_by_role("button", name="Generate").click()
    error = page.locator("#error")
    error.wait_for(timeout=10_000)
    assert "mask: must be 64x64 like the image" in error.inner_text()
    assert "Rejected" in page.locator("#status").inner_text()
    # A file that is not an image is refused in the page, naming the field.
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    page.get_by_label("Image", exact=True).set_input_files(str(text))
    page.wait_for_function("document.querySelector('#error').textContent.includes('notes.txt')")
    assert "image: PNG, JPEG or WebP" in error.inner_text()
