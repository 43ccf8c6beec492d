"""Every sender's ``kiln.generate`` message (``tasks.jobs.sending``), read back from a
Celery app of its own on the in-memory broker: an app without Kiln's routes."""

from __future__ import annotations

from celery import Celery

from tasks.jobs.sending import send_generate_message

HOOK = "https://user:pw@hooks.example.com/T0/token?sig=x"


def sent(app: Celery, queue: str):
    with app.connection_for_write() as conn:
        box = conn.SimpleQueue(queue)
        try:
            message = box.get(timeout=1)
            message.ack()
            return message
        finally:
            box.close()


def test_the_message_goes_to_its_models_queue_with_its_id_and_kwargs_shown_redacted() -> None:
    app = Celery(broker="memory://")
    kwargs = {"prompt": "a red fox", "model": "tiny-sd", "webhook_url": HOOK}
    result = send_generate_message(app, kwargs, task_id="job-1", ignore_result=True)
    assert result.id == "job-1"
    message = sent(app, "gen.tiny-sd")
    assert message.delivery_info["routing_key"] == "gen.tiny-sd"
    assert message.headers["task"] == "kiln.generate" and message.headers["id"] == "job-1"
    assert message.headers["ignore_result"] is True
    assert message.payload[1] == kwargs  # the worker gets the real URL
    assert "token" not in message.headers["kwargsrepr"]
    assert "hooks.example.com/***" in message.headers["kwargsrepr"]


def test_without_an_id_celery_names_the_message_and_keeps_its_result() -> None:
    app = Celery(broker="memory://")
    result = send_generate_message(app, {"prompt": "x", "model": "sdxl"})
    message = sent(app, "gen.sdxl")
    assert message.headers["id"] == result.id and message.headers["ignore_result"] is False
