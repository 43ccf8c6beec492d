"""A job's images: PNG-encoded with the generation parameters in text chunks, then
put in the bucket under keys derived from the job id (a re-run overwrites)."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tasks.jobs.storage import Storage, image_key

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


def upload(storage: Storage, job_id: str, params: dict[str, Any], result: Any) -> list[dict]:
    """Encode each image as PNG (its parameters inside) and put it in the bucket."""
    images = []
    for i, (image, seed) in enumerate(zip(result.images, result.seeds, strict=True)):
        meta = {k: params[k] for k in PNG_META}
        meta.update(seed=seed, job_id=job_id, index=i)
        if params["loras"]:
            meta["loras"] = params["loras"]
        key = image_key(job_id, i)
        storage.put(key, encode_png(image, meta), metadata={"seed": str(seed)})
        images.append(
            {
                "url": storage.url(key),
                "key": key,
                "seed": seed,
                "width": image.width,
                "height": image.height,
            }
        )
    return images
