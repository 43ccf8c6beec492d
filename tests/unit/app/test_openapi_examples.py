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
from tasks.jobs.schema import load_job


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
    load_job(to_job(ImagesRequestSchema().load(EXAMPLES["ImagesRequest"])), registry)
    classic = GenerateSchema().load(EXAMPLES["Generate"])
    load_job({k: v for k, v in classic.items() if v is not None}, registry)
