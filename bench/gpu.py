"""The GPU proof: full-size SDXL and FLUX.1-schnell, bare and through Kiln, in one command.

    make gpu-proof        # = python -m bench.gpu
    python -m bench.gpu [--smoke] [--models sdxl,flux-schnell] [--batches 1,4,8]
                        [--no-kiln] [--no-oom] [--no-options] [--no-compile]
                        [--compile-mode default] [--weights-dir DIR] [--usd-per-gpu-hour 3.5]
                        [--budget-s 450] [--out docs/bench/gpu.json]

With a CUDA GPU: SDXL (1024², 30 steps, fp16, guidance 5: two UNet passes a step) and
FLUX.1-schnell (1024², 4 steps, bf16) built from their published configs with random
weights (pipelines/fullsize.py; no hub), saved to local disk once and then loaded from
there as a worker loads a model. Without one, or with ``--smoke``: **smoke mode**, the
same stages and code on the CPU with tiny configs of the same architectures (64², 2
steps, batches 1 and 2, compiled with dynamo's ``eager`` backend), so a typo is found in
CI, not in a GPU window.

Stages, each figure printed and saved (``--out`` JSON and a Markdown table beside it)
the moment it lands, so a run cut short keeps what it measured; a stage that fails is
reported (``failed`` in the JSON) and the later ones still run:

0. save and load (bench/gpu_disk.py): the weights written once with ``save_pretrained``
   (SDXL as the fp16 variant files), then ``load_model`` of an entry whose ``source`` is
   that folder (SDXL with ``variant: fp16`` and a ``vae:`` override): disk-to-device
   seconds and the process's peak host memory;
1. bare: that loaded model, one ``run_batch`` per
   batch size after a 2-step call of the same shape: s/image, images/s, peak GPU
   memory, MFU (the denoiser's FLOPs from torch's FlopCounterMode, a 2-step minus a
   1-step call, over 989 TFLOP/s dense fp16/bf16: VAE and text encoders left out, so a
   lower bound), $/1k images at ``--usd-per-gpu-hour``;
2. kiln: the same images as bursts through a real worker (Valkey, S3 server, API and
   ``kiln worker`` on this machine, harness/stack.py), one worker per batch size with
   ``max_batch`` = that size: a warm burst, then 2 × batch jobs; kiln/bare throughput;
   (the workers load the saved weights too);
3. oom: a batch through the engine with the device nearly full (bench/gpu_disk.py): the
   split, every image back, and the next batch in the model's dtypes;
4. options: one model option at a time against the base entry (batch 1): fused QKV,
   channels_last, the fp16-safe SDXL VAE (no fp32 upcast), TF32 off (set off for real:
   the loader sets TF32 as each entry says), classic attention instead of SDPA;
5. compile: ``compile: true`` (regional, as the entries default) with
   ``--compile-mode``, one static graph per batch bucket, compile time apart (the first
   2-step call of each shape).

``--budget-s`` (GPU default 450 s) skips a stage whose estimate no longer fits, and says
so. Prints the table last, then per model the batch-1 latency against the published
latency anchors and the best throughput against the project's goal (like for like).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import gpu_disk
from bench.common import RESULTS
from bench.gpu_parts import (
    PEAK_FLOPS,
    Proof,
    Setup,
    allocated_gib,
    entry,
    free,
    items,
    load,
    params_for,
    setups,
    timed_call,
)

OPTIONS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "sdxl": [
        ("fuse_qkv", {"fuse_qkv": True}),
        ("channels_last", {"channels_last": True}),
        ("fp16-safe VAE (no upcast)", {"upcast_vae": False}),
        ("tf32 off", {"tf32": False}),
        ("attention default (not SDPA)", {"attention": "default"}),
    ],
    "flux-schnell": [("fuse_qkv", {"fuse_qkv": True})],
}


def flops_per_image(setup: Setup, loaded: Any) -> float:
    """The denoiser's FLOPs for one image: a 2-step minus a 1-step call, × steps."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pipelines.batch import run_batch

    def count(steps: int) -> float:
        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode():
            run_batch(loaded, params_for(setup, loaded, steps=steps), items(1))
        return float(counter.get_total_flops())

    return (count(2) - count(1)) * setup.steps


