"""Fixtures shared by every test: settings isolated from the environment, tiny models."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import Stack, free_port
from tests.support import KilnHTTP

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every tiny stand-in, built once per session (pipelines.tiny.make_all)."""
    from pipelines.tiny import make_all

    out = tmp_path_factory.mktemp("models")
    make_all(out)
    return out


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> Iterator[Stack]:
    """The real stack on free ports: Valkey, an S3 server, a tiny-sd worker, the API."""
    s = Stack(tmp_path_factory.mktemp("stack"), models_dir=tiny_models_dir)
    try:
        s.start_servers()
        s.worker_metrics_port = free_port()
        s.start_worker("tiny-sd", args=("--metrics-port", str(s.worker_metrics_port)))
        s.start_api()
        yield s
    finally:
        s.close()


@pytest.fixture(scope="session")
def api(stack: Stack) -> KilnHTTP:
    return KilnHTTP(stack.api_url)
