"""Flower: basic auth outside dev, bound to 127.0.0.1, its /metrics on."""

from __future__ import annotations

import pytest
import requests

from app.devfleet import flower_argv
from config.settings import from_env
from harness.http import KilnHTTP
from harness.stack import BIN, SECRETS, Stack, free_port, wait_for

SECRETS.extend(["flower-pass-123", "flower-hook-token"])  # no log may show them


def test_flower_needs_basic_auth_outside_dev() -> None:
    with pytest.raises(SystemExit, match="BASIC_AUTH"):
        flower_argv(from_env({"KILN_PROFILE": "prod", "KILN_API_KEYS": ""}))
    argv = flower_argv(from_env({}))
    assert "--address=127.0.0.1" in argv


def test_flower_refuses_requests_without_credentials(stack: Stack) -> None:
    port = free_port()
    env = {
        **stack.env,
        "KILN_PROFILE": "prod",
        "KILN_FLOWER_PORT": str(port),
        "KILN_FLOWER_BASIC_AUTH": "ops:flower-pass-123",
    }
    proc = stack.spawn("flower", [str(BIN / "kiln"), "flower"], env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: requests.get(f"{url}/healthcheck", timeout=1).ok,
            timeout=60,
            what="flower",
            proc=proc.popen,
        )
        assert requests.get(f"{url}/", timeout=5).status_code == 401
        assert requests.get(f"{url}/", auth=("ops", "flower-pass-123"), timeout=5).ok
        metrics = requests.get(f"{url}/metrics", timeout=5)
        assert metrics.status_code == 200 and "flower_" in metrics.text

        # Operators read task names and queues; a webhook's token never shows.
        hook = "https://hooks.invalid/T0/flower-hook-token?sig=flower-sig"
        job = KilnHTTP(stack.api_url).run(
            prompt="seen by flower", model="tiny-sd", steps=2, webhook_url=hook
        )
        assert job["status"] == "succeeded", job
        auth = ("ops", "flower-pass-123")

        def task() -> dict:
            return requests.get(f"{url}/api/task/info/{job['id']}", auth=auth, timeout=5).json()

        wait_for(lambda: task().get("state") == "SUCCESS", timeout=30, what="task in flower")
        info = task()
        assert info["name"] == "kiln.generate"
        assert info["routing_key"] == "gen.tiny-sd"
        assert "seen by flower" in info["kwargs"] and "hooks.invalid/***" in info["kwargs"]
        listing = requests.get(f"{url}/api/tasks", auth=auth, timeout=5).text
        assert "flower-hook-token" not in listing and "flower-sig" not in listing
        assert "flower-hook-token" not in requests.get(f"{url}/tasks", auth=auth, timeout=5).text
    finally:
        proc.stop()
