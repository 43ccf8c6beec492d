"""The GPU proof's record: a failed stage is reported and saved, and the run goes on; the
anchor lines compare like for like."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.gpu_parts import Proof


def proof(tmp_path: Path, mode: str = "full") -> Proof:
    return Proof(mode, "cuda", "a GPU", tmp_path / "gpu.json", None, 3.5)


def test_a_failed_stage_is_reported_and_the_next_one_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = proof(tmp_path)
    with p.stage("sdxl load"):
        raise RuntimeError("no space left on device")
    with p.stage("sdxl bare"):
        p.add(model="sdxl", stage="bare", variant="base", batch=1, s_per_image=2.0)
    saved = json.loads(p.out.read_text())
    assert saved["failed"] == [
        {"stage": "sdxl load", "error": "RuntimeError: no space left on device"}
    ]
    assert [r["stage"] for r in saved["rows"]] == ["bare"]
    assert "FAILED sdxl load: RuntimeError: no space left on device" in capsys.readouterr().out


def test_latency_anchors_meet_batch_1_rows_and_the_goal_the_best_throughput(
    tmp_path: Path,
) -> None:
    p = proof(tmp_path)
    p.add(model="sdxl", stage="bare", variant="base", batch=1, s_per_image=2.0)
    p.add(model="sdxl", stage="bare", variant="base", batch=8, s_per_image=0.8)
    (line,) = p.anchor_lines()
    assert line.startswith("sdxl: latency 2.000 s/image at batch 1 (bare, base)")
    assert "H100 diffusers, 30 steps 2.5 s: 1.25× → met" in line  # 2.0 against 2.5, batch 1
    assert "throughput 1.25 images/s (0.800 s/image, bare, base, batch 8)" in line
    assert "goal 0.9 s/image: 1.12× → met" in line
