"""No configured secret and no presigned URL in any process log of this session.

It runs a job on the session stack itself, so it has logs to read when run alone; in
a whole run its name puts it last in this folder, so it reads every stack's logs."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.http import KilnHTTP
from harness.stack import SECRETS


def test_no_secret_in_any_log(tmp_path_factory: pytest.TempPathFactory, api: KilnHTTP) -> None:
    assert api.run(prompt="log check", model="tiny-sd", steps=2, seed=3)["status"] == "succeeded"
    logs = list(Path(tmp_path_factory.getbasetemp()).rglob("*.log"))
    assert logs, "no process logs were written"
    secrets = {s for s in SECRETS if len(s) >= 8}
    assert len(secrets) >= 2  # the session stack's S3 and webhook secrets, at least
    leaks = [
        (log.name, s[:6] + "…")
        for log in logs
        for s in secrets
        if s in log.read_text(errors="replace")
    ]
    assert not leaks, f"secrets found in logs: {leaks}"


def test_no_presigned_url_in_worker_logs(
    tmp_path_factory: pytest.TempPathFactory, api: KilnHTTP
) -> None:
    done = api.run(prompt="url check", model="tiny-sd", steps=2, seed=4)
    assert done["status"] == "succeeded"
    assert "X-Amz-Signature" in done["images"][0]["url"]  # the API signs when it answers
    logs = [
        log
        for log in Path(tmp_path_factory.getbasetemp()).rglob("*.log")
        if log.name.startswith(("worker", "webhooks", "flower"))
    ]
    assert logs, "no worker logs were written"
    job_logged = any(done["id"] in log.read_text(errors="replace") for log in logs)
    assert job_logged, "the job does not appear in any worker log"
    leaks = [log.name for log in logs if "X-Amz-Signature" in log.read_text(errors="replace")]
    assert not leaks, f"presigned URLs found in: {leaks}"