def bare_stage(proof: Proof, setup: Setup, batches: list[int], loaded: Any, build_s: float) -> dict:
    params = sum(p.numel() for p in loaded.denoiser.parameters())
    model_gib = allocated_gib(proof.device)  # what loading left allocated: the weights
    proof.say(f"{setup.model}: ready in {build_s:.1f}s; denoiser {params / 1e9:.3f} B parameters")
    flops = flops_per_image(setup, loaded)
    proof.notes.setdefault(setup.model, {}).update(
        build_s=round(build_s, 2), denoiser_params=params, denoiser_flops_per_image=flops
    )
    proof.say(f"{setup.model}: {flops / 1e12:.3f} TFLOP per image (denoiser)")
    spi: dict[int, float] = {}
    peaks: dict[int, float] = {}
    for b in batches:
        _first, spi[b], peak = timed_call(setup, loaded, b)
        peaks[b] = peak or 0.0
        proof.add(
            model=setup.model,
            stage="bare",
            variant="base",
            batch=b,
            s_per_image=spi[b],
            mfu=flops / spi[b] / PEAK_FLOPS,
            peak_gib=peak,
        )
    return {"build_s": build_s, "spi": spi, "flops": flops, "model_gib": model_gib, "peak": peaks}


# -- through Kiln ------------------------------------------------------------------------
@contextlib.contextmanager
def kiln_stack(workdir: Path, models_file: Path, env: dict[str, str]) -> Iterator[tuple[Any, Any]]:
    """Valkey, an S3 server and the API on this machine; workers are started per stage."""
    from harness.http import KilnHTTP
    from harness.stack import Stack

    stack = Stack(
        workdir / "stack",
        models_dir=workdir / "models",
        env_overrides={
            "KILN_MODELS_FILE": str(models_file),
            "KILN_LOG_LEVEL": "WARNING",
            **env,
        },
    )
    try:
        stack.start_servers()
        stack.start_api()
        yield stack, KilnHTTP(stack.api_url)
    finally:
        stack.close()


def kiln_group(
    proof: Proof, group: list[tuple[Setup, int]], bare: dict, stack: Any, api: Any
) -> float:
    """Start the group's workers together (one per model and batch size, ``max_batch`` =
    that size), then for each in turn a warm burst of b jobs and 2 × b jobs measured.
    Returns the seconds the workers took to start."""
    from bench.common import burst

    names = [f"{s.model}-b{b}" for s, b in group]
    proof.say(f"kiln: starting {len(names)} worker(s) together: {', '.join(names)}")
    t0 = time.perf_counter()
    procs = {name: stack.start_worker(name, wait=False) for name in names}
    try:
        for name, proc in procs.items():
            stack.wait_worker_ready(name, proc, timeout=900)
        start_s = time.perf_counter() - t0
        proof.notes.setdefault("worker_start_s", {})[" + ".join(names)] = round(start_s, 1)
        proof.say(f"kiln: worker(s) ready in {start_s:.1f}s")
        for (setup, b), name in zip(group, names, strict=True):
            job = dict(model=name, width=setup.size, height=setup.size)
            warm = min(2, setup.steps)
            burst(stack, api, [dict(job, prompt=f"warm {i}", seed=i, steps=warm) for i in range(b)])
            jobs = [
                dict(job, prompt=f"a red fox {i}", seed=i, steps=setup.steps) for i in range(2 * b)
            ]
            res = burst(stack, api, jobs)
            spi = res["wall_s"] / res["images"]
            proof.add(
                model=setup.model,
                stage="kiln",
                variant=f"max_batch {b}",
                batch=b,
                s_per_image=spi,
                ratio=bare[setup.model]["spi"][b] / spi,
                calls=res["calls"],
                batch_sizes=sorted({r.get("batch_size") for r in res["records"].values()}),
            )
    finally:
        t_stop = time.perf_counter()
        stop_all(list(procs.values()))
        proof.say(f"kiln: worker(s) stopped in {time.perf_counter() - t_stop:.1f}s")
    return start_s


def stop_all(procs: list[Any], timeout: float = 30) -> None:
    """SIGTERM every process group at once, then wait for each (SIGKILL past timeout)."""
    import signal

    for proc in procs:
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGTERM)
    for proc in procs:
        proc.stop(timeout=timeout)  # already signalled: waits, then kills if still there


def kiln_groups(
    proof: Proof, models: list[Setup], batches: list[int], bare: dict
) -> list[list[tuple[Setup, int]]]:
    """Which workers start together: all of them in smoke mode; on a GPU, a model's
    workers together when their copies of the model and one batch's peak fit in 85 % of
    its memory, else one at a time."""
    if proof.device != "cuda":
        return [[(s, b) for s in models for b in batches]]
    import torch

    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    groups = []
    for s in models:
        model_gib, peak = bare[s.model]["model_gib"], max(bare[s.model]["peak"].values())
        if len(batches) * model_gib + (peak - model_gib) <= 0.85 * total:
            groups.append([(s, b) for b in batches])
        else:
            groups += [[(s, b)] for b in batches]
    return groups


