"""Image inputs through the real stack: img2img and inpainting on the native and OpenAI
doors, batching apart from text jobs, and every bad input named."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from openai import OpenAI
from PIL import Image

from harness.hold import device_held
from harness.http import KilnHTTP, fetch_image
from harness.stack import Stack

JOB = {"model": "tiny-sd", "steps": 3}


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


def picture(size: tuple[int, int] = (64, 64)) -> Image.Image:
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.uint8)
    y = np.linspace(0, 255, h, dtype=np.uint8)
    rgb = np.stack([np.tile(x, (h, 1)), np.tile(y[:, None], (1, w)), np.full((h, w), 80)], -1)
    return Image.fromarray(rgb.astype(np.uint8))


def openai_mask(size: tuple[int, int] = (64, 64)) -> Image.Image:
    """OpenAI's convention: transparent pixels are the ones to redraw (the centre)."""
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (16, 16, 48, 48))
    return mask


def test_the_openai_sdk_edits_with_a_png_and_a_mask(stack: Stack) -> None:
    client = OpenAI(base_url=f"{stack.api_url}/v1", api_key="kiln")
    image = png(picture())
    b64 = client.images.edit(
        model="tiny-sd",
        image=("in.png", image, "image/png"),
        mask=("mask.png", png(openai_mask()), "image/png"),
        prompt="a window",
        response_format="b64_json",
        extra_body={"steps": 3, "seed": 1},
    )
    out = Image.open(io.BytesIO(base64.b64decode(b64.data[0].b64_json)))
    meta = json.loads(out.text["kiln"])
    assert meta["mode"] == "inpaint" and meta["image_sha256"]
    pixels, original = np.asarray(out.convert("RGB")), np.asarray(picture())
    keep = np.ones((64, 64), bool)
    keep[16:48, 16:48] = False
    assert np.array_equal(pixels[keep], original[keep])

    url = client.images.edit(
        model="tiny-sd", image=("in.png", image, "image/png"), prompt="a kite", n=2
    )
    assert len(url.data) == 2 and fetch_image(url.data[0].url).size == (64, 64)


def test_an_image_sets_the_size_rounded_to_the_model_multiple(api: KilnHTTP) -> None:
    done = api.run(**JOB, prompt="a fox", image=data_url(png(picture((100, 70)))), seed=2)
    assert done["status"] == "succeeded", done
    assert (done["params"]["width"], done["params"]["height"]) == (96, 64)
    assert done["params"]["image"]["key"] == f"inputs/{done['id']}/image.png"
    assert len(done["params"]["image"]["sha256"]) == 64


def test_img2img_and_text_jobs_never_share_a_call_and_img2img_jobs_do(
    stack: Stack, api: KilnHTTP
) -> None:
    image = data_url(png(picture()))
    jobs = [dict(JOB, prompt=f"a fox {i}", image=image, strength=0.6, seed=i) for i in range(4)]
    jobs.append(dict(JOB, prompt="a fox", seed=9))
    # A job holds the device, so the five wait in the worker together.
    with device_held(api, stack, model="tiny-sd", size=128, steps=150) as sent:
        with ThreadPoolExecutor(len(jobs)) as pool:
            submitted = list(pool.map(lambda j: api.submit(**j), jobs))
        sent.extend(j["id"] for j in submitted)
    done = [api.wait(j["id"]) for j in submitted]
    assert all(d["status"] == "succeeded" for d in done), done
    image_batches = {d["batch_id"] for d in done[:4]}
    assert done[4]["batch_id"] not in image_batches
    assert len(image_batches) < 4 and max(d["batch_size"] for d in done[:4]) > 1


def png_declaring(width: int, height: int) -> bytes:
    data = bytearray(png(Image.new("RGB", (1, 1))))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"image": data_url(b"not an image")}, "image"),
        ({"image": data_url(png_declaring(100_000, 100_000))}, "image"),
        ({"image": "data:image/png;base64,!!!"}, "image"),
        ({"image": "ftp://example.com/x.png"}, "image"),
        ({"image": "http://127.0.0.1:9/x.png"}, "image"),
        ({"image": {"job": "no-such-job"}}, "image"),
        ({"image": {"key": "inputs/x/image.png"}}, "image"),
        ({"mask": data_url(png(picture()))}, "mask"),
        ({"image": data_url(png(picture())), "mask": data_url(png(picture((32, 32))))}, "mask"),
        ({"image": data_url(png(picture())), "strength": 1.5}, "strength"),
        ({"strength": 0.5}, "strength"),
    ],
)
def test_each_bad_input_is_named(api: KilnHTTP, extra: dict, field: str) -> None:
    r = api.post("/v1/jobs", json={**JOB, "prompt": "x", **extra})
    assert r.status_code in (404, 422), r.text
    assert field in r.json()["error"]["fields"], r.json()


