"""Flower: basic auth outside dev, bound to 127.0.0.1, its /metrics on."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests

from app.devfleet import flower_argv
from config.settings import from_env
from harness.http import KilnHTTP
from harness.stack import BIN, SECRETS, Stack, free_port, wait_for

SECRETS.extend(["flower-pass-123", "flower-hook-token", "retried-hook-token"])  # never in a log
AUTH = ("ops", "flower-pass-123")


@contextmanager
def flower(stack: Stack, name: str, env: dict[str, str]) -> Iterator[str]:
    """``kiln flower`` on a free port with basic auth, on the stack's settings and ``env``;
    its URL once it answers, stopped after."""
    port = free_port()
    env = {
        **stack.env,
        "KILN_FLOWER_PORT": str(port),
        "KILN_FLOWER_BASIC_AUTH": ":".join(AUTH),
        **env,
    }
    proc = stack.spawn(name, [str(BIN / "kiln"), "flower"], env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: requests.get(f"{url}/healthcheck", timeout=1).ok,
            timeout=60,
            what="flower",
            proc=proc.popen,
        )
        yield url
    finally:
        proc.stop()


def test_flower_needs_basic_auth_outside_dev() -> None:
    with pytest.raises(SystemExit, match="BASIC_AUTH"):
        flower_argv(from_env({"KILN_PROFILE": "prod", "KILN_API_KEYS": ""}))
    argv = flower_argv(from_env({}))
    assert "--address=127.0.0.1" in argv


def test_flower_refuses_requests_without_credentials(stack: Stack) -> None:
    with flower(stack, "flower", {"KILN_PROFILE": "prod"}) as url:
        assert requests.get(f"{url}/", timeout=5).status_code == 401
        assert requests.get(f"{url}/", auth=AUTH, timeout=5).ok
        metrics = requests.get(f"{url}/metrics", timeout=5)
        assert metrics.status_code == 200 and "flower_" in metrics.text

        # Flower answers HTTP before its event receiver is connected: wait until it has
        # seen a whole task, so that the next one's task-sent event (its queue) is caught.
        first = KilnHTTP(stack.api_url).run(prompt="flower warm-up", model="tiny-sd", steps=1)
        wait_for(
            lambda: requests.get(f"{url}/api/task/info/{first['id']}", auth=AUTH, timeout=5).ok,
            timeout=60,
            what="flower's event receiver",
        )

        # Operators read task names and queues; a webhook's token never shows.
        hook = "https://hooks.invalid/T0/flower-hook-token?sig=flower-sig"
        job = KilnHTTP(stack.api_url).run(
            prompt="seen by flower", model="tiny-sd", steps=2, webhook_url=hook
        )
        assert job["status"] == "succeeded", job

        def task() -> dict:
            return requests.get(f"{url}/api/task/info/{job['id']}", auth=AUTH, timeout=5).json()

        wait_for(lambda: task().get("state") == "SUCCESS", timeout=30, what="task in flower")
        info = task()
        assert info["name"] == "kiln.generate"
        # The result names the image by its key; a presigned URL is never in it.
        assert f"generated/{job['id']}/0.png" in str(info["result"])
        assert "X-Amz-Signature" not in json.dumps(info)
        assert info["routing_key"] == "gen.tiny-sd"
        assert "seen by flower" in info["kwargs"] and "hooks.invalid/***" in info["kwargs"]
        listing = requests.get(f"{url}/api/tasks", auth=AUTH, timeout=5).text
        assert "flower-hook-token" not in listing and "flower-sig" not in listing
        assert "flower-hook-token" not in requests.get(f"{url}/tasks", auth=AUTH, timeout=5).text

        # A retried message is rebuilt by Celery: it shows the redacted kwargs too.
        retried = retried_job(stack, "https://hooks.invalid/T0/retried-hook-token?sig=x")
        try:

            def retried_info() -> dict:
                return requests.get(f"{url}/api/task/info/{retried}", auth=AUTH, timeout=5).json()

            wait_for(
                lambda: (retried_info().get("retries") or 0) >= 1,
                timeout=60,
                what="a retried message in flower",
            )
            info = retried_info()
            assert "hooks.invalid/***" in info["kwargs"], info
            listing = requests.get(f"{url}/api/tasks", auth=AUTH, timeout=5).text
            assert "retried-hook-token" not in json.dumps(info) + listing
        finally:
            end_retried(stack, retried)


def test_flower_lists_the_model_queues_before_any_worker_reports(stack: Stack) -> None:
    from config.models import load_models

    # A broker database of its own: no worker there, so Flower knows queues only from
    # its app (with a worker, it lists the queues the workers report).
    broker = stack.env["KILN_BROKER_URL"].rsplit("/", 1)[0] + "/11"
    with flower(stack, "flower-queues", {"KILN_BROKER_URL": broker}) as url:
        lengths = requests.get(f"{url}/api/queues/length", auth=AUTH, timeout=5)
        queues = lengths.json()["active_queues"]
        names = {q["name"] for q in queues}
        models = load_models(stack.settings.models_file)
        assert names == {f"gen.{m}" for m in models} | {"webhooks"}, names
        assert "gen.tiny-sd" in requests.get(f"{url}/broker", auth=AUTH, timeout=5).text


FAKE_WORKER = "tiny-sd@elsewhere@test"


def retried_job(stack: Stack, hook: str) -> str:
    """A job whose record says it runs on another live worker: its message is retried."""
    import redis

    from pipelines.registry import Registry
    from tasks.jobs import bookkeeping as bk
    from tasks.jobs.records import kwargs_repr, new_record, task_kwargs
    from tasks.jobs.schema import load_job
    from tasks.jobs.store import JobStore
    from tasks.messaging.app import make_celery

    settings = stack.settings
    job = {"prompt": "retried", "model": "tiny-sd", "steps": 2, "webhook_url": hook}
    params = load_job(job, Registry.from_file(settings.models_file))
    job_id = uuid.uuid4().hex
    record = {**new_record(job_id, params), "status": "running", "worker": FAKE_WORKER}
    JobStore(settings.redis_url).create(record)
    bk.beat(redis.Redis.from_url(settings.redis_url), "tiny-sd", FAKE_WORKER, 120)
    kwargs = task_kwargs(job_id, params)
    make_celery(settings).send_task(
        "kiln.generate", kwargs=kwargs, kwargsrepr=kwargs_repr(kwargs), task_id=job_id
    )
    return job_id


def end_retried(stack: Stack, job_id: str) -> None:
    """End the job and its fake worker: the next recheck finds it over and stops."""
    import redis

    from tasks.jobs import bookkeeping as bk
    from tasks.jobs.ends import end_job
    from tasks.jobs.store import JobStore

    settings = stack.settings
    end_job(JobStore(settings.redis_url), None, job_id, "canceled", allowed_from=("running",))
    bk.unbeat(redis.Redis.from_url(settings.redis_url), "tiny-sd", FAKE_WORKER)