# -- one option at a time, and compile -------------------------------------------------------
def option_stage(
    proof: Proof, setup: Setup, label: str, changes: dict, base_spi: float, models_dir: Path
) -> None:
    raw = entry(setup, setup.model, max_batch=1, **changes)
    loaded, _ = load(raw, proof.device, models_dir)
    _first, spi, peak = timed_call(setup, loaded, 1)
    proof.add(
        model=setup.model,
        stage="option",
        variant=label,
        batch=1,
        s_per_image=spi,
        ratio=base_spi / spi,
        peak_gib=peak,
    )
    del loaded
    free(proof.device)


def compile_stage(
    proof: Proof,
    setup: Setup,
    batches: list[int],
    bare: dict,
    mode: str,
    backend: str,
    models_dir: Path,
) -> None:
    raw = entry(
        setup,
        setup.model,
        max_batch=max(batches),
        compile=True,
        compile_mode=mode,
        compile_backend=backend,
    )
    loaded = None
    compile_est = 30.0 if proof.mode == "smoke" else 150.0
    try:
        for b in batches:
            est = bare["build_s"] * (loaded is None) + compile_est + 3 * b * bare["spi"][b]
            if not proof.fits(f"{setup.model} compile batch {b}", est):
                continue
            if loaded is None:
                loaded, _ = load(raw, proof.device, models_dir)
            first, spi, peak = timed_call(setup, loaded, b)
            compile_est = first
            proof.add(
                model=setup.model,
                stage="compile",
                variant=("regional " if raw.get("compile_regional", True) else "")
                + (f"{backend}/{mode}" if backend == "inductor" else backend),
                batch=b,
                s_per_image=spi,
                ratio=bare["spi"][b] / spi,
                compile_s=first,
                mfu=bare["flops"] / spi / PEAK_FLOPS,
                peak_gib=peak,
            )
    finally:
        del loaded
        free(proof.device)