def test_a_multipart_form_on_post_jobs_inpaints_with_file_parts(api: KilnHTTP) -> None:
    """The same fields as the JSON body, as a form: image and mask as file parts."""
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))  # white: repaint
    form = {"prompt": "a window", "model": "tiny-sd", "steps": "3", "seed": "5"}
    files = {"image": ("in.png", png(picture()), "image/png"), "mask": ("m.png", png(mask))}
    headers = {"Idempotency-Key": "form-1"}
    r = api.http.post(f"{api.base_url}/v1/jobs", data=form, files=files, headers=headers)
    assert r.status_code == 202, r.text
    done = api.wait(r.json()["id"])
    assert done["status"] == "succeeded", done
    assert done["params"]["mode"] == "inpaint" and done["params"]["seed"] == 5
    pixels = np.asarray(fetch_image(done["images"][0]["url"]).convert("RGB"))
    keep = np.asarray(mask) == 0
    assert np.array_equal(pixels[keep], np.asarray(picture())[keep])

    again = api.http.post(f"{api.base_url}/v1/jobs", data=form, files=files, headers=headers)
    assert again.status_code == 200 and again.json()["id"] == done["id"], again.text
    flipped = picture().transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    other = {**files, "image": ("in.png", png(flipped), "image/png")}
    changed = api.http.post(f"{api.base_url}/v1/jobs", data=form, files=other, headers=headers)
    assert changed.status_code == 409, changed.text

    bad = api.http.post(f"{api.base_url}/v1/jobs", data={**form, "steps": "many"}, files=files)
    assert bad.status_code == 422 and "steps" in bad.json()["error"]["fields"], bad.text
    text = api.http.post(f"{api.base_url}/v1/jobs", data="prompt=x", headers=TEXT_PLAIN)
    assert text.status_code == 415 and "multipart/form-data" in text.json()["error"]["message"]


TEXT_PLAIN = {"Content-Type": "text/plain"}


def test_a_50_mb_upload_is_413_naming_the_limit(api: KilnHTTP) -> None:
    body = b'{"prompt": "x", "image": "data:image/png;base64,' + b"A" * (50 * 2**20) + b'"}'
    r = requests.post(
        f"{api.base_url}/v1/jobs",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert r.status_code == 413
    assert "KILN_MAX_IMAGE_BODY_BYTES" in r.json()["error"]["message"]


def test_the_celery_door_takes_an_input_by_bucket_key(stack: Stack) -> None:
    from tasks.jobs.storage import Storage
    from tasks.messaging.app import make_celery

    Storage(stack.settings).put("inputs/from-a-service/image.png", png(picture((80, 64))))
    app = make_celery(stack.settings)
    result = app.send_task(
        "kiln.generate",
        queue="gen.tiny-sd",
        kwargs={
            "prompt": "a fox",
            "model": "tiny-sd",
            "steps": 3,
            "image": {"key": "inputs/from-a-service/image.png"},
            "strength": 0.5,
        },
    ).get(timeout=120)
    assert result["status"] == "succeeded", result
    assert result["params"]["mode"] == "img2img"
    assert (result["images"][0]["width"], result["images"][0]["height"]) == (80, 64)


def test_the_celery_door_holds_a_size_an_image_set_to_the_models_rules(stack: Stack) -> None:
    """tiny-sd's largest side is 512: an image 640 wide and no size asked is refused,
    naming ``image``, as at the REST door, and never runs."""
    from tasks.jobs.storage import Storage
    from tasks.messaging.app import make_celery

    Storage(stack.settings).put("inputs/from-a-service/wide.png", png(picture((640, 64))))
    job = {"prompt": "a fox", "model": "tiny-sd", "steps": 3, "strength": 0.5}
    image = {"key": "inputs/from-a-service/wide.png"}
    result = (
        make_celery(stack.settings)
        .send_task("kiln.generate", queue="gen.tiny-sd", kwargs={**job, "image": image})
        .get(timeout=120)
    )
    assert result["status"] == "failed" and "image" in result["error"]["fields"], result
    assert result["images"] == [] and result["attempts"] == 0


def test_the_openai_sdk_makes_variations_of_an_image(stack: Stack) -> None:
    client = OpenAI(base_url=f"{stack.api_url}/v1", api_key="kiln")
    resp = client.images.create_variation(
        model="tiny-sd",
        image=("in.png", png(picture()), "image/png"),
        n=2,
        response_format="b64_json",
        extra_body={"steps": 3, "seed": 4},
    )
    assert len(resp.data) == 2
    meta = json.loads(Image.open(io.BytesIO(base64.b64decode(resp.data[0].b64_json))).text["kiln"])
    assert meta["mode"] == "img2img" and meta["prompt"] == ""
