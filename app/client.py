"""A small Python client for Kiln's REST API (needs only ``requests``).

    from app.client import Kiln

    kiln = Kiln("http://localhost:8000", api_key=None)
    result = kiln.generate("a red fox", model="tiny-sd", n=2, seed=7, output_format="webp",
                           on_progress=lambda step, steps: print(step, steps))
    for image, seed, fmt in zip(result.images, result.seeds, result.formats):
        open(f"fox-{seed}.{fmt}", "wb").write(image)

Every job field rides as a keyword (``output_format`` png | jpeg | webp and
``output_compression`` 0–100 as in OpenAI's images API).

Image inputs (img2img, inpainting): ``image=`` and ``mask=`` take a file path, bytes
(PNG, JPEG or WebP), a PIL image, an http(s) or ``data:`` URL, or an earlier job's
output as ``{"job": id, "index": 0}`` or ``"job:<id>[:index]"``; ``strength`` is the
share of the image redrawn:

    kiln.generate("a red fox at night", model="tiny-sd", image="fox.png", strength=0.6)
    kiln.generate("sharper", model="tiny-sd", image={"job": result.job["id"], "index": 0})

``wait`` follows the job's Server-Sent Events when the server has them and polls
otherwise. ``jobs`` pages through the jobs made with this client's key, newest first;
``resolve`` turns the start of a job id into the whole id.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

TERMINAL = {"succeeded", "failed", "canceled"}
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
Progress = Callable[[int, int], None]
JOB_REF = re.compile(r"job:([A-Za-z0-9_-]{1,64})(?::(\d+))?\Z")
MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"))


def image_kind(data: bytes) -> str:
    """png | jpeg | webp from the first bytes (the formats the API takes)."""
    for magic, kind in MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    raise ValueError("not a PNG, JPEG or WebP image")


def image_field(value: Any) -> Any:
    """One image input as the API takes it: a URL or data URL as is, a job reference as
    ``{"job": id, "index": i}``, and a path, bytes or PIL image as a data URL."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        if value.startswith(("http://", "https://", "data:")):
            return value
        ref = JOB_REF.match(value)
        if ref:
            return {"job": ref[1], "index": int(ref[2] or 0)}
    if isinstance(value, str | Path):
        data = Path(value).read_bytes()
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    elif hasattr(value, "save"):  # a PIL image
        buf = io.BytesIO()
        value.save(buf, "PNG")
        data = buf.getvalue()
    else:
        raise TypeError(f"an image is a path, bytes, a PIL image, a URL or a job: {value!r}")
    return f"data:image/{image_kind(data)};base64," + base64.b64encode(data).decode()


class KilnError(Exception):
    """An error answer from Kiln: ``code``, ``message`` and the ``fields`` it names."""

    def __init__(self, status: int, body: Any) -> None:
        err = body.get("error", {}) if isinstance(body, dict) else {}
        self.status = status
        self.code = err.get("code", "error")
        self.fields = err.get("fields") or {}
        super().__init__(f"{status} {self.code}: {err.get('message', body)}")


class AmbiguousId(ValueError):
    """The start of a job id that more than one of the key's jobs begin with."""

    def __init__(self, prefix: str, matches: list[str]) -> None:
        self.prefix, self.matches = prefix, matches
        shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
        super().__init__(
            f"{prefix!r} is the start of {len(matches)} jobs ({shown}); give more of the id"
        )


@dataclass
class Result:
    job: dict[str, Any]
    images: list[bytes] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return [im["seed"] for im in self.job.get("images", [])]

    @property
    def formats(self) -> list[str]:
        """Each image's format (png | jpeg | webp), as its key's extension says."""
        return [im.get("format") or im["key"].rsplit(".", 1)[-1] for im in self.job["images"]]


