"""The API's ``/metrics``: its own request metrics plus fleet metrics read from Redis.

Under gunicorn the API's counters live in prometheus-client's multiprocess mode
(``config/gunicorn.py`` sets ``PROMETHEUS_MULTIPROC_DIR`` and cleans up after dead
workers). Fleet metrics are computed at scrape time from Redis, so one scrape of any
API process shows the whole fleet (read through ``tasks.jobs.fleet``): jobs waiting
and broker messages per model queue, ready workers, jobs finished by model and
status, webhook deliveries by outcome, seconds per image.
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

from tasks.jobs.fleet import Fleet
from tasks.messaging.names import queue_for

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

    def __init__(self, fleet: Fleet, models: list[str]) -> None:
        self.fleet = fleet
        self.models = models

    def describe(self) -> Iterator[Any]:
        """The families this collector yields (names and types), without Redis."""
        yield GaugeMetricFamily("kiln_queue_depth", "", labels=["model", "queue"])
        yield GaugeMetricFamily("kiln_broker_messages", "", labels=["model", "queue"])
        yield GaugeMetricFamily("kiln_ready_workers", "", labels=["model"])
        yield GaugeMetricFamily("kiln_seconds_per_image", "", labels=["model"])
        yield CounterMetricFamily("kiln_jobs_finished", "", labels=["model", "status"])
        yield CounterMetricFamily("kiln_webhook_deliveries", "", labels=["outcome"])

    def collect(self) -> Iterator[Any]:
        fleet = self.fleet
        depth = GaugeMetricFamily(
            "kiln_queue_depth",
            "Jobs waiting per model (submitted, not started)",
            labels=["model", "queue"],
        )
        messages = GaugeMetricFamily(
            "kiln_broker_messages",
            "Messages ready in each model's broker queue",
            labels=["model", "queue"],
        )
        ready = GaugeMetricFamily(
            "kiln_ready_workers", "Workers with a live heartbeat", labels=["model"]
        )
        per_image = GaugeMetricFamily(
            "kiln_seconds_per_image",
            "Moving average of pipeline seconds per image",
            labels=["model"],
        )
        in_broker = fleet.broker_messages(self.models)
        for name in self.models:
            depth.add_metric([name, queue_for(name)], fleet.queue_depth(name))
            if name in in_broker:
                messages.add_metric([name, queue_for(name)], in_broker[name])
            ready.add_metric([name], fleet.ready_workers(name))
            rate = fleet.s_per_image(name)
            if rate is not None:
                per_image.add_metric([name], rate)
        finished = CounterMetricFamily(
            "kiln_jobs_finished", "Jobs ended, fleet-wide", labels=["model", "status"]
        )
        for (model, status), value in fleet.job_counts().items():
            finished.add_metric([model, status], value)
        hooks = CounterMetricFamily(
            "kiln_webhook_deliveries", "Webhook deliveries by outcome", labels=["outcome"]
        )
        for outcome, value in fleet.webhook_counts().items():
            hooks.add_metric([outcome], value)
        yield from (depth, messages, ready, per_image, finished, hooks)


# Label values come from known sets only: a client cannot add series by inventing methods.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label() -> str:
    return request.method if request.method in METHODS else "other"


def init_metrics(app: Flask, jobs: Any) -> None:
    fleet = CollectorRegistry(auto_describe=False)
    fleet.register(FleetCollector(jobs.fleet, list(jobs.registry)))
    jobs.on_accept = job_submitted  # every door's jobs, counted where they are made

    @app.before_request
    def _start_timer() -> None:
        g.kiln_t0 = time.perf_counter()

    @app.after_request
    def _observe(resp: Response) -> Response:
        endpoint = request.endpoint or "unknown"
        if endpoint != "metrics":
            LATENCY.labels(endpoint).observe(time.perf_counter() - g.get("kiln_t0", 0.0))
            REQUESTS.labels(method_label(), endpoint, str(resp.status_code)).inc()
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
