"""Direct task messages obey the API's rules: safe job ids, keys in their prefix, no
taking over another job's id."""

from __future__ import annotations

import pytest

from config.errors import InvalidInput
from config.settings import DEFAULT_MODELS_FILE
from pipelines.registry import Registry
from tasks.jobs.records import (
    differences,
    new_record,
    task_kwargs,
    task_kwargs_from_record,
    valid_job_id,
)
from tasks.jobs.schema import load_job
from tasks.jobs.storage import image_key

REG = Registry.from_file(DEFAULT_MODELS_FILE)
JOB = {"prompt": "a red fox", "model": "tiny-sd", "seed": 3}


@pytest.mark.parametrize(
    "job_id",
    ["../../x", "../../other-bucket/owned", "a/b", "a b", "", "x" * 65, "a\n", "é", "a.b", None],
)
def test_job_ids_outside_the_safe_alphabet_are_refused(job_id: object) -> None:
    assert not valid_job_id(job_id)
    with pytest.raises(InvalidInput) as err:
        image_key(job_id, 0)  # type: ignore[arg-type]
    assert set(err.value.fields) == {"job_id"}
    if isinstance(job_id, str) and job_id:
        with pytest.raises(InvalidInput) as err:
            load_job({**JOB, "job_id": job_id}, REG, task=True)
        assert "job_id" in err.value.fields


@pytest.mark.parametrize(
    "job_id",
    ["3f2c9a0b1d2e4f5a6b7c8d9e0f1a2b3c", "0b6c7a3e-5d2f-4c1a-9e8b-7f6a5d4c3b2a", "my_job-1"],
)
def test_uuid_hex_celery_ids_and_plain_names_are_job_ids(job_id: str) -> None:
    assert valid_job_id(job_id)
    assert image_key(job_id, 2) == f"generated/{job_id}/2.png"
    assert load_job({**JOB, "job_id": job_id}, REG, task=True)["job_id"] == job_id


def test_the_api_message_of_a_job_matches_its_record() -> None:
    params = load_job(JOB, REG)
    record = new_record("j1", params, owner="alice")
    sent = load_job(task_kwargs("j1", params, "alice"), REG, task=True)
    assert differences(record, sent, sent["owner"]) == []


def test_a_message_reusing_an_id_with_other_params_or_owner_differs() -> None:
    params = load_job({**JOB, "webhook_url": "https://hooks.example.com/a"}, REG)
    record = new_record("j1", params, owner="alice")
    other = load_job({**task_kwargs("j1", params, "alice"), "prompt": "a cat"}, REG, task=True)
    assert differences(record, other, "alice") == ["prompt"]
    same = load_job(task_kwargs("j1", params), REG, task=True)  # no owner: a direct sender
    assert differences(record, same, same["owner"]) == ["owner"]
    hooked = {**task_kwargs("j1", params, "alice"), "webhook_url": "https://evil.example/"}
    assert differences(record, load_job(hooked, REG, task=True), "alice") == ["webhook_url"]


def test_a_job_sent_again_from_its_record_matches_it() -> None:
    """The reaper re-sends a dead worker's job from its record: owner and all."""
    params = load_job({**JOB, "webhook_url": "https://hooks.example.com/a", "n": 2}, REG)
    record = new_record("j1", params, owner="alice")
    again = load_job(task_kwargs_from_record(record), REG, task=True)
    assert differences(record, again, again["owner"]) == []
