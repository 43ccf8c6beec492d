"""``kiln doctor``: the host's facts and, per model, its weights' bytes and whether it fits
(counted from safetensors headers: nothing is loaded, built or downloaded)."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from harness.pipelines import REGISTRY
from harness.stack import BIN, ROOT, process_env
from pipelines import doctor
from pipelines.registry import resolve


def test_weights_are_counted_from_the_headers_in_the_dtype_they_run_in(tmp_path: Path) -> None:
    unet = tmp_path / "unet"
    unet.mkdir()
    save_file({"a": torch.zeros(10, 10), "b": torch.zeros(5)}, unet / "model.safetensors")
    save_file({"a": torch.zeros(10, 10, dtype=torch.float16)}, unet / "model.fp16.safetensors")
    assert doctor.numel_in(unet / "model.safetensors") == 105
    assert doctor.weight_files(tmp_path, None) == [unet / "model.safetensors"]
    assert doctor.weight_files(tmp_path, "fp16") == [unet / "model.fp16.safetensors"]


def test_a_tiny_model_on_this_cpu_is_servable_with_its_bytes(tiny_models_dir: Path) -> None:
    facts = doctor.host()
    v = doctor.check(
        REGISTRY["tiny-sd"], facts, device="cpu", profile="dev", models_dir=tiny_models_dir
    )
    assert v.ok and v.device == "cpu" and v.dtype == "float32"
    files = doctor.weight_files(tiny_models_dir / "sd-mini", None)
    assert v.weights_bytes == 4 * sum(doctor.numel_in(f) for f in files) > 0


def test_a_model_too_big_for_the_room_is_named_with_what_it_needs(tiny_models_dir: Path) -> None:
    facts = replace(doctor.host(), ram_available_bytes=2**20)  # 1 MiB free
    model = resolve(replace(REGISTRY["sdxl"].spec, tiny=None, source="org/sdxl-like"))
    v = doctor.check(model, facts, device="cpu", profile="dev", models_dir=tiny_models_dir)
    assert "published sdxl architecture" in v.weights
    assert not v.ok and v.problem.startswith("needs about") and "free on cpu" in v.problem


def test_kiln_doctor_names_torch_cuda_and_every_model(tiny_models_dir: Path) -> None:
    env = {**process_env(), "KILN_MODELS_DIR": str(tiny_models_dir), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [str(BIN / "kiln"), "doctor"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.startswith(f"torch {torch.__version__}: ")
    if not torch.cuda.is_available():
        assert "a CPU-only build (no CUDA)" in out.stdout
        assert "CUDA devices: none that torch can use" in out.stdout
    for name in REGISTRY:
        assert f"\n{name} ({REGISTRY[name].family.name}) on " in out.stdout
    assert out.stdout.count("; fits: ") == len(REGISTRY)
    assert out.returncode == 0, out.stderr  # tiny stand-ins fit this machine

    prod = {**env, "KILN_PROFILE": "prod", "KILN_DEVICE": ""}
    out = subprocess.run(
        [str(BIN / "kiln"), "doctor", "-m", "sdxl"],
        env=prod,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if not torch.cuda.is_available():
        assert out.returncode == 1
        assert "cannot serve: the prod profile with a fp16 model asks for CUDA" in out.stdout
        assert out.stderr.strip() == "cannot serve here: sdxl"
