"""Worker metrics (Prometheus).

Each worker serves its own ``/metrics`` on ``--metrics-port`` (one port per worker
process: scrape them like any exporter): queue wait, run, upload and batch durations,
batch size and fill, images, OOM splits, model load time, GPU memory, and the graphs
torch.compile made (at warm-up, and any recompile while serving). Counts that
the whole fleet shares (jobs ended by model and status, webhook deliveries by
outcome) are also counted in Redis (``tasks.jobs.bookkeeping``), so the API's
``/metrics`` shows them for every host without scraping each worker.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("kiln.metrics")
SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)

JOBS_FINISHED = Counter(
    "kiln_worker_jobs_finished_total", "Jobs this worker ended", ["model", "status"]
)
QUEUE_WAIT = Histogram("kiln_job_queue_wait_seconds", "Submit to start", ["model"], buckets=SECONDS)
RUN = Histogram(
    "kiln_job_run_seconds", "Pipeline time of a job's batches", ["model"], buckets=SECONDS
)
UPLOAD = Histogram(
    "kiln_job_upload_seconds", "PNG encode and upload of a job", ["model"], buckets=SECONDS
)
IMAGES = Counter("kiln_images_generated_total", "Images made (rate() = images/s)", ["model"])
BATCH_SIZE = Histogram(
    "kiln_batch_size",
    "Images per pipeline call",
    ["model"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32),
)
BATCH_FILL = Histogram(
    "kiln_batch_fill_ratio",
    "Batch size / max_batch",
    ["model"],
    buckets=(0.125, 0.25, 0.5, 0.75, 0.99, 1.0),
)
BATCH_SECONDS = Histogram(
    "kiln_batch_seconds", "Latency of one pipeline call", ["model"], buckets=SECONDS
)
OOM_SPLITS = Counter("kiln_oom_splits_total", "Batches split after CUDA OOM", ["model"])
MODEL_LOAD = Gauge("kiln_model_load_seconds", "Model load and warm-up time", ["model"])
COMPILED_GRAPHS = Gauge(
    "kiln_compiled_graphs", "Graphs torch.compile made in this worker, warm-up included", ["model"]
)
RECOMPILES = Counter(
    "kiln_recompiles_total",
    "Graphs compiled while serving, after warm-up (a shape or batch size it did not cover)",
    ["model"],
)
EAGER_CALLS = Counter(
    "kiln_compile_eager_calls_total",
    "Calls of a compiled model at a shape warm-up did not compile (size, guidance branch "
    "or LoRA set), run eager rather than compiled on the engine thread",
    ["model"],
)
MODEL_LOADS = Counter(
    "kiln_model_loads_total",
    "Models loaded onto the device, from disk or from the host-RAM cache",
    ["model", "source"],
)
MODEL_LOAD_SECONDS = Histogram(
    "kiln_model_load_duration_seconds",
    "Seconds one load took (warm-up included)",
    ["model"],
    buckets=SECONDS,
)
MODEL_EVICTIONS = Counter("kiln_model_evictions_total", "Models evicted from the device", ["model"])
MODEL_RESIDENT = Gauge("kiln_model_resident", "1 while the model is on the device", ["model"])
MODEL_DEVICE_BYTES = Gauge(
    "kiln_model_device_bytes", "Device bytes of a resident model's weights", ["model"]
)
GPU_ALLOCATED = Gauge("kiln_gpu_memory_allocated_bytes", "torch.cuda.memory_allocated", ["model"])
GPU_PEAK = Gauge("kiln_gpu_memory_peak_bytes", "torch.cuda.max_memory_allocated", ["model"])


def serve(port: int) -> None:
    if port:
        start_http_server(port, addr="0.0.0.0")
        log.info("worker metrics on :%d/metrics", port)


def observe_batch(model: str, *, seconds: float, size: int, fill: float, oom_splits: int) -> None:
    BATCH_SECONDS.labels(model).observe(seconds)
    BATCH_SIZE.labels(model).observe(size)
    BATCH_FILL.labels(model).observe(min(1.0, fill))
    IMAGES.labels(model).inc(size)
    OOM_SPLITS.labels(model).inc(0)
    if oom_splits:
        OOM_SPLITS.labels(model).inc(oom_splits)


def observe_compiles(model: str, *, graphs: int, new: int, eager: int = 0) -> None:
    """``graphs`` made so far; ``new`` of them, and ``eager`` calls, since the last look."""
    COMPILED_GRAPHS.labels(model).set(graphs)
    RECOMPILES.labels(model).inc(max(0, new))
    EAGER_CALLS.labels(model).inc(max(0, eager))


def observe_gpu(model: str) -> None:
    try:
        import torch

        if torch.cuda.is_available():
            GPU_ALLOCATED.labels(model).set(torch.cuda.memory_allocated())
            GPU_PEAK.labels(model).set(torch.cuda.max_memory_allocated())
    except Exception:  # metrics never break a batch
        pass


def job_finished(model: str, status: str, record: dict[str, Any] | None = None) -> None:
    """This worker's count (the fleet-wide one is kept by the job store as a job ends)."""
    JOBS_FINISHED.labels(model, status).inc()
    if record and record.get("started_at") and record.get("created_at"):
        QUEUE_WAIT.labels(model).observe(max(0.0, record["started_at"] - record["created_at"]))


def model_loaded(load: Any) -> None:
    """A model came onto the device (``pipelines.resident.Loaded``)."""
    MODEL_LOADS.labels(load.model, load.source).inc()
    MODEL_LOAD_SECONDS.labels(load.model).observe(load.seconds)
    MODEL_LOAD.labels(load.model).set(load.seconds)
    MODEL_RESIDENT.labels(load.model).set(1)
    MODEL_DEVICE_BYTES.labels(load.model).set(load.device_bytes)
    log.info(
        "model %s loaded from %s in %.2fs (%d bytes)",
        load.model,
        load.source,
        load.seconds,
        load.device_bytes,
        extra={"model": load.model, "duration_s": round(load.seconds, 3)},
    )


def model_evicted(model: str) -> None:
    MODEL_EVICTIONS.labels(model).inc()
    MODEL_RESIDENT.labels(model).set(0)
    MODEL_DEVICE_BYTES.labels(model).set(0)
