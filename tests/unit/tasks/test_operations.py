"""Heartbeats that go away at once on a clean stop; task kwargs shown without secrets."""

from __future__ import annotations

import os
import time

import pytest
import redis

from config.settings import from_env
from tasks import runtime as rt
from tasks.records import kwargs_repr, task_result

SYSTEM_REDIS = "redis://127.0.0.1:6379/15"


def test_kwargs_repr_hides_the_webhook_path_query_and_credentials() -> None:
    kwargs = {
        "prompt": "a fox",
        "model": "tiny-sd",
        "job_id": "j1",
        "webhook_url": "https://user:pw@hooks.example.com/T0/B1/tok-123?sig=abc",
    }
    shown = kwargs_repr(kwargs)
    assert "a fox" in shown and "tiny-sd" in shown and "j1" in shown
    assert "https://hooks.example.com/***" in shown
    for secret in ("tok-123", "abc", "pw", "user"):
        assert secret not in shown
    assert kwargs["webhook_url"].endswith("sig=abc")  # the task still gets the real URL
    assert "webhook_url': None" in kwargs_repr({"webhook_url": None})


def test_task_result_redacts_the_webhook_url_only() -> None:
    record = {
        "id": "j1",
        "status": "succeeded",
        "images": [{"key": "k"}],
        "webhook": {"url": "https://hooks.example.com/tok-123", "state": "pending"},
    }
    shown = task_result(record)
    assert shown["webhook"] == {"url": "https://hooks.example.com/***", "state": "pending"}
    assert shown["images"] == record["images"] and shown["id"] == "j1"
    assert record["webhook"]["url"].endswith("tok-123")  # the stored record is untouched
    assert task_result({"id": "j2", "webhook": None}) == {"id": "j2", "webhook": None}


@pytest.fixture
def runtime() -> rt.Runtime:
    try:
        redis.Redis.from_url(SYSTEM_REDIS).ping()
    except redis.RedisError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    settings = from_env({"KILN_REDIS_URL": SYSTEM_REDIS, "KILN_BROKER_URL": SYSTEM_REDIS})
    return rt.build(settings, "tiny-sd", hostname=f"unit-{os.getpid()}-{time.time_ns()}")


def test_heartbeat_is_removed_at_once_and_not_written_again(runtime: rt.Runtime) -> None:
    key = rt.ready_key("tiny-sd", runtime.hostname)
    r = runtime.store.redis
    before = rt.ready_workers(runtime.store, "tiny-sd")
    beat = runtime.start_heartbeat()
    deadline = time.monotonic() + 10
    while not r.exists(key) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert r.exists(key) and 0 < r.ttl(key) <= rt.HEARTBEAT_TTL_S
    assert rt.ready_workers(runtime.store, "tiny-sd") == before + 1
    runtime.stop_heartbeat()
    assert not r.exists(key)
    assert rt.ready_workers(runtime.store, "tiny-sd") == before
    beat.join(rt.HEARTBEAT_S + 5)
    assert not beat.is_alive()
    assert not r.exists(key)  # the beat thread did not put it back
