"""The example production models file loads through the real parser and names real
hub weights, each commented with its memory needs."""

from __future__ import annotations

import re
from pathlib import Path

from config.models import load_models

FILE = Path(__file__).resolve().parents[3] / "deploy" / "models.production.yaml"
HUB_IDS = {
    "sd15": ("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
    "sdxl": ("sdxl", "stabilityai/stable-diffusion-xl-base-1.0"),
    "flux-schnell": ("flux-schnell", "black-forest-labs/FLUX.1-schnell"),
    "flux-dev": ("flux-dev", "black-forest-labs/FLUX.1-dev"),
}


def test_the_production_models_load_with_real_hub_ids() -> None:
    models = load_models(FILE)
    assert {name: (m.family, m.source) for name, m in models.items()} == HUB_IDS
    for m in models.values():
        assert not m.stand_in and not Path(m.source).exists()  # from the hub, not a folder
        assert m.dtype in {"fp16", "bf16"}
    assert models["sd15"].safety_checker is False  # documented, off as everywhere


def test_each_model_is_commented_with_its_memory_needs() -> None:
    entries = FILE.read_text().split("\nmodels:\n", 1)[1]
    blocks = entries.split("\n\n")  # a comment, then the entry
    assert len(blocks) == len(HUB_IDS)
    for block in blocks:
        comment = "\n".join(ln for ln in block.splitlines() if ln.strip().startswith("#"))
        name = re.search(r"- name: (\S+)", block)
        assert name and re.search(r"\d+ GB", comment), block
