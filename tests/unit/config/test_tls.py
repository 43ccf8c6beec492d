"""TLS settings: what each client is given, and where the fleet and its clients differ."""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

import pytest

from config.errors import SettingsError
from config.settings import from_env
from config.tls import redis_client_options, s3_verify, tls_endpoints
from tasks.jobs.storage import Storage
from tasks.messaging.app import make_celery

TLS = {
    "KILN_BROKER_URL": "rediss://:pw@redis.internal:6380/0",
    "KILN_REDIS_CA_FILE": "/etc/kiln/ca.pem",
    "KILN_REDIS_CERT_FILE": "/etc/kiln/client.pem",
    "KILN_REDIS_KEY_FILE": "/etc/kiln/client.key",
    "KILN_S3_ENDPOINT_URL": "https://s3.internal:9000",
    "KILN_S3_CA_BUNDLE": "/etc/kiln/ca.pem",
}


def test_rediss_urls_give_celery_and_the_store_the_same_verified_tls_options() -> None:
    settings = from_env(TLS)
    options = redis_client_options(settings, settings.redis_url)
    assert options == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": "/etc/kiln/ca.pem",
        "ssl_certfile": "/etc/kiln/client.pem",
        "ssl_keyfile": "/etc/kiln/client.key",
    }
    conf = make_celery(settings).conf
    assert conf.broker_use_ssl == options and conf.redis_backend_use_ssl == options
    assert s3_verify(settings) == "/etc/kiln/ca.pem"
    # The broker and the store are one server here: it is checked once, and S3 too.
    assert [(h, p) for _, h, p, _ in tls_endpoints(settings)] == [
        ("redis.internal", 6380),
        ("s3.internal", 9000),
    ]


def test_plain_urls_get_no_tls_options() -> None:
    settings = from_env({"KILN_BROKER_URL": "redis://redis.internal:6379/0"})
    assert redis_client_options(settings, settings.redis_url) == {}
    assert "broker_use_ssl" not in make_celery(settings).conf.changes
    assert tls_endpoints(settings) == []


def test_a_client_key_without_its_certificate_is_refused() -> None:
    with pytest.raises(SettingsError, match="KILN_REDIS_KEY_FILE needs KILN_REDIS_CERT_FILE"):
        from_env({"KILN_REDIS_KEY_FILE": "/etc/kiln/client.key"})
    with pytest.raises(SettingsError, match="KILN_S3_PUBLIC_ENDPOINT_URL must be"):
        from_env({"KILN_S3_PUBLIC_ENDPOINT_URL": "images.example.com"})


def test_urls_for_clients_are_signed_for_the_public_endpoint() -> None:
    inside = {"KILN_S3_ENDPOINT_URL": "http://10.0.0.5:9000"}
    storage = Storage(from_env({**inside, "KILN_S3_PUBLIC_ENDPOINT_URL": "https://img.example"}))
    url = urlsplit(storage.url("generated/abc/0.png"))
    assert (url.scheme, url.netloc) == ("https", "img.example")
    assert url.path == "/kiln/generated/abc/0.png"
    assert "X-Amz-Signature=" in url.query
    assert storage.client.meta.endpoint_url == "http://10.0.0.5:9000"  # the fleet's own way
    alone = urlsplit(Storage(from_env(inside)).url("generated/abc/0.png"))
    assert alone.netloc == "10.0.0.5:9000"
    cdn = from_env({**inside, "KILN_PUBLIC_BASE_URL": "https://cdn.example/k"})
    assert Storage(cdn).url("generated/abc/0.png") == "https://cdn.example/k/generated/abc/0.png"
