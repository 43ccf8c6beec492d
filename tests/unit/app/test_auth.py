"""API keys in-process: who may start open, 401/403, key files, the spec, 413, the CLI."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask

from app import create_app
from app.auth import hash_key, load_keys, new_key, parse_keys
from app.cli import main as kiln
from config.logging import scrub
from config.settings import SettingsError, from_env

OFFLINE = {  # unreachable servers, and no dev default for the prod profile to refuse
    "KILN_BROKER_URL": "redis://127.0.0.1:1/0",
    "KILN_S3_ENDPOINT_URL": "http://127.0.0.1:1",
    "KILN_S3_ACCESS_KEY": "offline",
    "KILN_S3_SECRET_KEY": "offline-secret",
    "KILN_WEBHOOK_SECRET": "whsec_b2ZmbGluZQ==",
}
READER, WRITER, ADMIN = new_key(), new_key(), new_key()
KEYS = (
    f"reader:{hash_key(READER)}:read,writer:{hash_key(WRITER)}:generate+read,"
    f"ops:{hash_key(ADMIN)}:admin"
)


def make_app(**env: str) -> Flask:
    settings = from_env({**OFFLINE, **{f"KILN_{k.upper()}": v for k, v in env.items()}})
    return create_app({"TESTING": True, "KILN_SETTINGS": settings})


@pytest.fixture(scope="module")
def keyed() -> Flask:
    return make_app(profile="test", api_keys=KEYS, max_body_bytes="2048")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_dev_without_keys_serves_only_its_own_machine(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="kiln.auth"):
        app = make_app()
    assert "no API keys" in caplog.text and "loopback" in caplog.text
    c = app.test_client()
    assert c.get("/v1/models").status_code == 200  # from 127.0.0.1
    assert c.get("/v1/models", environ_base={"REMOTE_ADDR": "::1"}).status_code == 200
    outside = c.get("/v1/models", environ_base={"REMOTE_ADDR": "203.0.113.7"})
    assert outside.status_code == 401 and "KILN_AUTH=off" in outside.get_json()["error"]["message"]
    proxied = c.post("/v1/jobs", json={"prompt": "x"}, headers={"X-Forwarded-For": "203.0.113.7"})
    assert proxied.status_code == 401  # a proxy on this machine forwards outsiders
    assert c.get("/healthz", environ_base={"REMOTE_ADDR": "203.0.113.7"}).status_code == 200


def test_an_api_open_to_all_takes_kiln_auth_off(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="kiln.auth"):
        app = make_app(auth="off")
    assert "NO API KEYS" in caplog.text and "OPEN" in caplog.text
    r = app.test_client().get("/v1/models", environ_base={"REMOTE_ADDR": "203.0.113.7"})
    assert r.status_code == 200


@pytest.mark.parametrize(
    "env",
    [
        {"profile": "prod"},
        {"profile": "test"},
        {"profile": "prod", "auth": "off"},
        {"profile": "dev", "auth": "on"},
        {"profile": "prod", "api_keys": "alice:abc:read"},
        {"profile": "prod", "api_keys": f"alice:{'0' * 64}:write"},
    ],
)
def test_refuses_to_start_without_usable_keys(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match="KILN_"):
        make_app(**env)


def test_test_profile_runs_open_only_when_told(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="kiln.auth"):
        app = make_app(profile="test", auth="off")
    assert "KILN_AUTH=off" in caplog.text
    assert app.test_client().get("/v1/models").status_code == 200
    with pytest.raises(SettingsError, match="KILN_AUTH"):
        from_env({"KILN_AUTH": "maybe"})


def test_keys_file_adds_entries(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text(f"# ops keys\nops:{hash_key(ADMIN)}:admin  # on call\n\n")
    keys = load_keys(
        from_env({"KILN_API_KEYS": f"r:{hash_key(READER)}:read", "KILN_API_KEYS_FILE": str(f)})
    )
    assert {k.name for k in keys.values()} == {"r", "ops"}
    with pytest.raises(SettingsError, match="KILN_API_KEYS_FILE"):
        load_keys(from_env({"KILN_API_KEYS_FILE": str(tmp_path / "missing")}))


def test_missing_or_wrong_key_is_401(keyed: Flask) -> None:
    c = keyed.test_client()
    for headers in ({}, bearer("kiln_wrong"), {"X-API-Key": "nope"}, {"Authorization": "Basic x"}):
        r = c.get("/v1/models", headers=headers)
        assert r.status_code == 401, headers
        assert r.get_json()["error"]["code"] == "unauthorized"
    assert c.post("/v1/jobs", json={"prompt": "x"}).status_code == 401
    # Health and the spec stay public.
    assert c.get("/healthz").status_code == 200
    assert c.get("/openapi.json").status_code == 200


def test_both_headers_work_and_head_needs_only_read(keyed: Flask) -> None:
    c = keyed.test_client()
    assert c.get("/v1/models", headers=bearer(READER)).status_code == 200
    assert c.get("/v1/models", headers={"X-API-Key": READER}).status_code == 200
    assert c.head("/v1/models", headers=bearer(READER)).status_code == 200


def test_missing_scope_is_403_naming_it(keyed: Flask) -> None:
    r = keyed.test_client().post("/v1/jobs", json={"prompt": "x"}, headers=bearer(READER))
    assert r.status_code == 403
    assert r.get_json()["error"] == {
        "code": "forbidden",
        "message": "this key lacks the 'generate' scope",
        "fields": {"scope": ["generate"]},
    }
    # The key passes; the body is judged next (width 63 breaks the model's rules).
    r = keyed.test_client().post(
        "/v1/jobs", json={"prompt": "x", "width": 63}, headers=bearer(WRITER)
    )
    assert r.status_code == 422 and "width" in r.get_json()["error"]["fields"]


def test_body_over_the_configured_cap_is_413(keyed: Flask) -> None:
    r = keyed.test_client().post("/v1/jobs", json={"prompt": "x" * 3000}, headers=bearer(WRITER))
    assert r.status_code == 413
    assert r.get_json()["error"]["code"] == "payload_too_large"
    r = keyed.test_client().post(
        "/v1/jobs", json={"prompt": "x" * 1500, "width": 63}, headers=bearer(WRITER)
    )
    assert r.status_code == 422


def test_spec_documents_keys_scopes_and_limits(keyed: Flask) -> None:
    spec = keyed.test_client().get("/openapi.json").get_json()
    assert set(spec["components"]["securitySchemes"]) == {"bearerAuth", "apiKey"}
    post = spec["paths"]["/v1/jobs"]["post"]
    assert post["security"] and post["x-scope"] == "generate"
    assert {"401", "403", "413", "422", "429"} <= set(post["responses"])
    assert "Retry-After" in post["responses"]["429"]["headers"]
    assert spec["paths"]["/v1/jobs/{job_id}"]["get"]["x-scope"] == "read"
    assert "security" not in spec["paths"]["/healthz"]["get"]


def test_keys_create_prints_a_key_once_and_its_entry() -> None:
    out = CliRunner().invoke(kiln, ["keys", "create", "alice", "--scopes", "generate,read"])
    assert out.exit_code == 0, out.output
    key = next(w for w in out.output.split() if w.startswith("kiln_"))
    assert out.output.count(key) == 1
    entry = next(w for w in out.output.split() if w.startswith("alice:"))
    parsed = parse_keys(entry)
    assert parsed[hash_key(key)].scopes == {"generate", "read"}
    bad = CliRunner().invoke(kiln, ["keys", "create", "alice", "--scopes", "root"])
    assert bad.exit_code != 0


def test_logs_scrub_presented_keys() -> None:
    line = f"GET /v1/models X-API-Key: {READER} Authorization: Bearer {WRITER}"
    clean = scrub(line)
    assert READER not in clean and WRITER not in clean
