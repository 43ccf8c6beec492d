"""Tiny models of each family, loaded once per session, for the pipeline tests.

The tiny folders themselves come from the session fixture ``tiny_models_dir``
(tests/conftest.py: ``pipelines.tiny.make_all`` into a ``tmp_path_factory`` folder,
once per session, shared with the integration tests).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.pipelines import model_with_lora

# Tiny models gain nothing from intra-op threads, and with other processes on the cores
# (the integration stack's workers, a parallel run) OpenMP spin-waits made 2 threads
# 10-30x slower than 1 here. OMP_NUM_THREADS, when set, wins.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def loaded_models(tiny_models_dir: Path) -> Callable[[str], Any]:
    """``loaded_models(name)``: that model loaded on the CPU once per session."""
    from pipelines.loader import load_model

    cache: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in cache:
            model = model_with_lora(name, tiny_models_dir)
            cache[name] = load_model(model, models_dir=tiny_models_dir, device="cpu")
        return cache[name]

    return get
