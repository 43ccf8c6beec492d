"""Pure parts of the reliability story: signing, backoff, URL guard, limits, ETA."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import threading
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from config.errors import Canceled, InvalidInput, TimeLimitExceeded, Wedged
from config.settings import from_env
from tasks.jobs.urlsafety import check_webhook_url
from tasks.messaging.app import make_celery, visibility_timeout
from tasks.worker.time_limits import wait_result
from tasks.worker.webhooks import backoff_s, sign

SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()


def test_signature_verifies_with_the_standardwebhooks_library() -> None:
    body = json.dumps({"type": "job.succeeded", "data": {"id": "j1"}})
    headers = sign(SECRET, "msg_j1_succeeded", datetime.now(UTC), body)
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(SECRET).verify(body, headers)["data"]["id"] == "j1"
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace("j1", "j2"), headers)
    other = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)


def test_backoff_doubles_with_jitter_and_a_cap() -> None:
    for attempt in range(1, 8):
        top = min(300.0, 2.0 * 2 ** (attempt - 1))
        samples = [backoff_s(attempt, base=2.0) for _ in range(50)]
        assert all(top / 2 <= s <= top for s in samples)
        assert len(set(samples)) > 1  # jitter
    assert backoff_s(30, base=2.0) <= 300.0


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/",
        "http://127.0.0.1:9/hook",
        "http://10.1.2.3/",
        "http://[::1]/",
        "http://localhost/x",
        "http://0.0.0.0/",
        "http://[::ffff:192.168.1.1]/",
        "ftp://example.com/",
        "not a url",
    ],
)
def test_private_or_odd_webhook_targets_are_refused(url: str) -> None:
    with pytest.raises(InvalidInput) as err:
        check_webhook_url(url, allow_private=False)
    assert "webhook_url" in err.value.fields


def test_private_targets_pass_when_allowed_and_public_ones_always() -> None:
    check_webhook_url("http://127.0.0.1:9/hook", allow_private=True)
    check_webhook_url("https://93.184.215.14/hook", allow_private=False)


def test_visibility_timeout_stays_above_the_longest_hard_limit() -> None:
    settings = from_env({})
    assert visibility_timeout(settings, 360) == 720
    assert visibility_timeout(settings, 100) == 600
    assert visibility_timeout(from_env({"KILN_VISIBILITY_TIMEOUT_S": "45"}), 360) == 45
    conf = make_celery(settings, longest_time_limit_s=900).conf
    assert conf.broker_transport_options["visibility_timeout"] == 1800
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1 and conf.accept_content == ["json"]


def test_a_future_in_time_is_returned() -> None:
    fut: concurrent.futures.Future = concurrent.futures.Future()
    fut.set_result("images")
    assert wait_result(fut, threading.Event(), soft_s=1, hard_s=2) == "images"


def test_soft_limit_cancels_and_fails_the_job() -> None:
    fut: concurrent.futures.Future = concurrent.futures.Future()
    cancel = threading.Event()

    def engine() -> None:  # drops the job at its next step once canceled
        cancel.wait(5)
        fut.set_exception(Canceled("canceled at step 3"))

    threading.Thread(target=engine, daemon=True).start()
    with pytest.raises(TimeLimitExceeded) as err:
        wait_result(fut, cancel, soft_s=0.05, hard_s=5)
    assert cancel.is_set() and not isinstance(err.value, Wedged)
    assert err.value.code == "time_limit_exceeded"


def test_hard_limit_reports_a_wedged_engine() -> None:
    fut: concurrent.futures.Future = concurrent.futures.Future()  # never resolves
    cancel = threading.Event()
    with pytest.raises(Wedged):
        wait_result(fut, cancel, soft_s=0.02, hard_s=0.05)
    assert cancel.is_set()
