"""The API's ``/metrics``: its own request metrics plus fleet metrics read from Redis.

Under gunicorn the API's counters live in prometheus-client's multiprocess mode
(``config/gunicorn.py`` sets ``PROMETHEUS_MULTIPROC_DIR`` and cleans up after dead
workers). Fleet metrics are computed at scrape time from Redis, so one scrape of any
API process shows the whole fleet: queue depth and ready workers per model, jobs
finished by model and status, webhook deliveries by outcome, seconds per image.
Workers serve their own histograms (``kiln worker --metrics-port``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from tasks import queues
from tasks.metrics import JOB_COUNTERS, WEBHOOK_COUNTERS
from tasks.runtime import ready_workers

SUBMITTED = Counter("kiln_jobs_submitted_total", "Jobs accepted by the API", ["model", "door"])
REQUESTS = Counter("kiln_http_requests_total", "HTTP requests", ["method", "endpoint", "status"])
LATENCY = Histogram(
    "kiln_http_request_seconds",
    "HTTP request latency",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1, 5),
)


class FleetCollector:
    """Metrics of the whole fleet, read from the job store at scrape time."""

    def __init__(self, dispatcher: Any) -> None:
        self.d = dispatcher

    def describe(self) -> Iterator[Any]:
        """The families this collector yields (names and types), without Redis."""
        yield GaugeMetricFamily("kiln_queue_depth", "", labels=["model", "queue"])
        yield GaugeMetricFamily("kiln_ready_workers", "", labels=["model"])
        yield GaugeMetricFamily("kiln_seconds_per_image", "", labels=["model"])
        yield CounterMetricFamily("kiln_jobs_finished", "", labels=["model", "status"])
        yield CounterMetricFamily("kiln_webhook_deliveries", "", labels=["outcome"])

    def collect(self) -> Iterator[Any]:
        r, models = self.d.store.redis, list(self.d.registry)
        broker_redis = self.d.settings.broker_url.startswith(("redis", "rediss"))
        depth = GaugeMetricFamily(
            "kiln_queue_depth", "Jobs waiting per model queue", labels=["model", "queue"]
        )
        ready = GaugeMetricFamily(
            "kiln_ready_workers", "Workers with a live heartbeat", labels=["model"]
        )
        per_image = GaugeMetricFamily(
            "kiln_seconds_per_image",
            "Moving average of pipeline seconds per image",
            labels=["model"],
        )
        for name in models:
            queue = f"gen.{name}"
            n = r.llen(queue) if broker_redis else queues.depth(r, name)
            depth.add_metric([name, queue], n)
            ready.add_metric([name], ready_workers(self.d.store, name))
            raw = r.hget(queues.stats_key(name), "s_per_image")
            if raw:
                per_image.add_metric([name], float(raw))
        finished = CounterMetricFamily(
            "kiln_jobs_finished", "Jobs ended, fleet-wide", labels=["model", "status"]
        )
        for key, value in (r.hgetall(JOB_COUNTERS) or {}).items():
            model, _, status = key.partition("|")
            finished.add_metric([model, status], int(value))
        hooks = CounterMetricFamily(
            "kiln_webhook_deliveries", "Webhook deliveries by outcome", labels=["outcome"]
        )
        for outcome, value in (r.hgetall(WEBHOOK_COUNTERS) or {}).items():
            hooks.add_metric([outcome], int(value))
        yield from (depth, ready, per_image, finished, hooks)


def init_metrics(app: Flask, dispatcher: Any) -> None:
    fleet = CollectorRegistry(auto_describe=False)
    fleet.register(FleetCollector(dispatcher))

    @app.before_request
    def _start_timer() -> None:
        g.kiln_t0 = time.perf_counter()

    @app.after_request
    def _observe(resp: Response) -> Response:
        endpoint = request.endpoint or "unknown"
        if endpoint != "metrics":
            LATENCY.labels(endpoint).observe(time.perf_counter() - g.get("kiln_t0", 0.0))
            REQUESTS.labels(request.method, endpoint, str(resp.status_code)).inc()
        return resp

    def metrics() -> Response:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            local = CollectorRegistry()
            MultiProcessCollector(local)
            body = generate_latest(local)
        else:
            body = generate_latest(REGISTRY)
        return Response(body + generate_latest(fleet), mimetype=CONTENT_TYPE_LATEST)

    app.add_url_rule("/metrics", "metrics", metrics)


def job_submitted(model: str, door: str) -> None:
    SUBMITTED.labels(model, door).inc()
