"""A job's image inputs: what a caller may give, where they are kept, how they are read.

An init ``image`` (and an inpaint ``mask``) may be given as

- a previous Kiln output, ``{"job": "<id>", "index": 0}``, readable by whoever may
  read that job;
- an ``https`` URL, fetched once through the egress client (checked public address,
  no redirects, one deadline, at most ``max_input_bytes``);
- a ``data:image/...;base64,`` URL in JSON, or a file part of a multipart request;
- on the Celery door only, a bucket key ``{"key": "inputs/..."}`` (services that can
  send tasks can read the bucket anyway).

The API checks and stores them under ``inputs/<job_id>/`` before the job is queued, so
the task message carries only small descriptors ``{"key", "sha256", "source"}``; the
worker reads the key back from storage. A job sent straight to the Celery task has its
inputs read once, checked and stored the same way by the worker that first takes it,
before its record is made: the record names keys (never a URL or the pixels), and a
delivery again reads the very bytes the first one checked.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import json
import math
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from marshmallow import ValidationError, fields

from config.errors import (
    InvalidInput,
    KeySlotShareExceeded,
    NotFound,
    TooManyFetches,
    Unreachable,
)
from config.settings import Settings
from pipelines.inputs import digest, fit, mask_of, open_image, round_size
from pipelines.registry import Model
from tasks.jobs import egress
from tasks.jobs.records import JOB_ID
from tasks.jobs.storage import Storage
from tasks.jobs.urlsafety import parse_webhook_url, resolve_target

INPUT_NAMES = ("image", "mask")
KEY = re.compile(r"(inputs|generated)/[A-Za-z0-9_-]{1,64}/[A-Za-z0-9_.-]{1,64}\Z")
DATA_URL = re.compile(r"data:image/(png|jpeg|webp);base64,(.*)\Z", re.S)
EXTENSIONS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}
# What the API sends for a stored input; ``ref`` (a Celery-door job's) is a digest of
# what its message named.
DESCRIPTOR = {"key", "sha256", "source", "job", "ref"}
RULE = 'an https URL, a data:image/...;base64 URL, or {"job": "<id>", "index": 0}'


@dataclass(frozen=True)
class Upload:
    """A file part of a multipart request, as the door read it."""

    data: bytes


class ImageInput(fields.Field):
    """One image input in any of the accepted shapes, checked for shape only (the bytes
    are read by :class:`Inputs`). ``keys=True``: bucket keys too (the Celery door)."""

    def __init__(self, *, keys: bool = False, **kwargs: Any) -> None:
        if not kwargs.get("required"):
            kwargs.setdefault("load_default", None)
        super().__init__(allow_none=not kwargs.get("required"), **kwargs)
        self.keys = keys

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kw: Any) -> Any:
        if isinstance(value, Upload):
            return value
        if isinstance(value, str):
            if value.startswith("data:"):
                return {"data_url": value}
            if value.startswith(("https://", "http://")):
                return {"url": value}
        if isinstance(value, dict):
            if "job" in value and set(value) <= {"job", "index"}:
                job, index = value["job"], value.get("index", 0)
                if not isinstance(job, str) or not JOB_ID.match(job):
                    raise ValidationError("job must be a job id")
                if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                    raise ValidationError("index must be an integer >= 0")
                return {"job": job, "index": index}
            if self.keys and "key" in value and set(value) <= DESCRIPTOR:
                if not isinstance(value["key"], str) or not KEY.match(value["key"]):
                    raise ValidationError("key must be a key under inputs/ or generated/")
                return dict(value)
        raise ValidationError(f"must be {RULE}")


class Inputs:
    """Reads, checks and stores a job's image inputs (API side) and reads them back
    for the pipeline (worker side)."""

    def __init__(
        self,
        storage: Storage,
        *,
        read_job: Any = None,
        fetch: Any = None,
    ) -> None:
        self.storage = storage
        self.read_job = read_job  # job id -> record the caller may read, or None
        self.fetch = fetch  # (url, field, max_bytes) -> bytes

    @classmethod
    def for_settings(
        cls,
        storage: Storage,
        settings: Settings,
        *,
        read_job: Any = None,
        slots: FetchSlots | None = None,
        holder: str = "",
    ) -> Inputs:
        """Inputs that fetch URLs with the settings' egress rules (those of webhooks);
        with ``slots``, each fetch holds one of them for ``holder`` (an API key)."""

        def fetch(url: str, name: str, cap: int) -> bytes:
            with slots.held(holder) if slots is not None else contextlib.nullcontext():
                return fetch_url(
                    url,
                    name,
                    cap,
                    allow_private=settings.webhook_allow_private,
                    deadline_s=settings.input_fetch_timeout_s,
                    proxy=settings.webhook_proxy,
                )

        return cls(storage, read_job=read_job, fetch=fetch)

    # -- API side -------------------------------------------------------------------
    def check(self, params: dict[str, Any], model: Model) -> dict[str, Any]:
        """Read and decode each input; size the job from the image when the caller gave
        no size. Returns params with the raw bytes under ``_inputs`` (never recorded)."""
        if params.get("image") is None:
            return params
        lim = model.spec.limits
        raw: dict[str, tuple[bytes, str, dict[str, Any]]] = {}
        decoded = {}
        for name in INPUT_NAMES:
            ref = params.get(name)
            if ref is None:
                continue
            data, source = self._bytes(ref, name, lim.max_input_bytes)
            image = open_image(data, field=name, max_pixels=lim.max_input_pixels)
            decoded[name] = image
            raw[name] = (data, EXTENSIONS[image.info["format"]], source)
        image = decoded["image"]
        if "mask" in decoded and decoded["mask"].size != image.size:
            w, h = decoded["mask"].size
            raise InvalidInput(
                f"`mask` is {w}x{h}, the image is {image.size[0]}x{image.size[1]}",
                fields={"mask": [f"must be {image.size[0]}x{image.size[1]} like the image"]},
            )
        out = dict(params)
        if params.get("width") is None or params.get("height") is None:
            w, h = round_size(*image.size, multiple=model.family.size_multiple)
            out["width"] = params.get("width") or w
            out["height"] = params.get("height") or h
        out["_inputs"] = raw
        return out

    def store(self, job_id: str, params: dict[str, Any], *, refs: bool = False) -> dict[str, Any]:
        """Put checked inputs under ``inputs/<job_id>/`` (one already in the bucket, a
        key or a job's output, needs no copy) and replace them in params by their
        descriptors; ``refs``: each with the digest of what the params named."""
        raw = params.get("_inputs")
        if not raw:
            return params
        out = {k: v for k, v in params.items() if k != "_inputs"}
        for name, (data, ext, source) in raw.items():
            described = dict(source)
            key = described.pop("key", None)
            if key is None:
                key = f"inputs/{job_id}/{name}.{ext}"
                self.storage.put(key, data, content_type=f"image/{ext}")
            out[name] = {"key": key, "sha256": digest(data), **described}
            if refs:
                out[name]["ref"] = ref_digest(params[name])
        return out

    def _bytes(self, ref: Any, name: str, cap: int) -> tuple[bytes, dict[str, Any]]:
        if isinstance(ref, Upload):
            data, source = ref.data, {"source": "upload"}
        elif "data_url" in ref:
            data, source = _decode_data_url(ref["data_url"], name), {"source": "data_url"}
        elif "url" in ref:
            if self.fetch is None:
                raise _bad(name, "URLs are not taken on this door")
            data, source = self.fetch(ref["url"], name, cap), {"source": "url"}
        elif "key" in ref:  # stored already (the API's descriptor), or the Celery door's key
            data, source = self.read_key(ref["key"], name), {"source": "key", "key": ref["key"]}
        else:
            data, source = self._job_output(ref, name)
        if len(data) > cap:
            raise _bad(name, f"is {len(data)} bytes, over this model's {cap} byte limit")
        return data, source

    def _job_output(self, ref: dict[str, Any], name: str) -> tuple[bytes, dict[str, Any]]:
        record = self.read_job(ref["job"]) if self.read_job else None
        if record is None:
            raise NotFound(f"`{name}`: job {ref['job']} not found", fields={name: ["not found"]})
        images = record.get("images") or []
        if record.get("status") != "succeeded" or ref["index"] >= len(images):
            raise _bad(name, f"job {ref['job']} has no image {ref['index']}")
        key = images[ref["index"]]["key"]
        return self.read_key(key, name), {"source": "job", "job": ref["job"], "key": key}

    def read_key(self, key: str, name: str) -> bytes:
        try:
            return self.storage.read(key)
        except NotFound:
            raise _bad(name, "is no longer in storage") from None

    # -- worker side ----------------------------------------------------------------
    def load(self, params: dict[str, Any], model: Model) -> tuple[Any, Any]:
        """The init image at the job's size and the binary mask (or ``None``s)."""
        if params.get("image") is None:
            return None, None
        lim = model.spec.limits
        w, h = params["width"], params["height"]
        out: list[Any] = []
        for name in INPUT_NAMES:
            ref = params.get(name)
            if ref is None:
                out.append(None)
                continue
            data, _ = self._bytes(ref, name, lim.max_input_bytes)
            image = open_image(data, field=name, max_pixels=lim.max_input_pixels)
            out.append(fit(image, w, h) if name == "image" else mask_of(image, w, h))
        return out[0], out[1]


def ref_digest(ref: Any) -> str:
    """A digest of an input as a message named it (its URL, data URL, key or job)."""
    return digest(json.dumps(ref, sort_keys=True).encode())


def as_recorded(params: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """A Celery-door message delivered again names its inputs as its sender did; its
    record names what was stored for them. Where they match (the same ``ref``), the
    params take the record's inputs, and its size when the message gave none."""
    stored = record.get("params") or {}
    out = dict(params)
    matched = False
    for name in INPUT_NAMES:
        kept, named = stored.get(name), params.get(name)
        if isinstance(kept, dict) and named is not None and kept.get("ref") == ref_digest(named):
            out[name], matched = kept, True
    if matched:  # sized as Inputs.check sized it
        out["width"] = params.get("width") or stored.get("width")
        out["height"] = params.get("height") or stored.get("height")
    return out


def image_mode(params: dict[str, Any]) -> str:
    """``text``, ``img2img`` or ``inpaint``, from which inputs params hold."""
    if params.get("image") is None:
        return "text"
    return "inpaint" if params.get("mask") is not None else "img2img"


def _decode_data_url(value: str, name: str) -> bytes:
    m = DATA_URL.match(value)
    if m is None:
        raise _bad(name, "must be a data:image/png, jpeg or webp;base64 URL")
    try:
        return base64.b64decode(m.group(2), validate=True)
    except (binascii.Error, ValueError):
        raise _bad(name, "holds invalid base64") from None


def _bad(name: str, reason: str) -> InvalidInput:
    return InvalidInput(f"`{name}` {reason}", fields={name: [reason]})


class FetchSlots:
    """At most ``limit`` image-URL fetches at once in this process (each holds an API
    thread for up to its deadline), and ``share`` of them for any one key: past that a
    submit is a 503 (``TooManyFetches``) or a 429 (``KeySlotShareExceeded``), at once."""

    def __init__(self, limit: int, *, share: float) -> None:
        self.limit = limit
        self.per_key = max(1, math.floor(limit * min(1.0, max(0.0, share))))
        self._lock = threading.Lock()
        self._used = 0
        self._by_key: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def held(self, key: str) -> Iterator[None]:
        if self.limit <= 0:
            yield
            return
        with self._lock:
            if self._by_key[key] >= self.per_key:
                raise KeySlotShareExceeded(
                    f"this API key already fetches {self.per_key} of this server's "
                    f"{self.limit} image URLs at once; retry shortly"
                )
            if self._used >= self.limit:
                raise TooManyFetches(
                    f"{self.limit} image URLs are being fetched on this server; retry shortly"
                )
            self._used += 1
            self._by_key[key] += 1
        try:
            yield
        finally:
            with self._lock:
                self._used -= 1
                self._by_key[key] -= 1
                if self._by_key[key] <= 0:
                    del self._by_key[key]


# Name lookups run here, so that one that hangs costs its caller no more than the
# fetch's deadline (getaddrinfo itself cannot be interrupted); a few at once.
_LOOKUPS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kiln-lookup")


def lookup_within(seconds: float, resolver: Any = socket.getaddrinfo) -> Any:
    """A resolver (``socket.getaddrinfo``'s signature) that gives up after ``seconds``."""

    def resolve(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        future = _LOOKUPS.submit(resolver, host, port, *args, **kwargs)
        try:
            return future.result(timeout=max(0.0, seconds))
        except FutureTimeout:
            raise Unreachable(f"looking up {host} took longer than {seconds:g} s") from None

    return resolve


def fetch_url(
    url: str,
    name: str,
    cap: int,
    *,
    allow_private: bool,
    deadline_s: float,
    proxy: str = "",
    resolver: Any = socket.getaddrinfo,
) -> bytes:
    """GET an image input through the egress client: the same checks as a webhook
    (public addresses only unless allowed, no redirects), one deadline for the name
    lookup and the whole exchange, at most ``cap`` bytes, and plain ``http`` only where
    private addresses are allowed (development)."""
    deadline = time.monotonic() + deadline_s
    try:
        target = parse_webhook_url(url)
        if target.scheme != "https" and not allow_private:
            raise _bad(name, "must be an https URL")
        addresses = resolve_target(
            target, allow_private=allow_private, resolver=lookup_within(deadline_s, resolver)
        )
        left = deadline - time.monotonic()
        if left <= 0:
            raise Unreachable("the deadline passed during the name lookup")
        status, body = egress.get(target, addresses, deadline_s=left, max_bytes=cap)
    except InvalidInput as exc:
        if name in exc.fields:
            raise
        reasons = [str(r) for rs in exc.fields.values() for r in rs] or [str(exc)]
        raise _bad(name, f"is refused: {reasons[0]}") from None
    except Unreachable as exc:
        raise _bad(name, f"could not be fetched: {exc}") from None
    if status != 200:
        raise _bad(name, f"could not be fetched: the server answered HTTP {status}")
    if len(body) > cap:
        raise _bad(name, f"is over this model's {cap} byte limit")
    return body
