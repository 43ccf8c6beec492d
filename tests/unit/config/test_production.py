"""Outside dev and test, serving processes refuse the dev fleet's defaults, naming each."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app.auth import hash_key, new_key
from config.production import dev_default_problems, refuse_dev_defaults
from config.settings import DEV_S3_ACCESS_KEY, DEV_S3_SECRET_KEY, SettingsError, from_env
from harness.stack import BIN, ROOT

DEV_DEFAULTS = (
    "KILN_BROKER_URL",
    "KILN_REDIS_URL",
    "KILN_S3_ENDPOINT_URL",
    "KILN_S3_ACCESS_KEY",
    "KILN_S3_SECRET_KEY",
    "KILN_WEBHOOK_SECRET",
)
REAL = {
    "KILN_BROKER_URL": "redis://:pw@redis.internal:6379/0",
    "KILN_S3_ENDPOINT_URL": "https://s3.internal",
    "KILN_S3_ACCESS_KEY": "fleet",
    "KILN_S3_SECRET_KEY": "fleet-secret",
    "KILN_WEBHOOK_SECRET": "whsec_c2VjcmV0",
}


def test_the_dev_s3_credentials_live_only_in_the_dev_profile() -> None:
    dev = from_env({})
    assert (dev.s3_access_key, dev.s3_secret_key) == (DEV_S3_ACCESS_KEY, DEV_S3_SECRET_KEY)
    for profile in ("test", "prod"):
        s = from_env({"KILN_PROFILE": profile})
        assert (s.s3_access_key, s.s3_secret_key) == ("", ""), profile
    given = from_env({"KILN_S3_ACCESS_KEY": "mine", "KILN_S3_SECRET_KEY": "mine-secret"})
    assert (given.s3_access_key, given.s3_secret_key) == ("mine", "mine-secret")


def test_prod_on_nothing_names_every_variable_in_one_line() -> None:
    with pytest.raises(SettingsError) as caught:
        refuse_dev_defaults(from_env({"KILN_PROFILE": "prod"}))
    message = str(caught.value)
    assert "\n" not in message
    for name in DEV_DEFAULTS:
        assert name in message


def test_prod_names_only_what_is_left_at_the_dev_value() -> None:
    settings = from_env(
        {
            **REAL,
            "KILN_PROFILE": "prod",
            "KILN_BROKER_URL": "redis://127.0.0.1:6390/0",  # the dev fleet's Valkey
            "KILN_REDIS_URL": "redis://redis.internal:6379/1",
            "KILN_S3_SECRET_KEY": DEV_S3_SECRET_KEY,
        }
    )
    problems = dev_default_problems(settings)
    assert [p.split()[0] for p in problems] == ["KILN_BROKER_URL", "KILN_S3_SECRET_KEY"]
    assert "dev credential" in problems[1]
    with pytest.raises(SettingsError, match=r"KILN_BROKER_URL.*KILN_S3_SECRET_KEY"):
        refuse_dev_defaults(settings)


def test_prod_with_real_settings_and_dev_and_test_always_pass() -> None:
    refuse_dev_defaults(from_env({**REAL, "KILN_PROFILE": "prod"}))
    refuse_dev_defaults(from_env({}))
    refuse_dev_defaults(from_env({"KILN_PROFILE": "test"}))


def prod_env(**extra: str) -> dict[str, str]:
    """This machine's environment minus every KILN_ variable, in the prod profile."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    key = new_key()
    return {
        **env,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "KILN_PROFILE": "prod",
        "KILN_API_KEYS": f"ops:{hash_key(key)}:admin",  # keys are not what is missing
        **extra,
    }


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_a_prod_api_on_dev_defaults_refuses_to_start_and_names_them() -> None:
    out = run([sys.executable, "-c", "from app import create_app; create_app()"], prod_env())
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("config.errors.SettingsError: the prod profile refuses")
    for name in DEV_DEFAULTS:
        assert name in last


@pytest.mark.parametrize(
    "argv",
    [
        [str(BIN / "kiln"), "worker", "--model", "sdxl", "--gpu", "0"],
        [str(BIN / "kiln"), "flower"],
        [str(BIN / "celery"), "-A", "tasks", "worker", "--queues=webhooks", "--pool=threads"],
    ],
    ids=["worker", "flower", "webhooks"],
)
def test_every_serving_process_refuses_the_dev_defaults(argv: list[str]) -> None:
    out = run(argv, prod_env(KILN_S3_ENDPOINT_URL="https://s3.internal"))
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "the prod profile refuses the dev defaults" in text
    assert "KILN_BROKER_URL" in text and "KILN_WEBHOOK_SECRET" in text
    assert "KILN_S3_ENDPOINT_URL" not in text  # set: not named


def test_kiln_config_warns_of_what_the_profile_will_refuse() -> None:
    env = prod_env(**{**REAL, "KILN_S3_SECRET_KEY": DEV_S3_SECRET_KEY})
    out = run([str(BIN / "kiln"), "config"], env)
    assert out.returncode == 0  # a diagnostic: it reports, it does not refuse
    assert "the prod profile refuses KILN_S3_SECRET_KEY (the dev credential)" in out.stderr
    assert "KILN_BROKER_URL (" not in out.stderr
