"""Small helpers the tests share (plain HTTP, as any client would do it)."""

from __future__ import annotations

import io
import time
from typing import Any

import requests
from PIL import Image

TERMINAL = {"succeeded", "failed", "canceled"}


class KilnHTTP:
    def __init__(self, base_url: str, *, headers: dict[str, str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = requests.Session()
        self.http.headers.update(headers or {})

    def post(self, path: str, json: Any = None, **kw: Any) -> requests.Response:
        return self.http.post(self.base_url + path, json=json, timeout=30, **kw)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.http.get(self.base_url + path, timeout=30, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.http.delete(self.base_url + path, timeout=30, **kw)

    def submit(self, **job: Any) -> dict[str, Any]:
        r = self.post("/v1/jobs", json=job)
        assert r.status_code == 202, r.text
        return r.json()

    def wait(self, job_id: str, *, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in TERMINAL:
                return job
            time.sleep(0.05)
        raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")

    def wait_for_status(self, job_id: str, status: str, *, timeout: float = 120) -> dict[str, Any]:
        """Poll until the job is ``status``; an end before that is an error."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(f"/v1/jobs/{job_id}").json()
            if job["status"] == status:
                return job
            if job["status"] in TERMINAL:
                raise AssertionError(f"job {job_id} ended {job['status']} before {status}")
            time.sleep(0.05)
        raise TimeoutError(f"job {job_id} not {status} after {timeout}s")

    def run(self, **job: Any) -> dict[str, Any]:
        return self.wait(self.submit(**job)["id"])


def fetch_image(url: str) -> Image.Image:
    r = requests.get(url, timeout=30)
    r.raise_for_status()
    assert r.content[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(r.content))
    img.load()
    return img
