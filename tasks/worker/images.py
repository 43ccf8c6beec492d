"""A job's images: encoded as PNG (default), JPEG or WebP with the generation parameters
inside, then put in the bucket under keys derived from the job id (a re-run overwrites).

PNG keeps them in text chunks (``parameters``, read by most image tools, and ``kiln``,
JSON); JPEG and WebP in the EXIF UserComment (the same ``parameters`` text). PNG is
written with zlib level 1 and no optimiser pass: the optimiser costs a second
compression for a few per cent of bytes. ``compression`` is OpenAI's
``output_compression`` for JPEG and WebP: 100 keeps the most detail, lower values
make smaller files (the encoder's quality).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tasks.jobs.storage import CONTENT_TYPES, Storage, image_key

PNG_META = (
    "prompt",
    "negative_prompt",
    "model",
    "steps",
    "guidance_scale",
    "scheduler",
    "width",
    "height",
)

USER_COMMENT = 0x9286  # EXIF UserComment, in the Exif IFD
EXIF_IFD = 0x8769
DEFAULT_COMPRESSION = 100  # OpenAI's default for jpeg and webp
WEBP_METHOD = 0  # libwebp's fastest setting: ~3x faster than its default 4, a few % larger


def parameters_text(meta: Mapping[str, Any]) -> str:
    """The widely read ``parameters`` chunk: prompt, then ``Key: value`` pairs."""
    lines = [str(meta.get("prompt", ""))]
    if meta.get("negative_prompt"):
        lines.append(f"Negative prompt: {meta['negative_prompt']}")
    pairs = [
        ("Steps", meta.get("steps")),
        ("Sampler", meta.get("scheduler")),
        ("CFG scale", meta.get("guidance_scale")),
        ("Seed", meta.get("seed")),
        ("Size", f"{meta.get('width')}x{meta.get('height')}"),
        ("Model", meta.get("model")),
    ]
    lines.append(", ".join(f"{k}: {v}" for k, v in pairs if v is not None))
    return "\n".join(lines)


def encode_png(image: Image.Image, meta: Mapping[str, Any]) -> bytes:
    info = PngInfo()
    info.add_text("parameters", parameters_text(meta))
    info.add_text("kiln", json.dumps(dict(meta), sort_keys=True))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info, compress_level=1, optimize=False)
    return buf.getvalue()


def _exif(meta: Mapping[str, Any]) -> Image.Exif:
    exif = Image.Exif()
    # "UNICODE\0" then UTF-16: the UserComment form image tools read back as text.
    text = parameters_text(meta)
    exif.get_ifd(EXIF_IFD)[USER_COMMENT] = b"UNICODE\0" + text.encode("utf-16-be")
    return exif


def user_comment(data: bytes) -> str | None:
    """The ``parameters`` text of a JPEG or WebP written by :func:`encode` (None: none)."""
    with Image.open(io.BytesIO(data)) as im:
        raw = im.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    if not isinstance(raw, bytes) or not raw.startswith(b"UNICODE\0"):
        return None
    return raw[8:].decode("utf-16-be")


def encode(
    image: Image.Image,
    meta: Mapping[str, Any],
    *,
    fmt: str = "png",
    compression: int | None = None,
) -> bytes:
    """``image`` as ``fmt`` (png | jpeg | webp) bytes, with ``meta`` inside."""
    if fmt not in CONTENT_TYPES:
        raise ValueError(f"output format must be one of {', '.join(CONTENT_TYPES)}, got {fmt!r}")
    if fmt == "png":
        return encode_png(image, meta)
    quality = DEFAULT_COMPRESSION if compression is None else int(compression)
    buf = io.BytesIO()
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if fmt == "jpeg":
        rgb.save(buf, format="JPEG", quality=quality, exif=_exif(meta))
    else:
        rgb.save(buf, format="WEBP", quality=quality, method=WEBP_METHOD, exif=_exif(meta))
    return buf.getvalue()


def upload(storage: Storage, job_id: str, params: dict[str, Any], result: Any) -> list[dict]:
    """Encode each image in the job's format (its parameters inside) and put it in the
    bucket as ``generated/<job_id>/<i>.<format>`` with the format's Content-Type."""
    images = []
    fmt = params.get("output_format") or "png"
    for i, (image, seed) in enumerate(zip(result.images, result.seeds, strict=True)):
        meta = {k: params[k] for k in PNG_META}
        meta.update(seed=seed, job_id=job_id, index=i)
        if params["loras"]:
            meta["loras"] = params["loras"]
        if params.get("image") is not None:  # image inputs: the mode, strength, input hashes
            meta.update(mode=params["mode"], strength=params["strength"])
            for name in ("image", "mask"):
                if params.get(name) is not None:
                    meta[f"{name}_sha256"] = params[name].get("sha256")
        key = image_key(job_id, i, fmt)
        data = encode(image, meta, fmt=fmt, compression=params.get("output_compression"))
        storage.put(key, data, content_type=CONTENT_TYPES[fmt], metadata={"seed": str(seed)})
        images.append(  # no URL: the API signs one when it answers (never in a log)
            {
                "key": key,
                "seed": seed,
                "width": image.width,
                "height": image.height,
                "format": fmt,
            }
        )
    return images
