"""dtype/device selection: half precision on CUDA, fp32 fallback on the CPU."""

import logging

import pytest
import torch

from harness.pipelines import REGISTRY
from pipelines import devices
from pipelines.devices import is_cuda, pick_device, pick_dtype


@pytest.fixture(autouse=True)
def fresh_warnings() -> None:
    devices._warned.clear()


def test_fp16_on_cuda() -> None:
    assert pick_dtype("fp16", "cuda") is torch.float16


def test_bf16_for_flux_on_a_pinned_gpu() -> None:
    assert REGISTRY["flux-schnell"].spec.dtype == "bf16"
    assert pick_dtype("bf16", "cuda:0") is torch.bfloat16


def test_fp32_is_fp32_everywhere() -> None:
    assert pick_dtype("fp32", "cuda") is torch.float32
    assert pick_dtype("fp32", "cpu") is torch.float32


def test_cpu_falls_back_to_fp32_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="kiln.pipelines"):
        assert pick_dtype("fp16", "cpu") is torch.float32
        assert pick_dtype("fp16", "cpu") is torch.float32
    lines = [r for r in caplog.records if r.name == "kiln.pipelines"]
    assert len(lines) == 1
    assert "fp16" in lines[0].getMessage() and "fp32" in lines[0].getMessage()


def test_no_log_line_when_nothing_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="kiln.pipelines"):
        pick_dtype("fp16", "cuda:1")
        pick_dtype("fp32", "cpu")
    assert not [r for r in caplog.records if r.name == "kiln.pipelines"]


def test_unknown_dtype_names_the_value() -> None:
    with pytest.raises(ValueError, match="int8"):
        pick_dtype("int8", "cuda")


def test_device_choice() -> None:
    assert pick_device("cuda:1") == "cuda:1"
    assert pick_device("cpu") == "cpu"
    assert pick_device("") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_cuda_device_names() -> None:
    assert is_cuda("cuda") and is_cuda("cuda:3")
    assert not is_cuda("cpu") and not is_cuda("cudax")


@pytest.mark.parametrize(
    ("cpu_dtype", "native", "expected"),
    [
        ("fp32", True, torch.float32),  # the default: bit-equal across batch sizes
        ("bf16", False, torch.bfloat16),  # asked for: used even where it is emulated
        ("auto", True, torch.bfloat16),  # AVX512-BF16 / AMX
        ("auto", False, torch.float32),
    ],
)
def test_cpu_dtype_chooses_the_cpu_precision_of_half_models(
    monkeypatch: pytest.MonkeyPatch, cpu_dtype: str, native: bool, expected: torch.dtype
) -> None:
    monkeypatch.setattr(devices, "native_bf16", lambda: native)
    assert pick_dtype("fp16", "cpu", cpu_dtype=cpu_dtype) is expected
    assert pick_dtype("bf16", "cpu", cpu_dtype=cpu_dtype) is expected
    assert pick_dtype("fp32", "cpu", cpu_dtype=cpu_dtype) is torch.float32  # fp32 stays
    assert pick_dtype("fp16", "cuda", cpu_dtype=cpu_dtype) is torch.float16  # GPUs ignore it


def test_unknown_cpu_dtype_names_the_value() -> None:
    with pytest.raises(ValueError, match="fp8"):
        pick_dtype("fp16", "cpu", cpu_dtype="fp8")


def test_native_bf16_asks_torch() -> None:
    cpu = torch.cpu
    expected = cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported()
    assert devices.native_bf16() is bool(expected)
