"""``output_format`` and ``output_compression`` through every door, on the real stack.

Each test reads the image bytes' magic number and the Content-Type the S3 server
stored, and checks that the key's extension names the format.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import requests
from openai import OpenAI

from app.client import Kiln
from harness.http import KilnHTTP
from harness.stack import Stack

MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff"}


def is_format(data: bytes, fmt: str) -> bool:
    if fmt == "webp":
        return data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    return data.startswith(MAGIC[fmt])


def stored(stack: Stack, key: str) -> tuple[bytes, str]:
    """The object's bytes and Content-Type, as the S3 server keeps them."""
    obj = stack.s3().get_object(Bucket=stack.env["KILN_S3_BUCKET"], Key=key)
    return obj["Body"].read(), obj["ContentType"]


def check_images(stack: Stack, job: dict, fmt: str) -> None:
    assert job["status"] == "succeeded", job.get("error")
    assert job["params"]["output_format"] == fmt
    for image in job["images"]:
        assert image["format"] == fmt and image["key"].endswith(f".{fmt}")
        data, content_type = stored(stack, image["key"])
        assert is_format(data, fmt) and content_type == f"image/{fmt}"
        assert is_format(requests.get(image["url"], timeout=30).content, fmt)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_native_door(stack: Stack, api: KilnHTTP, fmt: str) -> None:
    job = api.run(prompt="a red fox", model="tiny-sd", steps=2, seed=1, n=2, output_format=fmt)
    check_images(stack, job, fmt)


def test_native_door_default_is_png_and_compression_shrinks(stack: Stack, api: KilnHTTP) -> None:
    check_images(stack, api.run(prompt="a red fox", model="tiny-sd", steps=2, seed=3), "png")
    sizes = []
    for quality in (100, 5):
        job = api.run(
            prompt="a red fox",
            model="tiny-sd",
            steps=2,
            seed=3,
            width=128,
            height=128,
            output_format="jpeg",
            output_compression=quality,
        )
        check_images(stack, job, "jpeg")
        assert job["params"]["output_compression"] == quality
        sizes.append(len(stored(stack, job["images"][0]["key"])[0]))
    assert sizes[0] > sizes[1]


def test_native_door_names_bad_fields(api: KilnHTTP) -> None:
    for body, field in (
        ({"output_format": "gif"}, "output_format"),
        ({"output_format": "jpeg", "output_compression": 101}, "output_compression"),
        ({"output_compression": 50}, "output_compression"),
    ):
        r = api.post("/v1/jobs", json={"prompt": "x", "model": "tiny-sd", **body})
        assert r.status_code == 422, body
        assert field in r.json()["error"]["fields"], r.text


def test_openai_door(stack: Stack, api: KilnHTTP) -> None:
    client = OpenAI(base_url=f"{stack.api_url}/v1", api_key="kiln")
    resp = client.images.generate(
        model="tiny-sd",
        prompt="a red fox",
        size="64x64",
        response_format="b64_json",
        output_format="webp",
        output_compression=80,
        extra_body={"steps": 2},
    )
    assert is_format(base64.b64decode(resp.data[0].b64_json or ""), "webp")
    assert resp.output_format == "webp"
    resp = client.images.generate(
        model="tiny-sd",
        prompt="a red fox",
        size="64x64",
        output_format="jpeg",
        extra_body={"steps": 2},
    )
    key = "generated/" + (resp.data[0].url or "").split("/generated/", 1)[1].split("?", 1)[0]
    data, content_type = stored(stack, key)
    assert key.endswith(".jpeg") and content_type == "image/jpeg" and is_format(data, "jpeg")
    r = api.post(
        "/v1/images/generations",
        json={"prompt": "x", "model": "tiny-sd", "output_format": "bmp"},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "output_format"


def test_classic_door(stack: Stack, api: KilnHTTP) -> None:
    r = api.post(
        "/generate",
        json={"prompt": "a red fox", "model": "tiny-sd", "steps": 10, "output_format": "jpeg"},
    )
    assert r.status_code == 200, r.text
    job = api.wait(r.json()["job_id"])
    check_images(stack, job, "jpeg")
    classic = api.get(f"/job/{job['id']}").json()
    assert is_format(requests.get(classic["image_url"], timeout=30).content, "jpeg")
    r = api.post("/generate", json={"prompt": "x", "model": "tiny-sd", "output_format": "tiff"})
    assert r.status_code == 422 and "output_format" in r.json()["error"]["fields"]


def test_celery_task_kwargs(stack: Stack, api: KilnHTTP) -> None:
    from tasks.messaging.app import make_celery

    app = make_celery(stack.settings)
    res = app.send_task(
        "kiln.generate",
        kwargs={
            "prompt": "a red fox",
            "model": "tiny-sd",
            "steps": 2,
            "output_format": "webp",
            "output_compression": 60,
        },
        queue="gen.tiny-sd",
    )
    record = res.get(timeout=120)
    check_images(stack, api.get(f"/v1/jobs/{record['id']}").json(), "webp")


def test_python_client(stack: Stack) -> None:
    result = Kiln(stack.api_url).generate(
        "a red fox", model="tiny-sd", steps=2, n=2, output_format="jpeg", output_compression=70
    )
    assert result.formats == ["jpeg", "jpeg"]
    assert all(is_format(data, "jpeg") for data in result.images)


def test_cli_flag(stack: Stack, tmp_path: Path) -> None:
    out = stack.run_kiln(
        *("generate", "a red fox", "--model", "tiny-sd", "--seed", "7", "--steps", "2"),
        *("--output-format", "webp", "--output-compression", "75"),
        *("--out", str(tmp_path), "--url", stack.api_url),
    )
    assert out.returncode == 0, out.stderr
    (path,) = tmp_path.iterdir()
    assert path.name.endswith("-7.webp") and is_format(path.read_bytes(), "webp")
    bad = stack.run_kiln("generate", "x", "--output-format", "gif", "--url", stack.api_url)
    assert bad.returncode != 0 and "output-format" in bad.stderr
