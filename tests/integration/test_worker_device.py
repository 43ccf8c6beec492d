"""A GPU worker serves on a GPU or not at all: ``kiln worker --gpu 0`` on a machine
where torch sees no CUDA device refuses to start, in one line that names CUDA and the
fix, before it loads anything or says it is ready; ``KILN_DEVICE=cpu`` is the way to a
CPU worker on purpose."""

from __future__ import annotations

import pytest
import torch

from harness.stack import Stack, stop_all

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is here")


def test_a_gpu_worker_without_cuda_refuses_to_start_and_says_why(servers: Stack) -> None:
    before = servers.ready_workers("tiny-sd")
    out = servers.run_kiln("worker", "--model", "tiny-sd", "--gpu", "0", env={"KILN_DEVICE": ""})
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("Error: --gpu 0 asks for a CUDA GPU, but torch sees none")
    assert "CPU-only build" in lines[0] and "torch==" in lines[0]  # what it is, what to do
    assert "KILN_DEVICE=cpu" in lines[0]
    assert "ready" not in out.stdout + out.stderr  # never loaded, never consumed
    assert servers.ready_workers("tiny-sd") == before


def test_the_prod_profile_asks_for_cuda_for_a_half_precision_model(servers: Stack) -> None:
    out = servers.run_kiln(
        "worker", "--model", "tiny-sd", env={"KILN_DEVICE": "", "KILN_PROFILE": "prod"}
    )
    assert out.returncode == 1
    assert "the prod profile with a fp16 model asks for a CUDA GPU" in out.stderr


def test_kiln_device_cpu_starts_a_pinned_worker_on_purpose(stack: Stack) -> None:
    before, ready = len(stack.procs), stack.ready_workers("tiny-sd")
    try:
        proc = stack.start_worker(
            "tiny-sd",
            name="worker-cpu-on-purpose",
            args=("--gpu", "0"),
            env={"KILN_DEVICE": "cpu"},
            wait=False,
        )
        stack.wait_worker_ready("tiny-sd", proc, count=ready + 1)
    finally:
        stop_all(stack.procs[before:])
    assert "on cpu as float32" in proc.output()  # its load line: the device and dtype
