"""Output formats: the job fields every door shares, and the bytes the worker writes."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from config.errors import InvalidInput
from config.settings import DEFAULT_MODELS_FILE
from pipelines.registry import Registry
from tasks.jobs.records import new_record, task_kwargs
from tasks.jobs.schema import load_job
from tasks.jobs.storage import CONTENT_TYPES, image_key
from tasks.worker.images import encode, user_comment

REG = Registry.from_file(DEFAULT_MODELS_FILE)
MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff"}
META = {"prompt": "a red fox", "seed": 7, "steps": 4, "model": "tiny-sd", "width": 64}


def is_format(data: bytes, fmt: str) -> bool:
    if fmt == "webp":
        return data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    return data.startswith(MAGIC[fmt])


def picture(size: int = 64) -> Image.Image:
    """A smooth gradient with detail: lossy quality visibly changes its size."""
    img = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    for x in range(0, size, 4):
        img.putpixel((x, (x * 7) % size), (255, 0, 0))
    return img


def test_png_is_the_default_with_no_compression() -> None:
    p = load_job({"prompt": "x", "model": "tiny-sd"}, REG)
    assert (p["output_format"], p["output_compression"]) == ("png", None)
    p = load_job({"prompt": "x", "output_format": None, "output_compression": None}, REG)
    assert (p["output_format"], p["output_compression"]) == ("png", None)


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_format_and_compression_reach_the_record_and_the_task(fmt: str) -> None:
    p = load_job({"prompt": "x", "output_format": fmt, "output_compression": 40}, REG)
    assert (p["output_format"], p["output_compression"]) == (fmt, 40)
    assert new_record("j1", p)["params"]["output_format"] == fmt
    kwargs = task_kwargs("j1", p)
    assert (kwargs["output_format"], kwargs["output_compression"]) == (fmt, 40)
    # The task door takes back what the API sent.
    again = load_job(kwargs, REG, task=True)
    assert (again["output_format"], again["output_compression"]) == (fmt, 40)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"output_format": "gif"}, "output_format"),
        ({"output_format": "PNG"}, "output_format"),
        ({"output_format": "jpeg", "output_compression": 101}, "output_compression"),
        ({"output_format": "jpeg", "output_compression": -1}, "output_compression"),
        ({"output_format": "webp", "output_compression": "80"}, "output_compression"),
        ({"output_compression": 80}, "output_compression"),  # png is lossless
        ({"output_format": "png", "output_compression": 80}, "output_compression"),
    ],
)
def test_bad_format_fields_are_named(payload: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        load_job({"prompt": "x", **payload}, REG)
    assert field in info.value.fields


@pytest.mark.parametrize("fmt", list(CONTENT_TYPES))
def test_key_extension_and_content_type_follow_the_format(fmt: str) -> None:
    assert image_key("abc", 2, fmt) == f"generated/abc/2.{fmt}"
    assert CONTENT_TYPES[fmt] == f"image/{fmt}"


@pytest.mark.parametrize("fmt", list(CONTENT_TYPES))
def test_encode_writes_the_format_with_the_parameters_inside(fmt: str) -> None:
    data = encode(picture(), META, fmt=fmt)
    assert is_format(data, fmt)
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
        assert im.size == (64, 64)
        if fmt == "png":
            assert json.loads(im.info["kiln"])["seed"] == 7
            text = im.info["parameters"]
    if fmt != "png":
        text = user_comment(data) or ""
    assert text.startswith("a red fox\n") and "Seed: 7" in text


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_lower_compression_makes_smaller_files(fmt: str) -> None:
    img = picture(256)
    sizes = [len(encode(img, META, fmt=fmt, compression=c)) for c in (100, 50, 10)]
    assert sizes[0] > sizes[1] > sizes[2]
    assert len(encode(img, META, fmt=fmt)) == sizes[0]  # default 100, as OpenAI's


def test_png_is_written_without_the_optimiser() -> None:
    """zlib level 1, one pass: the file differs from the optimised one, which is smaller."""
    img = picture(256)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    fast = encode(img, {}, fmt="png")
    assert len(fast) > len(buf.getvalue())


def test_unknown_format_is_refused_by_the_encoder() -> None:
    with pytest.raises(ValueError, match="output format"):
        encode(picture(), META, fmt="gif")
