"""SIGKILL a worker mid-batch on RabbitMQ: every job still succeeds, exactly once.

RabbitMQ returns a dead consumer's unacked messages as soon as its connection drops,
so the other worker takes them at once. (On Redis the reaper re-sends them within
seconds: tests/integration/test_faults.py.)
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from harness.http import KilnHTTP
from harness.stack import Stack, one_model_file, wait_for
from tasks.jobs.store import JobStore

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def rabbitmq_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
        return True
    except OSError:
        return False


def test_sigkill_mid_batch_on_rabbitmq(tmp_path: Path, tiny_models_dir: Path) -> None:
    if not rabbitmq_up():
        if os.environ.get("CI") == "true":
            pytest.fail("RabbitMQ is not reachable on 127.0.0.1:5672 (required under CI)")
        pytest.skip("RabbitMQ is not reachable on 127.0.0.1:5672")
    model = f"kill-{uuid.uuid4().hex[:8]}"  # its own queue, even on a shared RabbitMQ
    models_file = one_model_file(tmp_path, model, limits={"max_size": 512})
    stack = Stack(
        tmp_path, models_dir=tiny_models_dir, env_overrides={"KILN_MODELS_FILE": str(models_file)}
    )
    try:
        stack.start_servers(broker_url=AMQP_URL)
        api = KilnHTTP(stack.start_api())
        store = JobStore(stack.env["KILN_REDIS_URL"])
        workers = [
            stack.start_worker(model, name="worker-a", wait=False),
            stack.start_worker(model, name="worker-b", wait=False),
        ]
        proc_a = workers[0]
        stack.wait_worker_ready(model, proc_a, count=2)
        jobs = [
            api.submit(prompt=f"survivor {i}", model=model, width=64, height=64, steps=30, seed=i)
            for i in range(4)
        ]
        victim: dict = {}

        def one_mid_batch() -> bool:
            for j in jobs:
                rec = store.get(j["id"]) or {}
                if rec.get("status") == "running" and (rec.get("progress") or {}).get("step", 0):
                    victim.update(rec)
                    return True
            return False

        wait_for(one_mid_batch, timeout=180, what="a job mid-batch")
        pid = int(victim["worker"].split("@")[1].split(".")[1])
        dead = next(p for p in workers if p.popen.pid == pid)
        on_dead = {
            j["id"] for j in jobs if (store.get(j["id"]) or {}).get("worker") == victim["worker"]
        }
        dead.kill()
        done = [api.wait(j["id"], timeout=300) for j in jobs]
        for d in done:
            assert d["status"] == "succeeded", (d["error"], d["attempts"])
            assert d["attempts"] == (2 if d["id"] in on_dead else 1)
            assert stack.objects(f"generated/{d['id']}/") == [f"generated/{d['id']}/0.png"]
            kinds = [kind for _, kind, _ in store.events(d["id"])]
            assert kinds.count("succeeded") == 1
    finally:
        stack.close()
        if rabbitmq_up():
            from kombu import Connection

            with Connection(AMQP_URL) as conn:
                conn.default_channel.queue_delete(f"gen.{model}")
