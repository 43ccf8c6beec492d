"""PNG encoding with the generation parameters in text chunks."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo


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
    image.save(buf, format="PNG", pnginfo=info, compress_level=1)
    return buf.getvalue()
