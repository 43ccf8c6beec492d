"""``kiln generate --image/--mask``: what the option names, as the API takes it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


def image_input(kiln: Any, option: str, value: str) -> Any:
    """``--image``/``--mask``: an http(s) URL as is, ``job:<id>[:index]`` or a finished
    job's id (or the start of one) as a job reference, a file as a data URL."""
    from app.client import JOB_REF, AmbiguousId, KilnError, image_field

    if value.startswith(("http://", "https://")):
        return value
    ref = JOB_REF.match(value)
    if not ref and Path(value).is_file():
        try:
            return image_field(Path(value))
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"{option} {value}: {exc}") from None
    prefix, index = (ref[1], int(ref[2] or 0)) if ref else (value, 0)
    try:
        job = kiln.job(kiln.resolve(prefix))
    except AmbiguousId as exc:
        raise click.ClickException(f"{option} {value}: {exc}") from None
    except (KilnError, ValueError):
        raise click.ClickException(
            f"{option} {value}: no such file, http(s) URL or job (job:<id>[:index])"
        ) from None
    if job["status"] != "succeeded":
        raise click.ClickException(f"{option} {value}: job {job['id']} is {job['status']}")
    return {"job": job["id"], "index": index}


def resolve_images(kiln: Any, params: dict[str, Any]) -> None:
    """Turn the ``image``/``mask`` options in ``params`` into what the API takes."""
    for name in ("image", "mask"):
        if params.get(name) is not None:
            params[name] = image_input(kiln, f"--{name}", params[name])


def image_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--image``, ``--mask`` and ``--strength``."""
    for option in reversed(OPTIONS):
        fn = option(fn)
    return fn


OPTIONS = [
    click.option(
        "--image",
        default=None,
        metavar="PATH|URL|JOB",
        help="Init image (img2img): a PNG/JPEG/WebP file, an http(s) URL, or a finished job "
        "as job:<id>[:index] or its id (or the start of it).",
    ),
    click.option(
        "--mask",
        default=None,
        metavar="PATH|URL|JOB",
        help="Inpaint mask, the image's size: white (or transparent) = redraw.",
    ),
    click.option(
        "--strength", type=float, default=None, help="With --image: share redrawn, (0, 1]."
    ),
]
