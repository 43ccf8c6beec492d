"""The same bad value gets the same reason on the native, OpenAI and classic doors.

Each door keeps its own shape (422 ``{"error": {"code", "message", "fields"}}`` on the
native and classic doors, 400 ``{"error": {"type", "param", "message"}}`` on the
OpenAI door), but the limits are the model's and the reason text is one.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from config.settings import from_env
from tests.unit.app.test_bounds import MODELS


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> FlaskClient:
    models = tmp_path_factory.mktemp("reasons") / "models.yaml"
    models.write_text(MODELS)
    settings = from_env(
        {
            "KILN_BROKER_URL": "redis://127.0.0.1:1/0",
            "KILN_S3_ENDPOINT_URL": "http://127.0.0.1:1",
            "KILN_MODELS_FILE": str(models),
            "KILN_MAX_BODY_BYTES": "4096",
        }
    )
    app: Flask = create_app({"TESTING": True, "KILN_SETTINGS": settings})
    return app.test_client()


def native(client: FlaskClient, path: str, body: dict[str, Any]) -> tuple[str, dict]:
    r = client.post(path, json={"prompt": "a fox", "model": "bounded", **body})
    assert r.status_code == 422, r.get_data(as_text=True)[:300]
    err = r.get_json()["error"]
    assert err["code"] == "invalid_request"
    return err["message"], err["fields"]


def openai(client: FlaskClient, body: dict[str, Any]) -> tuple[str, str]:
    r = client.post("/v1/images/generations", json={"prompt": "a fox", "model": "bounded", **body})
    assert r.status_code == 400, r.get_data(as_text=True)[:300]
    err = r.get_json()["error"]
    assert err["type"] == "invalid_request_error"
    return err["message"], err["param"]


ALL_THREE = [
    ("steps", {"steps": 21}, "must be between 1 and 20 for bounded, got 21"),
    ("steps", {"steps": 0}, "must be between 1 and 20 for bounded, got 0"),
    ("width", {"width": 264}, "must be between 32 and 256 for bounded, got 264"),
    ("height", {"height": 36}, "must be a multiple of 8, got 36"),
    ("guidance_scale", {"guidance_scale": 10.5}, "must be between 1.0 and 10.0 for bounded"),
    ("prompt", {"prompt": "x" * 101}, "must be at most 100 characters for bounded"),
    ("seed", {"seed": -1}, "Must be greater than or equal to 0"),
    ("output_format", {"output_format": "gif"}, "Must be one of: png, jpeg, webp."),
]
NATIVE_AND_OPENAI = [
    ("n", {"n": 5}, "must be between 1 and 4 for bounded, got 5"),
    ("n", {"n": 1000}, "must be between 1 and 4 for bounded, got 1000"),
    ("scheduler", {"scheduler": "warp"}, "unknown scheduler 'warp'"),
    ("loras", {"loras": [{"name": "zzz"}]}, "unknown LoRA 'zzz' for bounded"),
]


@pytest.mark.parametrize(("field", "body", "reason"), ALL_THREE + NATIVE_AND_OPENAI)
def test_the_same_bad_value_gets_the_same_reason_on_every_door(
    client: FlaskClient, field: str, body: dict[str, Any], reason: str
) -> None:
    message, fields = native(client, "/v1/jobs", body)
    assert set(fields) == {field} and reason in message, message
    assert message.startswith(f"invalid {field}: ")  # the reason, not a generic text
    assert openai(client, body) == (message, field)
    if (field, body, reason) in ALL_THREE:
        assert native(client, "/generate", body) == (message, fields)
    else:  # the classic API has no such field: refused by name, never dropped
        classic, classic_fields = native(client, "/generate", body)
        assert set(classic_fields) == {field} and "Unknown field" in classic


def test_an_openai_size_is_named_size_with_the_same_reason(client: FlaskClient) -> None:
    message, _ = native(client, "/v1/jobs", {"width": 264, "height": 64})
    sized, param = openai(client, {"size": "264x64"})
    assert param == "size" and sized == message.replace("invalid width", "invalid size")
    assert openai(client, {"size": "big"})[1] == "size"
    assert openai(client, {"size": "64x64", "width": 64})[1] == "size"


@pytest.mark.parametrize("field", ["quality", "style", "colour", "webhook_url", "stream"])
def test_the_openai_door_refuses_fields_it_does_not_document(
    client: FlaskClient, field: str
) -> None:
    message, param = openai(client, {field: "x"})
    assert param == field and "unknown parameter" in message


def test_a_text_body_is_told_about_its_content_type(client: FlaskClient) -> None:
    for path in ("/v1/jobs", "/generate"):
        r = client.post(path, data="a red fox", content_type="text/plain")
        assert r.status_code == 415, r.get_data(as_text=True)
        err = r.get_json()["error"]
        assert err["code"] == "unsupported_media_type" and "text/plain" in err["message"]
        assert "application/json" in err["message"]
    r = client.post("/v1/images/generations", data="a red fox", content_type="text/plain")
    assert r.status_code == 415
    err = r.get_json()["error"]
    assert err["type"] == "invalid_request_error" and "application/json" in err["message"]


def test_a_413_names_the_limit(client: FlaskClient) -> None:
    body = {"prompt": "x" * 5000, "model": "bounded"}
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 413
    err = r.get_json()["error"]
    assert "4096 bytes" in err["message"] and "KILN_MAX_BODY_BYTES" in err["message"]
    r = client.post("/v1/images/generations", json=body)
    assert r.status_code == 413 and "4096 bytes" in r.get_json()["error"]["message"]


def test_models_retrieve_and_its_openai_404(client: FlaskClient) -> None:
    r = client.get("/v1/models/bounded")
    assert r.status_code == 200
    model = r.get_json()
    assert model["id"] == "bounded" and model["limits"]["max_steps"] == 20
    # No worker reports here (no job store): the configured dtype, said as such.
    assert model["dtype_source"] == "models.yaml" and model["dtype"] == "fp16"
    r = client.get("/v1/models/dall-e-3")
    assert r.status_code == 404
    err = r.get_json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "model"
    assert err["code"] == "model_not_found" and "dall-e-3" in err["message"]
