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


# -- a GPU worker serves on a GPU or not at all -------------------------------------------
@pytest.mark.parametrize(
    ("device", "gpu", "profile", "dtype", "expected"),
    [
        ("cpu", 0, "prod", "fp16", ("cpu", None)),  # asked for the CPU: the one way there
        ("", 0, "dev", "fp32", ("cuda", "--gpu 0")),
        ("cuda:1", None, "dev", "fp32", ("cuda:1", "KILN_DEVICE=cuda:1")),
        ("", None, "prod", "bf16", ("cuda", "the prod profile with a bf16 model")),
        ("", None, "prod", "fp32", ("", None)),
        ("", None, "dev", "fp16", ("", None)),  # the dev profile: CUDA when present
    ],
)
def test_what_asks_for_cuda(
    device: str, gpu: int | None, profile: str, dtype: str, expected: tuple[str, str | None]
) -> None:
    got = devices.serving_device(device=device, gpu=gpu, profile=profile, dtype=dtype)
    assert got == expected


def test_a_cpu_build_of_torch_is_named_with_the_fix() -> None:
    why = devices.no_cuda_reason(torch_version="2.13.0+cpu", cuda_build=None, driver=None)
    assert "torch 2.13.0+cpu is a CPU-only build" in why
    assert "torch==2.13.0" in why and "TORCH_CUDA" in why


def test_a_cuda_13_wheel_on_an_r570_driver_names_the_build_that_runs_there() -> None:
    why = devices.no_cuda_reason(torch_version="2.13.0", cuda_build="13.0", driver="570.86.15")
    assert "built for CUDA 13.0, which needs driver R580+" in why
    assert "driver is 570.86.15" in why
    assert "--build-arg TORCH_CUDA=cu128" in why


def test_the_build_for_each_driver() -> None:
    assert devices.build_for_driver("580.65.06") == "cu130"
    assert devices.build_for_driver("570.124.06") == "cu128"
    assert devices.build_for_driver("535.230.02") == "cu126"
    assert devices.build_for_driver("470.256.02") is None


def test_a_cuda_build_with_no_driver_asks_whether_a_gpu_is_visible() -> None:
    why = devices.no_cuda_reason(torch_version="2.13.0", cuda_build="13.0", driver=None)
    assert "no NVIDIA driver answered" in why and "CUDA_VISIBLE_DEVICES" in why


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: CUDA is not missing")
def test_require_cuda_refuses_in_one_line_naming_what_asked() -> None:
    from config.errors import DeviceUnavailable

    with pytest.raises(DeviceUnavailable) as info:
        devices.require_cuda("cuda", asked_by="--gpu 0")
    text = str(info.value)
    assert text.startswith("--gpu 0 asks for a CUDA GPU, but torch sees none")
    assert "KILN_DEVICE=cpu" in text and "\n" not in text
