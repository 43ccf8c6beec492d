"""The client's image inputs: each kind a caller may hold, as the API takes it."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from app.client import image_field


def encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 90, 10)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(("fmt", "kind"), [("PNG", "png"), ("JPEG", "jpeg"), ("WEBP", "webp")])
def test_bytes_and_paths_become_data_urls_of_their_format(
    fmt: str, kind: str, tmp_path: Path
) -> None:
    data = encoded(fmt)
    expected = f"data:image/{kind};base64," + base64.b64encode(data).decode()
    assert image_field(data) == expected
    path = tmp_path / f"in.{kind}"
    path.write_bytes(data)
    assert image_field(path) == expected
    assert image_field(str(path)) == expected


def test_a_pil_image_goes_as_png() -> None:
    url = image_field(Image.new("L", (4, 4), 255))
    assert url.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (4, 4)


def test_urls_and_job_references_go_as_they_are() -> None:
    assert image_field("https://example.com/a.png") == "https://example.com/a.png"
    assert image_field("data:image/png;base64,AAAA") == "data:image/png;base64,AAAA"
    assert image_field("job:abc123") == {"job": "abc123", "index": 0}
    assert image_field("job:abc123:2") == {"job": "abc123", "index": 2}
    assert image_field({"job": "abc123", "index": 1}) == {"job": "abc123", "index": 1}


def test_what_is_not_an_image_says_so(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a PNG, JPEG or WebP"):
        image_field(b"GIF89a")
    with pytest.raises(FileNotFoundError):
        image_field(tmp_path / "missing.png")
    with pytest.raises(TypeError, match="an image is a path, bytes"):
        image_field(3)