# -- the run ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="The GPU proof (smoke mode on a CPU)")
    ap.add_argument("--smoke", action="store_true", help="tiny configs on the CPU, even with a GPU")
    ap.add_argument("--models", default="sdxl,flux-schnell")
    ap.add_argument("--batches", default="", help="default 1,4,8 (smoke: 1,2)")
    ap.add_argument("--kiln-batches", default="", help="default: --batches (smoke: the largest)")
    ap.add_argument("--compile-batches", default="", help="default: --batches (smoke: the largest)")
    ap.add_argument("--no-kiln", action="store_true", help="skip the through-Kiln bursts")
    ap.add_argument("--no-oom", action="store_true", help="skip the out-of-memory stage")
    ap.add_argument("--no-options", action="store_true", help="skip the one-option runs")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode on CUDA")
    ap.add_argument("--usd-per-gpu-hour", type=float, default=3.5)
    ap.add_argument("--budget-s", type=float, default=None, help="GPU default 450; smoke none")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--weights-dir", type=Path, default=None, help="saved weights (kept)")
    args = ap.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available() and not args.smoke
    smoke = not cuda
    device = "cuda" if cuda else "cpu"
    mode = "smoke" if smoke else "full"
    name = torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores), no CUDA"
    out = args.out or RESULTS / ("gpu.json" if cuda else "gpu-smoke.json")
    budget = args.budget_s if args.budget_s is not None else (None if smoke else 450.0)
    proof = Proof(mode, device, name, out, budget, args.usd_per_gpu_hour)
    if smoke:
        why = "--smoke asked" if args.smoke and torch.cuda.is_available() else "no CUDA GPU here"
        proof.say(
            f"SMOKE MODE ({why}): tiny configs of the same architectures on the CPU, the same "
            "stages and code; the figures only prove that the proof runs"
        )
    else:
        proof.say(f"full mode on {name}; budget {budget:.0f}s")
    batches = [int(b) for b in (args.batches or ("1,2" if smoke else "1,4,8")).split(",")]
    # Smoke mode on a shared 2-core CPU: one torch thread per process (OpenMP threads
    # that wait for each other on a core someone else holds make 2 threads ~10x slower),
    # and Kiln and compile at the largest batch only (a worker start and a dynamo trace
    # each cost seconds there): the same stages and code, in CI's minute.
    default_few = str(max(batches)) if smoke else ",".join(map(str, batches))
    kiln_batches = [int(b) for b in (args.kiln_batches or default_few).split(",")]
    compile_batches = [int(b) for b in (args.compile_batches or default_few).split(",")]
    stack_env: dict[str, str] = {"KILN_DEVICE": device}
    if smoke:
        torch.set_num_threads(1)
        stack_env["KILN_TORCH_THREADS"] = "1"
    chosen = setups(smoke)
    models = [chosen[m] for m in args.models.split(",")]
    backend = "eager" if smoke else "inductor"
    workdir = Path(tempfile.mkdtemp(prefix="kiln-gpu-proof-"))
    models_dir = workdir / "models"
    proof.save()

    # 0-1, 3. Per model: its weights saved once and loaded as a worker loads them; the
    #    bare pipeline; out-of-memory recovery. One model on the device at a time.
    weights_root = args.weights_dir or workdir / "weights"
    bare: dict[str, dict] = {}
    for i, s in enumerate(models):
        save_est = 20.0 if smoke else 150.0
        if proof.fits(f"{s.model} save", save_est):
            with proof.stage(f"{s.model} save"):
                models[i] = s = replace(s, weights=gpu_disk.save_stage(proof, s, weights_root))
        if s.weights is None:
            proof.say(f"{s.model}: no saved weights; random weights built on the device")
        loaded = None
        with proof.stage(f"{s.model} load"):
            raw = entry(s, s.model, max_batch=max(batches))
            loaded, load_s = gpu_disk.load_stage(proof, s, raw, models_dir)
        if loaded is None:
            continue
        with proof.stage(f"{s.model} bare"):
            bare[s.model] = bare_stage(proof, s, batches, loaded, load_s)
        if not args.no_oom and s.model in bare:
            spi = bare[s.model]["spi"]
            est = 2 * max(batches) * spi[max(batches)] + 10
            if proof.fits(f"{s.model} oom", est):
                with proof.stage(f"{s.model} oom"):
                    gpu_disk.oom_stage(proof, s, loaded, max(batches), bare[s.model])
        del loaded
        free(proof.device)
    models = [s for s in models if s.model in bare]  # the later stages compare with bare

    # 2. Through Kiln: a real stack, one worker per batch size.
    if not args.no_kiln:
        raws = [entry(s, f"{s.model}-b{b}", max_batch=b) for s in models for b in kiln_batches]
        models_file = workdir / "models.yaml"
        import yaml

        models_file.write_text(yaml.safe_dump({"models": raws}))
        start_est = 20.0 if smoke else 60.0
        proof.say("kiln: starting Valkey, the S3 server and the API")
        with proof.stage("kiln"), kiln_stack(workdir, models_file, stack_env) as (stack, api):
            for group in kiln_groups(proof, models, kiln_batches, bare):
                est = start_est + sum(4 * b * bare[s.model]["spi"][b] for s, b in group)
                what = "kiln " + ", ".join(f"{s.model} batch {b}" for s, b in group)
                if proof.fits(what, est):
                    with proof.stage(what):
                        start_est = kiln_group(proof, group, bare, stack, api)

    # 3. One option at a time, batch 1.
    if not args.no_options:
        for s in models:
            spis = bare[s.model]["spi"]
            base_spi = spis.get(1) or spis[min(spis)] * min(spis)  # one image's call
            for label, changes in OPTIONS[s.model]:
                what = f"{s.model} option {label}"
                if proof.fits(what, bare[s.model]["build_s"] + 3 * base_spi):
                    proof.say(f"{s.model}: option {label}")
                    with proof.stage(what):
                        option_stage(proof, s, label, changes, base_spi, models_dir)

    # 4. torch.compile, one static graph per batch size.
    if not args.no_compile:
        for s in models:
            proof.say(f"{s.model}: torch.compile ({backend}, mode {args.compile_mode})")
            with proof.stage(f"{s.model} compile"):
                compile_stage(
                    proof, s, compile_batches, bare[s.model], args.compile_mode, backend, models_dir
                )

    proof.save()
    print(f"\n{name}, {mode} mode, ${args.usd_per_gpu_hour}/GPU-hour, {proof.elapsed():.0f}s\n")
    print(proof.table())
    print()
    for line in proof.anchor_lines():
        print(line)
    if proof.skipped:
        print(f"\nskipped for the budget: {', '.join(s['stage'] for s in proof.skipped)}")
    for f in proof.failed:
        print(f"FAILED {f['stage']}: {f['error']}")
    if smoke:
        print("\nRan in SMOKE MODE: tiny models on the CPU; run `make gpu-proof` on a CUDA GPU.")
    print(f"\nsaved {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
