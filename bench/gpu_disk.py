"""The GPU proof's production-like stages: weights saved to disk once and loaded through a
models file's ``source`` as a worker loads them, and out-of-memory recovery.

- **save**: the architecture with random weights, built on the device, written once
  with ``save_pretrained`` (SDXL as the hub ships it: the ``fp16`` variant files) to a
  local folder; kept for the next run.
- **load**: ``load_model`` of an entry whose ``source`` is that folder (SDXL with
  ``variant: fp16`` and the folder's VAE as a ``vae:`` override), as a worker loads it:
  ``from_pretrained``, the tokenizers from disk, the copy from host to device. Reports
  the disk-to-device seconds and the process's peak host memory over the load.
- **oom**: a batch through the real engine with the device nearly full (a filler
  tensor leaves room for about one image; on the CPU, where nothing can be filled, the
  error is raised in ``vae.decode`` for more than one image, where a GPU raises it):
  the engine splits and retries, every image comes back, and the next batch runs with
  every component in its loaded dtype.
"""

from __future__ import annotations

import contextlib
import gc
import time
from pathlib import Path
from typing import Any

from bench.gpu_parts import (
    Setup,
    allocated_gib,
    free,
    items,
    model_of,
    params_for,
    sync,
    variant_of,
)
from harness.pipelines import raise_oom_above

GiB = 2**30


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def save_stage(proof: Any, setup: Setup, root: Path) -> Path:
    """Write the architecture's random weights once; returns the folder."""
    import torch

    from pipelines import fullsize

    folder = root / setup.arch
    if (folder / "model_index.json").exists():
        proof.say(f"{setup.model}: weights already saved in {folder}")
        return folder
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[setup.dtype]
    t0 = time.perf_counter()
    pipe = fullsize.build(setup.arch, dtype, proof.device)
    partial = folder.with_suffix(".partial")
    pipe.save_pretrained(partial, variant=variant_of(setup), safe_serialization=True)
    partial.rename(folder)
    del pipe
    free(proof.device)
    proof.add(
        model=setup.model,
        stage="save",
        variant=f"save_pretrained {variant_of(setup) or setup.dtype}",
        disk_s=time.perf_counter() - t0,
        disk_gib=folder_bytes(folder) / GiB,
    )
    return folder


def host_peak_reset() -> None:
    """Start the process's peak resident memory (VmHWM) over from now (Linux)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def host_peak_gib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / GiB
    except OSError:
        pass
    return None


def load_stage(
    proof: Any, setup: Setup, raw: dict[str, Any], models_dir: Path
) -> tuple[Any, float]:
    """``load_model`` of the saved weights, timed from disk to device."""
    from pipelines.loader import load_model

    gc.collect()
    host_peak_reset()
    t0 = time.perf_counter()
    loaded = load_model(model_of(raw), device=proof.device, models_dir=models_dir)
    sync(proof.device)
    load_s = time.perf_counter() - t0
    how = ["from_pretrained"] if raw.get("source") else [f"random weights ({raw['random_init']})"]
    how += [f"{raw['variant']} variant"] if raw.get("variant") else []
    how += ["vae override"] if raw.get("vae") else []
    proof.add(
        model=setup.model,
        stage="load",
        variant=" + ".join(how),
        disk_s=load_s,
        host_peak_gib=host_peak_gib(),
        peak_gib=allocated_gib(proof.device) or None,
    )
    return loaded, load_s


def oom_stage(proof: Any, setup: Setup, loaded: Any, batch: int, bare: dict[str, Any]) -> None:
    """One batch of ``batch`` images with the device nearly full, then the next batch."""
    import torch

    from pipelines.batch import run_batch
    from pipelines.engine import Engine, Request

    cuda = proof.device.startswith("cuda")
    filler, undo = None, None
    if cuda:
        per_image = max(0.25, bare["peak"].get(1, 0.0) - bare["model_gib"]) * GiB
        room, _total = torch.cuda.mem_get_info()
        leave = int(1.5 * per_image)
        if room > leave:
            filler = torch.empty(room - leave, dtype=torch.uint8, device=proof.device)
        how = f"device filled to {leave / GiB:.1f} GiB free"
    else:
        _refused, undo = raise_oom_above(loaded.pipe.vae, "decode", rows=1)
        how = "OOM raised in vae.decode (CPU)"
    engine = Engine(loaded.model, models_dir=Path("."), load=lambda: loaded)
    engine.start()
    try:
        engine.wait_ready(60)
        params = params_for(setup, loaded)
        futures = [
            engine.submit(Request(id=f"oom{i}", prompt=it.prompt, seeds=[it.seed], params=params))
            for i, it in enumerate(items(batch))
        ]
        done = 0
        for f in futures:
            try:
                f.result(1800)
                done += 1
            except Exception as exc:
                proof.say(f"  oom stage: an image failed: {type(exc).__name__}: {exc}"[:300])
    finally:
        engine.stop()
        if undo is not None:
            undo()
        del filler
        free(proof.device)
    run_batch(loaded, params_for(setup, loaded), items(batch))  # the next batch, as loaded
    off = [n for n, d in loaded.dtypes.items() if loaded.pipe.components[n].dtype != d]
    splits = engine.stats["oom_splits"]
    dtypes = "as loaded" if not off else f"changed: {', '.join(off)}"
    proof.add(
        model=setup.model,
        stage="oom",
        variant=how,
        batch=batch,
        oom_splits=splits,
        images_ok=f"{done}/{batch}",
        dtypes_after=dtypes,
        check=f"{splits} split(s), {done}/{batch} images, next batch's dtypes {dtypes}",
    )
