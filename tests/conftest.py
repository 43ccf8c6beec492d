"""Fixtures shared by every test: settings isolated from the environment, tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every tiny stand-in, built once per session (pipelines.tiny.make_all)."""
    from pipelines.tiny import make_all

    out = tmp_path_factory.mktemp("models")
    make_all(out)
    return out