class Kiln:
    def __init__(
        self,
        base_url: str = "http://localhost:8000",
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.http = requests.Session()
        if api_key:
            self.http.headers["Authorization"] = f"Bearer {api_key}"

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        resp = self.http.request(method, self.base_url + path, timeout=self.timeout, **kw)
        body = resp.json() if resp.content else {}
        if resp.status_code >= 400:
            raise KilnError(resp.status_code, body)
        return body

    # -- jobs -------------------------------------------------------------------------
    def submit(
        self, prompt: str, *, idempotency_key: str | None = None, **params: Any
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        for name in ("image", "mask"):
            if params.get(name) is not None:
                params[name] = image_field(params[name])
        return self._call("POST", "/v1/jobs", json={"prompt": prompt, **params}, headers=headers)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/jobs/{job_id}")

    def jobs(
        self,
        *,
        status: str | None = None,
        model: str | None = None,
        limit: int = 20,
        after: str | None = None,
    ) -> dict[str, Any]:
        """One page of this key's jobs, newest first: ``{data, has_more, next_after}``."""
        query = {"status": status, "model": model, "limit": limit, "after": after}
        params = {k: v for k, v in query.items() if v is not None}
        return self._call("GET", "/v1/jobs", params=params)

    def iter_jobs(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every job of this key, newest first, page after page."""
        after = None
        while True:
            page = self.jobs(limit=100, after=after, **filters)
            yield from page["data"]
            after = page.get("next_after")
            if not page.get("has_more") or not after:
                return

    def resolve(self, prefix: str) -> str:
        """The whole id of the job whose id is or starts with ``prefix`` (raises
        ``KilnError`` 404 when none is, ``AmbiguousId`` when several are)."""
        if not JOB_ID.match(prefix):
            raise ValueError(f"{prefix!r} is not a job id: 1 to 64 of A-Z a-z 0-9 _ -")
        try:
            return str(self.job(prefix)["id"])
        except KilnError as exc:
            if exc.status != 404:
                raise
            missing = exc
        matches = [j["id"] for j in self.iter_jobs() if str(j["id"]).startswith(prefix)]
        if not matches:
            raise missing
        if len(matches) > 1:
            raise AmbiguousId(prefix, matches)
        return str(matches[0])

    def models(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/models")["data"])

    def events(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """The job's events as ``(event, data)`` until it ends (raises 404 if no stream)."""
        # The server sends a keep-alive comment every 10 s: a longer silence is a dead stream.
        with self.http.get(
            f"{self.base_url}/v1/jobs/{job_id}/events",
            stream=True,
            timeout=(self.timeout, max(self.timeout, 30.0)),
        ) as resp:
            if resp.status_code >= 400:
                raise KilnError(resp.status_code, resp.json())
            event = None
            for line in resp.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event:
                    yield event, json.loads(line[6:])
                    if event in TERMINAL:
                        return

    def wait(
        self, job_id: str, *, on_progress: Progress | None = None, timeout: float = 600.0
    ) -> dict[str, Any]:
        """Wait for the job to end; ``on_progress(step, steps)`` as it runs.

        Follows ``/v1/jobs/<id>/events`` (Server-Sent Events); where the server has no
        stream (404), refuses one (503) or the stream ends early, polls the job instead.
        """
        deadline, last = time.monotonic() + timeout, -1

        def report(step: int, steps: int) -> None:
            nonlocal last
            if on_progress and step > last:
                last = step
                on_progress(step, steps)

        try:
            for event, data in self.events(job_id):
                if event == "progress":
                    report(int(data["step"]), int(data["steps"]))
                if time.monotonic() > deadline:
                    break
        except (KilnError, requests.RequestException):
            pass  # no event stream here: poll
        while True:
            job = self.job(job_id)
            progress = job.get("progress") or {}
            if progress.get("steps"):
                report(int(progress.get("step") or 0), int(progress["steps"]))
            if job["status"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not end within {timeout}s")
            time.sleep(0.25)

    def download(self, image: dict[str, Any]) -> bytes:
        """The bytes of one image of a job record (its URL needs no API key)."""
        resp = requests.get(image["url"], timeout=self.timeout)
        resp.raise_for_status()
        return resp.content

    def generate(
        self,
        prompt: str,
        *,
        on_progress: Progress | None = None,
        timeout: float = 600.0,
        **params: Any,
    ) -> Result:
        """Submit, wait, download: the images (bytes in the job's format) and their seeds.

        ``image``, ``mask`` (paths, bytes, PIL images, URLs or job references) and
        ``strength`` make it img2img or inpainting."""
        job = self.wait(
            self.submit(prompt, **params)["id"], on_progress=on_progress, timeout=timeout
        )
        if job["status"] != "succeeded":
            raise KilnError(500, {"error": job.get("error") or {"message": job["status"]}})
        return Result(job=job, images=[self.download(im) for im in job["images"]])
