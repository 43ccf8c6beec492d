"""No configured secret in any process log of this session.

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
