"""Runs last in this folder (file order): no configured secret in any process log."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.stack import SECRETS


def test_no_secret_in_any_log(tmp_path_factory: pytest.TempPathFactory) -> None:
    logs = list(Path(tmp_path_factory.getbasetemp()).rglob("*.log"))
    assert logs, "no process logs were written"
    secrets = {s for s in SECRETS if len(s) >= 8}
    assert len(secrets) >= 3
    leaks = [
        (log.name, s[:6] + "…")
        for log in logs
        for s in secrets
        if s in log.read_text(errors="replace")
    ]
    assert not leaks, f"secrets found in logs: {leaks}"
