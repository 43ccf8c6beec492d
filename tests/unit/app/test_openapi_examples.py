"""Every schema in /openapi.json carries an example, and each example is valid."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from app import create_app
from app.classic import GenerateSchema
from app.openai_api import ImagesRequestSchema, to_job
from app.openapi_examples import EXAMPLES
from config.settings import from_env
from pipelines.registry import Registry
from tasks.jobs.schema import load_job, validate_job


@pytest.fixture(scope="module")
def app() -> Flask:
    settings = from_env(
        {"KILN_BROKER_URL": "redis://127.0.0.1:1/0", "KILN_S3_ENDPOINT_URL": "http://127.0.0.1:1"}
    )
    return create_app({"TESTING": True, "KILN_SETTINGS": settings})


def schema_classes(app: Flask) -> dict[str, Any]:
    api = app.extensions["flask-smorest"]["apis"][""]["ext_obj"]
    plugin = next(p for p in api.spec.plugins if hasattr(p, "converter"))
    return {name: key[0] for key, name in plugin.converter.refs.items()}


def test_every_schema_in_the_spec_has_an_example(app: Flask) -> None:
    spec = app.test_client().get("/openapi.json").get_json()
    missing = [n for n, s in spec["components"]["schemas"].items() if "example" not in s]
    assert not missing
    assert set(EXAMPLES) == set(spec["components"]["schemas"])  # no stale examples


def test_each_example_passes_its_own_schema(app: Flask) -> None:
    for name, cls in schema_classes(app).items():
        assert cls().validate(EXAMPLES[name]) == {}, name


def test_request_examples_pass_the_model_rules_too() -> None:
    registry = Registry.from_file(from_env({}).models_file)
    load_job(EXAMPLES["Job"], registry)
    validate_job(to_job(ImagesRequestSchema().load(EXAMPLES["ImagesRequest"])), registry)
    validate_job(GenerateSchema().load(EXAMPLES["Generate"]), registry)


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]


def test_every_operation_has_an_operation_id_and_plain_text(app: Flask) -> None:
    spec = app.test_client().get("/openapi.json").get_json()
    ops = operations(spec)
    ids = [op.get("operationId") for _, _, op in ops]
    assert all(ids) and len(set(ids)) == len(ids), ids
    assert {"createJob", "createImage", "retrieveModel", "listModels"} <= set(ids)
    for path, method, op in ops:
        for key in ("summary", "description"):
            assert "`" not in op.get(key, ""), (method, path, key, op[key])
        assert op.get("summary"), (method, path)


def test_each_error_status_shows_its_own_true_example(app: Flask) -> None:
    spec = app.test_client().get("/openapi.json").get_json()
    paths = spec["paths"]
    native = paths["/v1/jobs"]["post"]["responses"]
    codes = {
        status: native[status]["content"]["application/json"]["example"]["error"]["code"]
        for status in ("401", "403", "409", "413", "415", "422", "429")
    }
    assert codes == {
        "401": "unauthorized",
        "403": "forbidden",
        "409": "conflict",
        "413": "payload_too_large",
        "415": "unsupported_media_type",
        "422": "invalid_request",
        "429": "rate_limited",
    }
    assert "bytes" in native["413"]["content"]["application/json"]["example"]["error"]["message"]
    not_json = app.test_client().post("/v1/jobs", data="prompt=x", content_type="text/plain")
    assert not_json.status_code == 415
    assert native["415"]["content"]["application/json"]["example"] == not_json.get_json()
    queued = native["202"]["content"]["application/json"]["example"]
    assert queued["status"] == "queued" and queued["queue_position"] and not queued["images"]
    openai = paths["/v1/images/generations"]["post"]["responses"]
    assert "422" not in openai  # this door answers invalid input with a 400
    for status in ("400", "401", "403", "413", "429", "503", "504"):
        example = openai[status]["content"]["application/json"]["example"]["error"]
        assert set(example) == {"message", "type", "param", "code"}, status
    assert openai["400"]["content"]["application/json"]["example"]["error"]["param"] == "steps"
    model = paths["/v1/models/{model_id}"]["get"]["responses"]["404"]
    assert model["content"]["application/json"]["example"]["error"]["code"] == "model_not_found"
    cancel = paths["/v1/jobs/{job_id}"]["delete"]["responses"]["409"]
    assert "already" in cancel["content"]["application/json"]["example"]["error"]["message"]
    for path, method, op in operations(spec):  # no flask-smorest error shape anywhere
        assert "default" not in op["responses"], (method, path)
