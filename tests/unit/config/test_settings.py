from pathlib import Path

import pytest

from config.settings import Settings, SettingsError, from_env, redact_url


def test_defaults_are_the_dev_profile() -> None:
    s = from_env({})
    assert s.profile == "dev"
    assert s.broker_url == "redis://127.0.0.1:6390/0"
    assert s.redis_url == s.broker_url  # the job store follows a redis:// broker
    assert s.api_port == 8000 and s.flower_port == 5555


def test_dev_port_overrides_move_the_default_urls() -> None:
    s = from_env({"KILN_BROKER_PORT": "7001", "KILN_S3_PORT": "7002"})
    assert s.broker_url == s.redis_url == "redis://127.0.0.1:7001/0"
    assert s.s3_endpoint_url == "http://127.0.0.1:7002"
    given = from_env({"KILN_BROKER_PORT": "7001", "KILN_BROKER_URL": "redis://redis:6379/2"})
    assert given.broker_url == "redis://redis:6379/2"  # an explicit URL wins


def test_env_values_are_typed() -> None:
    s = from_env(
        {
            "KILN_API_PORT": "9000",
            "KILN_WEBHOOK_ALLOW_PRIVATE": "true",
            "KILN_DATA_DIR": "/tmp/k",
            "KILN_SYNC_TIMEOUT_S": "2.5",
        }
    )
    assert s.api_port == 9000
    assert s.webhook_allow_private is True
    assert s.models_dir == Path("/tmp/k/models")
    assert s.sync_timeout_s == 2.5


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("KILN_API_PORT", "eighty"),
        ("KILN_WEBHOOK_ALLOW_PRIVATE", "maybe"),
        ("KILN_PROFILE", "x"),
        ("KILN_CPU_DTYPE", "fp8"),
        ("KILN_TORCH_THREADS", "two"),
        ("KILN_TORCH_THREADS", "-1"),
    ],
)
def test_bad_values_name_the_variable(key: str, value: str) -> None:
    with pytest.raises(SettingsError, match=key):
        from_env({key: value})


def test_torch_threads_default_to_torch_s_own_choice() -> None:
    assert from_env({}).torch_threads == 0
    assert from_env({"KILN_TORCH_THREADS": "1"}).torch_threads == 1


def test_amqp_broker_needs_a_redis_job_store() -> None:
    with pytest.raises(SettingsError, match="KILN_REDIS_URL"):
        from_env({"KILN_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//"})
    s = from_env(
        {
            "KILN_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//",
            "KILN_REDIS_URL": "redis://127.0.0.1:6379/1",
        }
    )
    assert s.redis_url.endswith("/1")


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.api_port = 1  # type: ignore[misc]


def test_redacted_hides_secrets() -> None:
    s = from_env(
        {
            "KILN_S3_SECRET_KEY": "topsecret",
            "KILN_WEBHOOK_SECRET": "whsec_abc",
            "KILN_BROKER_URL": "redis://user:hunter2@redis:6379/0",
        }
    )
    shown = s.redacted()
    assert "topsecret" not in str(shown) and "whsec_abc" not in str(shown)
    assert "hunter2" not in str(shown)
    assert shown["s3_secret_key"] == "***"
    assert shown["broker_url"] == "redis://user:***@redis:6379/0"


def test_redact_url() -> None:
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert redact_url("amqp://guest:guest@h//") == "amqp://guest:***@h//"


def test_env_lines_are_what_differs_from_the_defaults_with_secrets_only_when_asked() -> None:
    from config.settings import env_lines

    env = {
        "KILN_PROFILE": "prod",
        "KILN_BROKER_URL": "redis://:store-pw-9@10.0.0.2:6379/0",
        "KILN_S3_SECRET_KEY": "s3-secret-9",
        "KILN_WEBHOOK_ALLOW_PRIVATE": "true",
    }
    shown = env_lines(from_env(env))
    assert "KILN_PROFILE=prod" in shown and "KILN_WEBHOOK_ALLOW_PRIVATE=true" in shown
    assert "KILN_BROKER_URL=redis://:***@10.0.0.2:6379/0" in shown
    assert "KILN_S3_SECRET_KEY=***" in shown
    assert not any(line.startswith("KILN_API_PORT=") for line in shown)  # a default
    full = dict(line.split("=", 1) for line in env_lines(from_env(env), secrets=True))
    assert from_env(full) == from_env(env)  # another host starts from exactly this
