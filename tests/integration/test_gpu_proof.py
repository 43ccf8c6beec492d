"""The GPU proof in smoke mode: every stage of ``make gpu-proof`` runs on the CPU.

Tiny configs of the same architectures, the same code: the weights saved and loaded as a
worker loads them (fp16 variant files and a VAE override for SDXL), bare calls,
out-of-memory recovery, bursts through a real worker (Valkey, S3 server, API,
``kiln worker``), one option at a time, and ``torch.compile``. Figures are not checked
(they are noise on a shared CPU); that each stage ran, and ran as asked, is.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import gpu

STAGES = ("save", "load", "bare", "oom", "kiln", "option", "compile")


def test_smoke_proof_runs_every_stage_of_both_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``make gpu-proof``'s own entry point (``bench.gpu.main``), in this process: its stack's
    workers start as every test stack's do."""
    out = tmp_path / "gpu.json"
    assert gpu.main(["--smoke", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "SMOKE MODE" in stdout and "Ran in SMOKE MODE" in stdout
    data = json.loads(out.read_text())
    assert data["mode"] == "smoke" and not data["skipped"] and not data["failed"]
    rows = data["rows"]
    for model in ("sdxl", "flux-schnell"):
        assert {r["stage"] for r in rows if r["model"] == model} == set(STAGES), model
    for r in rows:
        if r["stage"] in ("save", "load"):
            assert r["disk_s"] > 0
        elif r["stage"] == "oom":  # split, every image back, the next batch as loaded
            assert r["oom_splits"] >= 1 and r["images_ok"] == "2/2"
            assert r["dtypes_after"] == "as loaded"
        else:
            assert r["s_per_image"] > 0 and r["usd_per_1k_images"] > 0
    loads = {r["model"]: r["variant"] for r in rows if r["stage"] == "load"}
    assert loads["sdxl"] == "from_pretrained + fp16 variant + vae override"
    for stage in ("load", "oom", "compile"):  # what CI sees of each
        assert f"stage {stage}" in stdout
    bare = [r for r in rows if r["stage"] == "bare"]
    assert sorted((r["model"], r["batch"]) for r in bare) == [
        ("flux-schnell", 1),
        ("flux-schnell", 2),
        ("sdxl", 1),
        ("sdxl", 2),
    ]
    assert all(r["mfu"] > 0 for r in bare)  # the FLOP count ran
    for r in rows:
        if r["stage"] == "kiln":  # the worker ran full batches of the size asked
            assert r["batch_sizes"] == [r["batch"]] and r["calls"] == 2 and r["ratio"] > 0
        if r["stage"] == "compile":
            assert r["compile_s"] > 0 and r["variant"] == "regional eager"
    options = {r["variant"] for r in rows if r["stage"] == "option"}
    assert {"fuse_qkv", "channels_last", "fp16-safe VAE (no upcast)"} <= options
    assert "smoke mode" in out.with_suffix(".md").read_text()
    (sdxl,) = [line for line in stdout.splitlines() if line.startswith("sdxl: ")]
    assert sdxl.startswith("sdxl: latency ") and " at batch 1 " in sdxl  # like for like
    assert "H100 diffusers, 30 steps 2.5 s" in sdxl and "; throughput " in sdxl
