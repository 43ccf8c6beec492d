"""`kiln config` warns on what a configuration leaves open, and on nothing else."""

from __future__ import annotations

from pathlib import Path

from app.auth import hash_key, new_key
from app.exposure import open_doors
from config.settings import from_env
from harness.stack import process_env, run_kiln

ROOT = Path(__file__).resolve().parents[3]
CLOSED = {
    "KILN_PROFILE": "prod",
    "KILN_API_KEYS": f"ops:{hash_key(new_key())}:admin",
    "KILN_FLOWER_BASIC_AUTH": "ops:flower-pw",
    "KILN_WEBHOOK_SECRET": "whsec_" + "A" * 32,
    "KILN_BROKER_URL": "rediss://:pw@redis.internal:6380/0",
    "KILN_S3_ENDPOINT_URL": "https://s3.internal",
}


def test_a_production_configuration_from_deploy_leaves_nothing_open(tmp_path: Path) -> None:
    assert open_doors(from_env({**CLOSED, "KILN_DATA_DIR": str(tmp_path)})) == []


def test_each_open_door_is_named(tmp_path: Path) -> None:
    env = {
        **CLOSED,
        "KILN_PROFILE": "test",
        "KILN_DATA_DIR": str(tmp_path),
        "KILN_AUTH": "off",
        "KILN_FLOWER_BASIC_AUTH": "",
        "KILN_FLOWER_HOST": "0.0.0.0",
        "KILN_WEBHOOK_SECRET": "",
        "KILN_WEBHOOK_ALLOW_PRIVATE": "true",
        "KILN_BROKER_URL": "redis://redis.internal:6379/0",
        "KILN_S3_ENDPOINT_URL": "http://s3.internal:9000",
        "KILN_PUBLIC_BASE_URL": "https://cdn.example.com",
    }
    text = "\n".join(open_doors(from_env(env)))
    for words in (
        "KILN_AUTH=off",
        "no KILN_FLOWER_BASIC_AUTH",
        "Flower binds 0.0.0.0",
        "no KILN_WEBHOOK_SECRET",
        "KILN_WEBHOOK_ALLOW_PRIVATE=true",
        "KILN_BROKER_URL: redis.internal is reached without a password",
        "KILN_REDIS_URL: redis.internal",
        "without TLS",
        "KILN_PUBLIC_BASE_URL",
    ):
        assert words in text, words
    dev = "\n".join(open_doors(from_env({"KILN_DATA_DIR": str(tmp_path)})))
    assert "serves only clients on this machine" in dev
    assert "refuses to start" in "\n".join(open_doors(from_env({"KILN_PROFILE": "prod"})))


def test_kiln_config_prints_the_warnings_on_stderr(tmp_path: Path) -> None:
    out = run_kiln("config", env={**process_env(), "KILN_DATA_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("{")
    assert "warning: no API keys" in out.stderr
    assert "warning: the webhook secret is this host's own" in out.stderr


def test_image_urls_on_an_inside_address_are_named_when_the_api_listens_beyond_it(
    tmp_path: Path,
) -> None:
    base = {**CLOSED, "KILN_DATA_DIR": str(tmp_path), "KILN_API_HOST": "0.0.0.0"}
    inside = {**base, "KILN_S3_ENDPOINT_URL": "https://10.0.0.5:9000"}
    text = "\n".join(open_doors(from_env(inside)))
    assert "image URLs name 10.0.0.5 (private, from KILN_S3_ENDPOINT_URL)" in text
    assert "set KILN_S3_PUBLIC_ENDPOINT_URL" in text
    loop = {**inside, "KILN_S3_PUBLIC_ENDPOINT_URL": "http://127.0.0.1:9000"}
    assert "127.0.0.1 (loopback, from KILN_S3_PUBLIC_ENDPOINT_URL)" in "\n".join(
        open_doors(from_env(loop))
    )
    public = {**inside, "KILN_S3_PUBLIC_ENDPOINT_URL": "https://images.example.com"}
    assert not any("image URLs" in line for line in open_doors(from_env(public)))
    # An API on loopback serves this machine only: its URLs may name it too.
    local = {**inside, "KILN_API_HOST": "127.0.0.1"}
    assert not any("image URLs" in line for line in open_doors(from_env(local)))
