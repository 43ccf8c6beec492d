"""The API in-process: errors are JSON naming the field, and torch is never imported."""

import subprocess
import sys
import textwrap

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from config.settings import from_env


@pytest.fixture
def app() -> Flask:
    # Points at a broker that is not there: these tests never reach it.
    settings = from_env(
        {"KILN_BROKER_URL": "redis://127.0.0.1:1/0", "KILN_S3_ENDPOINT_URL": "http://127.0.0.1:1"}
    )
    return create_app({"TESTING": True, "KILN_SETTINGS": settings})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def test_invalid_job_is_422_with_fields(client: FlaskClient) -> None:
    r = client.post("/v1/jobs", json={"prompt": "x", "width": 63, "steps": 0})
    assert r.status_code == 422
    err = r.get_json()["error"]
    assert err["code"] == "invalid_request"
    assert set(err["fields"]) == {"steps"} or set(err["fields"]) >= {"steps"}


def test_model_rules_apply_after_the_schema(client: FlaskClient) -> None:
    r = client.post("/v1/jobs", json={"prompt": "x", "width": 63})
    assert r.status_code == 422
    assert "width" in r.get_json()["error"]["fields"]


def test_malformed_json_is_a_400(client: FlaskClient) -> None:
    r = client.post("/v1/jobs", data="{nope", content_type="application/json")
    assert r.status_code in {400, 422}
    assert "error" in r.get_json()


def test_unknown_route_is_json_404(client: FlaskClient) -> None:
    r = client.get("/nowhere")
    assert r.status_code == 404
    assert r.get_json()["error"]["code"] == "not_found"


def test_models_list(client: FlaskClient) -> None:
    data = client.get("/v1/models").get_json()["data"]
    tiny = next(m for m in data if m["id"] == "tiny-sd")
    assert tiny["stand_in"] is True and tiny["queue"] == "gen.tiny-sd"


def test_openapi_spec_is_served(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    assert "/v1/jobs" in spec["paths"]


def test_api_process_never_imports_torch() -> None:
    code = textwrap.dedent(
        """
        import sys
        from app import create_app
        from config.settings import from_env
        s = from_env({"KILN_BROKER_URL": "redis://127.0.0.1:1/0"})
        app = create_app({"TESTING": True, "KILN_SETTINGS": s})
        c = app.test_client()
        assert c.get("/v1/models").status_code == 200
        assert c.post("/v1/jobs", json={"prompt": "x", "width": 63}).status_code == 422
        assert c.get("/healthz").status_code == 200
        assert "torch" not in sys.modules, "torch was imported"
        assert "diffusers" not in sys.modules, "diffusers was imported"
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=done", "status"),
        ("limit=0", "limit"),
        ("limit=many", "limit"),
        ("after=" + "x" * 65, "after"),
        ("colour=red", "colour"),
    ],
)
def test_a_bad_job_list_query_is_422_naming_the_field(
    client: FlaskClient, query: str, field: str
) -> None:
    r = client.get(f"/v1/jobs?{query}")
    assert r.status_code == 422
    err = r.get_json()["error"]
    assert list(err["fields"]) == [field] and field in err["message"]
