"""``kiln.deliver_webhook``: signed, retried job notifications on the ``webhooks`` queue.

Signed per the Standard Webhooks spec (``webhook-id``, ``webhook-timestamp``,
``webhook-signature: v1,<base64 HMAC-SHA256>``) with ``KILN_WEBHOOK_SECRET``
(``whsec_<base64>``) and sent through ``tasks.jobs.egress`` (checked address only,
no redirects, one deadline, a body cap). An unreachable receiver (DNS failure, no
connection, no answer in time), 5xx and 429 are retried with exponential backoff
and jitter; other answers are not. The job's ``webhook`` field shows the state:
``pending`` → ``retrying`` → ``delivered`` | ``dead`` (or ``refused`` for a target
that is not allowed).
"""

from __future__ import annotations

import json
import logging
import random
import socket
from datetime import UTC, datetime
from typing import Any

from celery import shared_task
from standardwebhooks.webhooks import Webhook

from config.errors import InvalidInput, Unreachable
from config.settings import Settings, get_settings
from tasks.jobs import bookkeeping as bk
from tasks.jobs import egress
from tasks.jobs.records import WEBHOOK_FIELDS, public_view
from tasks.jobs.storage import Storage
from tasks.jobs.store import JobStore, now
from tasks.jobs.urlsafety import Resolver, parse_webhook_url, resolve_target
from tasks.messaging.names import DELIVER_WEBHOOK
from tasks.worker.taskbase import RedactedTask

log = logging.getLogger("kiln.webhooks")
RETRY_STATUSES = {408, 425, 429}
SETTLED = frozenset({"delivered", "dead", "refused"})


def backoff_s(attempt: int, *, base: float, cap: float = 300.0) -> float:
    """Exponential backoff with full jitter: attempt 1 → up to ``base``, then doubling."""
    return random.uniform(0.5, 1.0) * min(cap, base * 2 ** (attempt - 1))


def sign(secret: str, msg_id: str, timestamp: datetime, body: str) -> dict[str, str]:
    signature = Webhook(secret).sign(msg_id, timestamp, body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": "kiln-webhooks/1",
        "connection": "close",
    }


def payload(record: dict[str, Any], storage: Storage) -> dict[str, Any]:
    data = public_view(record, WEBHOOK_FIELDS)
    for image in data.get("images") or []:
        image["url"] = storage.url(image["key"])
    return {
        "type": f"job.{record['status']}",
        "timestamp": datetime.now(UTC).isoformat(),
        "data": data,
    }


@shared_task(name=DELIVER_WEBHOOK, base=RedactedTask, bind=True, acks_late=True, max_retries=None)
def deliver_webhook(self: Any, job_id: str, **_ignored: Any) -> dict[str, Any]:
    settings = get_settings()
    store = JobStore.for_settings(settings)
    record = store.get(job_id)
    if not record or not record.get("webhook"):
        bk.webhook_settled(store.redis, job_id)
        return {"job_id": job_id, "state": "gone"}
    hook = dict(record["webhook"])
    if hook.get("state") in SETTLED:  # a second message for a webhook already settled
        bk.webhook_settled(store.redis, job_id)
        return {"job_id": job_id, "state": hook["state"]}
    # This attempt holds the webhook for its timeout; should this worker die meanwhile,
    # the reaper sends it again once the lease is over.
    bk.webhook_due(store.redis, job_id, in_s=settings.webhook_lease_s)
    attempt = int(hook.get("attempts") or 0) + 1
    outcome, detail, retry = attempt_delivery(settings, record, hook, job_id=job_id)
    hook.update(attempts=attempt, last_attempt_at=now(), last_result=detail)
    if outcome == "delivered":
        hook["state"] = "delivered"
    elif retry and attempt < settings.webhook_max_attempts:
        hook["state"] = "retrying"
        bk.count_webhook(store.redis, "retried")
        delay = backoff_s(attempt, base=settings.webhook_backoff_s)
        hook["next_attempt_in_s"] = round(delay, 2)
        store.transition(job_id, webhook=hook)
        bk.webhook_due(store.redis, job_id, in_s=delay + settings.webhook_lease_s)
        log.info("webhook for %s: %s; retry %d in %.1fs", job_id, detail, attempt + 1, delay)
        raise self.retry(countdown=delay)
    else:
        hook["state"] = "refused" if outcome == "refused" else "dead"
    hook.pop("next_attempt_in_s", None)
    store.transition(job_id, webhook=hook, event="webhook", data={"state": hook["state"]})
    bk.webhook_settled(store.redis, job_id)
    bk.count_webhook(store.redis, hook["state"])
    log.info("webhook for %s %s after %d attempt(s): %s", job_id, hook["state"], attempt, detail)
    return {"job_id": job_id, "state": hook["state"], "attempts": attempt}


def attempt_delivery(
    settings: Settings,
    record: dict[str, Any],
    hook: dict[str, Any],
    *,
    job_id: str,
    resolver: Resolver = socket.getaddrinfo,
) -> tuple[str, str, bool]:
    """One POST. Returns (outcome, detail, retryable).

    ``detail`` is what the job's owner reads in ``webhook.last_result``: the HTTP
    status, "unreachable" or "refused", and nothing more about the network; the
    reason goes to the operator's log.
    """
    try:
        target = parse_webhook_url(hook["url"])
        addresses = resolve_target(
            target, allow_private=settings.webhook_allow_private, resolver=resolver
        )
    except InvalidInput as exc:
        log.info("webhook for %s refused: %s", job_id, exc.message, extra={"job_id": job_id})
        return "refused", "refused", False
    except Unreachable as exc:  # DNS failed: retried like a 5xx
        log.info("webhook for %s: %s", job_id, exc.message, extra={"job_id": job_id})
        return "error", "unreachable", True
    body = json.dumps(payload(record, Storage(settings)), separators=(",", ":"))
    headers = sign(
        settings.webhook_secret, f"msg_{job_id}_{record['status']}", datetime.now(UTC), body
    )
    try:
        status = egress.post(
            target,
            addresses,
            body.encode(),
            headers,
            deadline_s=settings.webhook_timeout_s,
            proxy=settings.webhook_proxy,
        )
    except Unreachable as exc:
        log.info("webhook for %s: %s", job_id, exc.message, extra={"job_id": job_id})
        return "error", "unreachable", True
    if 200 <= status < 300:
        return "delivered", f"HTTP {status}", False
    retry = status >= 500 or status in RETRY_STATUSES
    return "error", f"HTTP {status}", retry
