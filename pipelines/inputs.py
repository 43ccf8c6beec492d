"""Image inputs: open an untrusted image safely, fit it to a size, read a mask.

Torch-free on purpose: the API checks an upload with the same code the worker uses to
prepare it. Pillow reads only the header before :func:`open_image` has checked the
declared size, so a "decompression bomb" (a small file declaring 100000×100000 pixels)
is refused without allocating it.
"""

from __future__ import annotations

import hashlib
import io
import warnings

from PIL import Image

from config.errors import InvalidInput

FORMATS = ("PNG", "JPEG", "WEBP")
MASK_THRESHOLD = 128  # a grey level at or above it is "repaint"


def open_image(data: bytes, *, field: str, max_pixels: int) -> Image.Image:
    """Decode ``data`` (PNG, JPEG or WebP) into RGBA/RGB, refusing anything else or
    anything declaring more than ``max_pixels``, before decoding its pixels. The file's
    format stays in ``info["format"]``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            fmt, (w, h) = image.format, image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _bad(field, "declares more pixels than any model takes") from None
    except Exception:
        raise _bad(field, "is not a PNG, JPEG or WebP image") from None
    if fmt not in FORMATS:
        raise _bad(field, f"is {fmt}; send PNG, JPEG or WebP")
    if w * h > max_pixels:
        raise _bad(field, f"is {w}x{h}, over this model's {max_pixels} pixel limit")
    try:
        image.load()
    except Exception:
        raise _bad(field, "is a truncated or damaged image") from None
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    out = image.convert("RGBA" if has_alpha else "RGB")
    out.info["format"] = fmt
    return out


def fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """``image`` as RGB at exactly ``width``×``height`` (resized when it differs)."""
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def mask_of(image: Image.Image, width: int, height: int) -> Image.Image:
    """A binary ``L`` mask, 255 where the picture is to be repainted.

    Two conventions, one rule: a mask with transparent pixels marks the area to edit
    by transparency (OpenAI's); any other mask marks it in white (grey >= 128)."""
    alpha = image.getchannel("A") if image.mode == "RGBA" else None
    if alpha is not None and min(alpha.getdata()) < 255:
        grey = alpha.point(lambda a: 255 - a)
    else:
        grey = image.convert("L")
    if grey.size != (width, height):
        grey = grey.resize((width, height), Image.Resampling.NEAREST)
    return grey.point(lambda v: 255 if v >= MASK_THRESHOLD else 0)


def keep_outside(result: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """``result`` inside the mask and ``original``'s exact pixels outside it."""
    return Image.composite(result.convert("RGB"), original.convert("RGB"), mask)


def digest(data: bytes) -> str:
    """The hash recorded for an input (its SHA-256, hex)."""
    return hashlib.sha256(data).hexdigest()


def round_size(width: int, height: int, *, multiple: int) -> tuple[int, int]:
    """An input's size rounded down to the family's multiple (at least one multiple)."""
    return max(multiple, width // multiple * multiple), max(multiple, height // multiple * multiple)


def _bad(field: str, reason: str) -> InvalidInput:
    return InvalidInput(f"`{field}` {reason}", fields={field: [reason]})
