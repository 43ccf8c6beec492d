"""Heartbeats that go away at once on a clean stop; task kwargs shown without secrets."""

from __future__ import annotations

from tasks.jobs.records import kwargs_repr, task_result

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


def test_task_result_holds_image_keys_never_presigned_urls() -> None:
    signed = "http://s3/kiln/generated/j1/0.png?X-Amz-Algorithm=A&X-Amz-Signature=abc"
    record = {"id": "j1", "images": [{"url": signed, "key": "generated/j1/0.png", "seed": 1}]}
    shown = task_result(record)
    assert shown["images"] == [{"key": "generated/j1/0.png", "seed": 1}]
    assert "X-Amz-Signature" not in repr(shown)
    assert record["images"][0]["url"] == signed  # the caller's dict is untouched
