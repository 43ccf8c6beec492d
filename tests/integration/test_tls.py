"""TLS to the job store, the broker and S3, through a real TLS endpoint (stunnel) on
loopback in front of the session's Valkey and S3 server, with a CA made for this run."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis
import requests

from config.errors import SettingsError
from config.settings import from_env
from config.tls import check_tls
from harness.http import KilnHTTP
from harness.stack import Proc, Stack, free_port, one_model_file, stop_all, wait_for
from harness.tls import CA, stunnel_binary, stunnel_config

MODEL = "tls-sd"  # a queue of its own on the session's broker
STUNNEL = stunnel_binary()
pytestmark = pytest.mark.skipif(STUNNEL is None, reason="no stunnel4 (make stunnel installs it)")


@pytest.fixture(scope="module")
def tls(
    servers: Stack, tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A stack whose every connection to Valkey and S3 goes through stunnel: Redis with a
    client certificate the endpoint insists on, S3 over https://, both on a private CA."""
    work = tmp_path_factory.mktemp("tls")
    ca = CA(work / "certs")
    server = ca.issue("server", hosts=("127.0.0.1", "localhost"))
    client = ca.issue("client", client=True)
    plain_redis = servers.settings.redis_url.split("//", 1)[1].split("/", 1)[0]
    plain_s3 = servers.settings.s3_endpoint_url.split("//", 1)[1]
    redis_port, s3_port = free_port(), free_port()
    config = stunnel_config(
        work / "stunnel.conf",
        services={
            "redis": (f"127.0.0.1:{redis_port}", plain_redis),
            "s3": (f"127.0.0.1:{s3_port}", plain_s3),
        },
        server=server,
        client_ca=ca.path,
        ask_clients=("redis",),
    )
    s = Stack(work, models_dir=tiny_models_dir)
    s.env = {
        **servers.env,
        "KILN_MODELS_FILE": str(one_model_file(work, MODEL)),
        "KILN_BROKER_URL": f"rediss://127.0.0.1:{redis_port}/0",
        "KILN_REDIS_URL": f"rediss://127.0.0.1:{redis_port}/0",
        "KILN_REDIS_CA_FILE": str(ca.path),
        "KILN_REDIS_CERT_FILE": str(client.cert),
        "KILN_REDIS_KEY_FILE": str(client.key),
        "KILN_S3_ENDPOINT_URL": f"https://127.0.0.1:{s3_port}",
        "KILN_S3_CA_BUNDLE": str(ca.path),
    }
    try:
        s.spawn("stunnel", [str(STUNNEL), str(config)])
        wait_for(lambda: s.redis().ping(), timeout=20, what="stunnel")
        yield s
    finally:
        s.close()


def refusal(settings_env: dict[str, str], **changes: str) -> str:
    with pytest.raises(SettingsError) as caught:
        check_tls(replace(from_env(settings_env), **changes))
    return str(caught.value)


def test_a_job_runs_with_the_store_broker_and_s3_all_over_verified_tls(tls: Stack) -> None:
    procs: list[Proc] = []
    try:
        procs.append(tls.start_worker(MODEL))
        api = KilnHTTP(tls.start_api())
        procs.append(tls.procs[-1])
        job = api.run(prompt="a lock", model=MODEL, steps=2, seed=3)
        assert job["status"] == "succeeded", job
        url = job["images"][0]["url"]
        assert url.startswith(tls.env["KILN_S3_ENDPOINT_URL"] + "/")
        image = requests.get(url, verify=tls.env["KILN_S3_CA_BUNDLE"], timeout=10)
        assert image.status_code == 200 and image.content[:4] == b"\x89PNG"
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url, timeout=10)  # the private CA is not the system's
    finally:
        stop_all(procs)


def test_a_wrong_ca_stops_a_worker_at_start_with_one_line(tls: Stack) -> None:
    other = CA(tls.workdir / "other", name="other")
    out = tls.run_kiln(
        "worker", "--model", MODEL, env={"KILN_REDIS_CA_FILE": str(other.path)}, timeout=60
    )
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("Error: KILN_BROKER_URL: TLS to 127.0.0.1:")
    assert "refused: certificate verify failed" in lines[0]
    assert "KILN_REDIS_CA_FILE" in lines[0]


def test_a_wrong_s3_ca_or_a_missing_client_certificate_is_refused_by_name(tls: Stack) -> None:
    other = CA(tls.workdir / "other-s3", name="other-s3")
    s3 = refusal(tls.env, s3_ca_bundle=str(other.path))
    assert s3.startswith("KILN_S3_ENDPOINT_URL: TLS to 127.0.0.1:")
    assert "certificate verify failed" in s3 and "KILN_S3_CA_BUNDLE" in s3
    no_cert = refusal(tls.env, redis_cert_file="", redis_key_file="")
    assert no_cert.startswith("KILN_BROKER_URL: TLS to 127.0.0.1:")
    # TLS 1.3 sends the server's refusal after the client's handshake is done: the client
    # reads it as the alert or, if the server closed first, as the connection's end.
    assert "certificate required" in no_cert or "eof occurred in violation" in no_cert
    assert "KILN_REDIS_CERT_FILE" in no_cert
    missing = refusal(tls.env, redis_ca_file=str(tls.workdir / "no-such-ca.pem"))
    assert "cannot load TLS files" in missing
    check_tls(from_env(tls.env))  # the right files pass


def test_a_plain_client_is_turned_away_by_the_tls_endpoint(tls: Stack) -> None:
    plain = tls.settings.redis_url.replace("rediss://", "redis://")
    with pytest.raises(redis.RedisError):
        redis.Redis.from_url(plain, socket_timeout=3).ping()
