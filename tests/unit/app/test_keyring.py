"""API keys from KILN_API_KEYS_FILE are re-read when the file changes: no restart."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from app import create_app
from app.auth import hash_key, load_keys, new_key
from app.keyring import KeyRing
from config.settings import from_env
from harness.stack import wait_for

ALICE, BOB = new_key(), new_key()
OFFLINE = {
    "KILN_PROFILE": "test",
    "KILN_BROKER_URL": "redis://127.0.0.1:1/0",
    "KILN_S3_ENDPOINT_URL": "http://127.0.0.1:1",
    "KILN_S3_CREATE_BUCKET": "0",
}


def write_keys(path: Path, **keys: str) -> None:
    """Swap the whole file in, as a mounted secret is updated (a rename)."""
    tmp = path.with_suffix(".new")
    tmp.write_text("".join(f"{name}:{hash_key(k)}:read\n" for name, k in keys.items()))
    os.replace(tmp, path)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_file_is_looked_at_most_once_a_second(tmp_path: Path) -> None:
    path, clock = tmp_path / "keys", Clock()
    write_keys(path, alice=ALICE)
    ring = KeyRing(from_env({"KILN_API_KEYS_FILE": str(path)}), load=load_keys, clock=clock)
    assert {k.name for k in ring.current().values()} == {"alice"}
    write_keys(path, bob=BOB)
    clock.now += 0.5
    assert {k.name for k in ring.current().values()} == {"alice"}  # not looked at yet
    clock.now += 0.5
    assert {k.name for k in ring.current().values()} == {"bob"}
    assert ring.reloads == 1
    clock.now += 5
    assert {k.name for k in ring.current().values()} == {"bob"} and ring.reloads == 1


def test_a_broken_file_keeps_the_keys_in_force(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, clock = tmp_path / "keys", Clock()
    write_keys(path, alice=ALICE)
    ring = KeyRing(from_env({"KILN_API_KEYS_FILE": str(path)}), load=load_keys, clock=clock)
    path.write_text("alice:not-a-digest:read\n")
    clock.now += 1
    with caplog.at_level(logging.ERROR, logger="kiln.auth"):
        assert {k.name for k in ring.current().values()} == {"alice"}
    assert "not reloaded" in caplog.text and "line 1" in caplog.text
    path.unlink()
    clock.now += 1
    assert {k.name for k in ring.current().values()} == {"alice"}


def test_a_running_app_refuses_a_revoked_key_and_takes_a_new_one(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    write_keys(path, alice=ALICE)
    settings = from_env({**OFFLINE, "KILN_API_KEYS_FILE": str(path)})
    client = create_app({"TESTING": True, "KILN_SETTINGS": settings}).test_client()

    def status(key: str) -> int:
        return client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code

    assert (status(ALICE), status(BOB)) == (200, 401)
    write_keys(path, bob=BOB)  # alice revoked, bob added; the same app keeps serving
    wait_for(lambda: status(BOB) == 200, timeout=30, what="the new key")
    assert status(ALICE) == 401
