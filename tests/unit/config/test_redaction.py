"""Secrets stay out of `kiln config`, logs, errors and retried task messages."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from celery.app.task import Context

from app.auth import hash_key, load_keys, new_key
from config.logging import RedactingFilter, scrub, secrets_of, setup_logging
from config.settings import SettingsError, from_env, redact_url
from harness.stack import process_env, run_kiln

ROOT = Path(__file__).resolve().parents[3]
ENV = {
    "KILN_PROFILE": "test",
    "KILN_BROKER_URL": "redis://kiln:broker-pw-1@redis.internal:6379/0",
    "KILN_REDIS_URL": "rediss://redis.internal:6380/1?password=store-pw-2&ssl_cert_reqs=required",
    "KILN_S3_ENDPOINT_URL": "https://s3user:s3-endpoint-pw-3@s3.internal",
    "KILN_S3_SECRET_KEY": "s3-secret-key-4",
    "KILN_WEBHOOK_SECRET": "whsec_webhook-secret-5",
    "KILN_WEBHOOK_PROXY": "http://egress:proxy-pw-6@proxy.internal:3128",
    "KILN_PUBLIC_BASE_URL": "https://cdn.example.com/kiln?token=cdn-token-7",
    "KILN_FLOWER_BASIC_AUTH": "ops:flower-pw-8",
}
SECRETS = [
    "broker-pw-1",
    "store-pw-2",
    "s3-endpoint-pw-3",
    "s3-secret-key-4",
    "webhook-secret-5",
    "proxy-pw-6",
    "cdn-token-7",
    "flower-pw-8",
]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("amqp://guest:guest@h//", "amqp://guest:***@h//"),
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("https://tok-123@hooks.example.com/x", "https://***@hooks.example.com/x"),
        (
            "redis://h:6379/0?password=pw&db=2&ssl_cert_reqs=required",
            "redis://h:6379/0?password=***&db=2&ssl_cert_reqs=required",
        ),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=AK%2F1&X-Amz-Signature=ab12",
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***",
        ),
    ],
)
def test_redact_url_hides_user_info_and_secret_query_values(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_every_url_shaped_setting_is_redacted() -> None:
    shown = json.dumps(from_env(ENV).redacted())
    assert not [s for s in SECRETS if s in shown]
    values = from_env(ENV).redacted()
    assert values["redis_url"].endswith("?password=***&ssl_cert_reqs=required")
    assert values["s3_endpoint_url"] == "https://s3user:***@s3.internal"
    assert values["webhook_proxy"] == "http://egress:***@proxy.internal:3128"


def test_kiln_config_prints_no_secret() -> None:
    out = run_kiln("config", env={**process_env(), **ENV})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["broker_url"] == "redis://kiln:***@redis.internal:6379/0"
    assert not [s for s in SECRETS if s in out.stdout + out.stderr]


def test_log_records_and_tracebacks_are_scrubbed(caplog: pytest.LogCaptureFixture) -> None:
    settings = from_env(ENV)
    known = " ".join(secrets_of(settings))
    assert all(s in known for s in SECRETS)
    redact = RedactingFilter(secrets_of(settings))
    log = logging.getLogger("kiln.test.redaction")
    log.addFilter(redact)
    try:
        with caplog.at_level(logging.INFO, logger="kiln.test.redaction"):
            log.info("connecting to %s and %s", settings.broker_url, settings.redis_url)
            try:
                raise ConnectionError(f"cannot reach {settings.webhook_proxy} (proxy-pw-6)")
            except ConnectionError:
                log.exception("egress failed")
        text = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
        assert "redis.internal" in text and "Traceback" in text
        assert not [s for s in SECRETS if s in text]
    finally:
        log.removeFilter(redact)


def test_scrub_hides_secret_query_values_in_any_url() -> None:
    line = "GET https://hooks.example.com/x?sig=abc123&token=tok-9&page=2 redis://:pw9@h/0"
    clean = scrub(line)
    assert "abc123" not in clean and "tok-9" not in clean and "pw9" not in clean
    assert "page=2" in clean


def test_setup_logging_filters_handlers_other_libraries_installed() -> None:
    other = logging.getLogger("kiln.test.library")
    handler = logging.StreamHandler()
    other.addHandler(handler)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging(from_env(ENV))
        assert any(isinstance(f, RedactingFilter) for f in handler.filters)
        assert any(isinstance(f, RedactingFilter) for f in root.handlers[0].filters)
    finally:
        other.removeHandler(handler)
        root.handlers[:], level = saved
        root.setLevel(level)


def test_a_retried_message_keeps_its_redacted_kwargs() -> None:
    from tasks.worker.generate import generate
    from tasks.worker.webhooks import deliver_webhook

    hook = "https://hooks.example.com/T0/retry-token?sig=retry-sig"
    request = Context(
        id="j1",
        args=(),
        kwargs={"prompt": "x", "model": "tiny-sd", "webhook_url": hook},
        delivery_info={"exchange": "", "routing_key": "gen.tiny-sd"},
        retries=1,
    )
    sig = generate.signature_from_request(request, countdown=7)
    assert "hooks.example.com/***" in sig.options["kwargsrepr"]
    assert "retry-token" not in sig.options["kwargsrepr"] + sig.options["argsrepr"]
    assert sig.kwargs["webhook_url"] == hook  # the retry still gets the real URL
    sig = deliver_webhook.signature_from_request(Context(id="w1", args=(), kwargs={"job_id": "j1"}))
    assert sig.options["kwargsrepr"] == "{'job_id': 'j1'}"


def test_the_key_file_parser_names_the_line(tmp_path: Path) -> None:
    good = f"ops:{hash_key(new_key())}:admin"
    for bad, why in [
        (f":{hash_key(new_key())}:read", "name"),
        ("alice:" + "z" * 64 + ":read", "digest"),
        ("alice:abc:read", "digest"),
        (f"alice:{hash_key(new_key())}:", "scope"),
        (f"alice:{hash_key(new_key())}:root", "scope"),
    ]:
        f = tmp_path / "keys"
        f.write_text(f"# keys\n{good}\n\n{bad}  # third entry\n")
        with pytest.raises(SettingsError, match=f"KILN_API_KEYS_FILE line 4: .*{why}"):
            load_keys(from_env({"KILN_API_KEYS_FILE": str(f)}))
    with pytest.raises(SettingsError, match=r"KILN_API_KEYS entry 2: .*name"):
        load_keys(from_env({"KILN_API_KEYS": f"{good},:{hash_key(new_key())}:read"}))
