"""The production Procfile, run as honcho runs it (``sh -c`` per line), fails closed."""

from __future__ import annotations

import os
import subprocess

import pytest
import requests

from app.auth import hash_key, new_key
from harness.stack import BIN, ROOT, SECRETS, Proc, Stack, free_port, stop_all, wait_for

OPS_KEY = new_key()
FLOWER_AUTH = "ops:procfile-flower-pass"
SECRETS.extend([OPS_KEY, "procfile-flower-pass"])


def procfile_command(name: str) -> str:
    """The Procfile's line for ``name``, bound to 127.0.0.1 instead of every address."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip().replace("-b 0.0.0.0:", "-b 127.0.0.1:")
    raise KeyError(name)


def run_line(stack: Stack, name: str, **env: str) -> Proc:
    """One Procfile line in the servers' environment minus every key and open switch."""
    base = {k: v for k, v in stack.env.items() if k not in {"KILN_AUTH", "KILN_PROFILE"}}
    base["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    return stack.spawn(
        f"procfile-{name}-{free_port()}",
        ["/bin/sh", "-c", procfile_command(name)],
        env={**base, **env},
    )


def exited(proc: Proc, timeout: float = 90) -> int:
    try:
        return proc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{proc.name} still runs:\n{proc.output()[-2000:]}")


def test_the_production_procfile_without_keys_refuses_to_serve(servers: Stack) -> None:
    port = free_port()
    api = run_line(servers, "api", KILN_API_PORT=str(port))
    assert exited(api) != 0
    assert "KILN_API_KEYS is required in the prod profile" in api.output()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    flower = run_line(servers, "flower", KILN_FLOWER_PORT=str(free_port()))
    assert exited(flower) != 0 and "KILN_FLOWER_BASIC_AUTH" in flower.output()


def test_the_production_procfile_with_keys_serves_and_flower_asks_for_credentials(
    servers: Stack,
) -> None:
    keys = {
        "KILN_API_KEYS": f"ops:{hash_key(OPS_KEY)}:admin",
        "KILN_FLOWER_BASIC_AUTH": FLOWER_AUTH,
    }
    api_port, flower_port = free_port(), free_port()
    procs = [
        run_line(servers, "api", KILN_API_PORT=str(api_port), **keys),
        run_line(servers, "flower", KILN_FLOWER_PORT=str(flower_port), **keys),
    ]
    try:
        api, flower = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{flower_port}"
        for url, proc in ((api + "/healthz", procs[0]), (flower + "/healthcheck", procs[1])):
            wait_for(
                lambda u=url: requests.get(u, timeout=1).ok, timeout=90, what=url, proc=proc.popen
            )
        assert requests.get(f"{api}/v1/models", timeout=5).status_code == 401
        bearer = {"Authorization": f"Bearer {OPS_KEY}"}
        assert requests.get(f"{api}/v1/models", headers=bearer, timeout=5).ok
        assert requests.get(f"{flower}/", timeout=5).status_code == 401
        user, password = FLOWER_AUTH.split(":")
        assert requests.get(f"{flower}/", auth=(user, password), timeout=5).ok
    finally:
        stop_all(procs)
