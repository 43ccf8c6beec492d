"""Every bound of the job schema and of a model's limits is a 422 naming its field.

The schema cases are derived from the schema's own validators, so a bound added
later is covered without touching this file. The model cases use a models file
with tight limits on every knob ``models.yaml`` offers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from marshmallow import fields, validate

from app import create_app
from config.settings import from_env
from tasks.jobs.schema import JobSchema, LoraSchema

MODELS = """
models:
  - name: bounded
    family: sd15
    tiny: sd-mini
    defaults: {width: 64, height: 64, steps: 8}
    limits: {min_size: 32, max_size: 256, max_steps: 20, max_n: 4, max_prompt_chars: 100,
             min_guidance: 1.0, max_guidance: 10.0, max_pixels_per_batch: 65536, max_loras: 2}
    schedulers: [euler, dpmpp_2m]
    max_batch: 4
    loras:
      - {name: a, source: ./a}
      - {name: b, source: ./b}
      - {name: c, source: ./c}
  - name: schnell
    family: flux-schnell
    tiny: flux
"""


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> FlaskClient:
    models = tmp_path_factory.mktemp("bounds") / "models.yaml"
    models.write_text(MODELS)
    settings = from_env(
        {
            "KILN_BROKER_URL": "redis://127.0.0.1:1/0",
            "KILN_S3_ENDPOINT_URL": "http://127.0.0.1:1",
            "KILN_MODELS_FILE": str(models),
        }
    )
    app: Flask = create_app({"TESTING": True, "KILN_SETTINGS": settings})
    return app.test_client()


def out_of_range(field: fields.Field, v: validate.Validator) -> Iterator[Any]:
    """Values just outside each Range/Length validator of a field."""
    if isinstance(v, validate.Range):
        step = 1 if isinstance(field, fields.Integer) else 0.5
        if v.min is not None:
            yield v.min - step
        if v.max is not None:
            yield v.max + step
    elif isinstance(v, validate.Length):

        def sized(n: int) -> Any:
            if isinstance(field, fields.List):
                return [{"name": f"l{i}"} for i in range(n)]
            return "x" * n

        if v.min:
            yield sized(v.min - 1)
        if v.max is not None:
            yield sized(v.max + 1)


def schema_cases() -> Iterator[Any]:
    for name, field in JobSchema().declared_fields.items():
        for v in field.validators:
            for value in out_of_range(field, v):
                yield pytest.param(name, {name: value}, id=f"{name}={str(value)[:12]}")
    for name, field in LoraSchema().declared_fields.items():
        for v in field.validators:
            for value in out_of_range(field, v):
                lora = {"name": "a", name: value}
                yield pytest.param("loras", {"loras": [lora]}, id=f"loras.{name}={str(value)[:12]}")


def post(client: FlaskClient, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/v1/jobs", json={"prompt": "a fox", "model": "bounded", **body})
    assert r.status_code == 422, (body, r.status_code, r.get_data(as_text=True)[:300])
    err = r.get_json()["error"]
    assert err["code"] == "invalid_request"
    return err["fields"]


@pytest.mark.parametrize(("field", "body"), list(schema_cases()))
def test_every_schema_bound_is_422_naming_the_field(
    client: FlaskClient, field: str, body: dict[str, Any]
) -> None:
    assert field in post(client, body)


def test_schema_cases_cover_every_bounded_field() -> None:
    covered = {p.values[0] for p in schema_cases()}
    assert covered >= {"prompt", "negative_prompt", "model", "scheduler", "seed", "loras"}
    # Sizes, steps, guidance and n have no schema range: the model's limits are the one
    # set of bounds (each door states them the same way; see test_same_reasons.py).
    numeric = {"width", "height", "steps", "guidance_scale", "n"}
    assert not covered & numeric
    assert {case.values[0] for case in MODEL_CASES} >= numeric


MODEL_CASES = [
    pytest.param(field, body, id=f"{field}-{i}")
    for i, (field, body) in enumerate(
        [
            ("width", {"width": 24}),  # below the model's min_size
            ("width", {"width": 0}),
            ("height", {"height": -64}),
            ("steps", {"steps": 0}),
            ("n", {"n": 0}),
            ("n", {"n": 1000}),
            ("width", {"width": 264}),  # above max_size
            ("height", {"height": 36}),  # not a multiple of 8
            ("steps", {"steps": 21}),
            ("prompt", {"prompt": "x" * 101}),
            ("guidance_scale", {"guidance_scale": 0.5}),
            ("guidance_scale", {"guidance_scale": 10.5}),
            ("n", {"n": 5}),
            ("n", {"n": 2, "width": 256, "height": 256}),  # 131072 pixels > 65536 per batch
            ("loras", {"loras": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}),
            ("loras", {"loras": [{"name": "zzz"}]}),
            ("loras", {"loras": [{"name": "a"}, {"name": "a"}]}),
            ("scheduler", {"scheduler": "warp"}),
            ("model", {"model": "nope"}),
            ("negative_prompt", {"model": "schnell", "negative_prompt": "blur"}),
            ("guidance_scale", {"model": "schnell", "guidance_scale": 3.5}),
            ("width", {"model": "schnell", "width": 72}),  # flux sizes are multiples of 16
        ]
    )
]


@pytest.mark.parametrize(("field", "body"), MODEL_CASES)
def test_every_model_limit_is_422_naming_the_field(
    client: FlaskClient, field: str, body: dict[str, Any]
) -> None:
    assert field in post(client, body)


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("steps", '"steps": "4"'),
        ("n", '"n": true'),
        ("seed", '"seed": 1.5'),
        ("guidance_scale", '"guidance_scale": NaN'),
        ("guidance_scale", '"guidance_scale": Infinity'),
        ("webhook_url", '"webhook_url": "ftp://example.com/x"'),
        ("loras", '"loras": [{"name": "a", "weight": 1, "extra": 2}]'),
        ("colour", '"colour": "red"'),
    ],
)
def test_wrong_types_are_422_naming_the_field(client: FlaskClient, field: str, raw: str) -> None:
    body = '{"prompt": "a fox", "model": "bounded", ' + raw + "}"
    r = client.post("/v1/jobs", data=body, content_type="application/json")
    assert r.status_code == 422, r.get_data(as_text=True)[:300]
    assert field in r.get_json()["error"]["fields"]


def test_the_largest_valid_job_passes_validation(client: FlaskClient) -> None:
    # At the edge of every limit the request is accepted by validation: with no broker
    # behind this app the dispatcher answers 503, never 422.
    body = {
        "prompt": "x" * 100,
        "width": 128,
        "height": 128,
        "steps": 20,
        "n": 4,
        "guidance_scale": 10.0,
        "loras": [{"name": "a"}, {"name": "b", "weight": 4}],
    }
    r = client.post("/v1/jobs", json={"model": "bounded", **body})
    assert r.status_code == 503, r.get_data(as_text=True)[:300]


def test_slots_cap_the_process_and_each_keys_share() -> None:
    from app.streams import Slots
    from config.errors import KeySlotShareExceeded, TooManyWaits

    slots = Slots(4, share=0.5, full=TooManyWaits, what="synchronous requests")
    slots.acquire("key:alice")
    slots.acquire("key:alice")
    with pytest.raises(KeySlotShareExceeded) as share:
        slots.acquire("key:alice")
    assert share.value.status == 429 and share.value.retry_after_s > 0
    slots.acquire("key:bob")
    with slots.held("key:carol"):
        with pytest.raises(TooManyWaits) as full:
            slots.acquire("key:dave")
        assert full.value.status == 503 and full.value.code == "too_many_waits"
    slots.release("key:alice")
    slots.acquire("key:dave")  # carol's and alice's slots came back
    assert Slots(1, share=0.5, full=TooManyWaits, what="x").per_key == 1
