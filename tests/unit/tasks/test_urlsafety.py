"""Webhook targets: one parser, global addresses only, every IPv4-in-IPv6 form unwrapped."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from config.errors import InvalidInput, Unreachable
from tasks.jobs.urlsafety import (
    check_job_webhook,
    check_webhook_url,
    is_public,
    parse_webhook_url,
    resolve_target,
)


@pytest.mark.parametrize(
    "address",
    [
        "100.100.100.200",  # carrier-grade NAT (a cloud metadata address)
        "100.64.0.1",
        "2002:a9fe:a9fe::",  # 6to4 around 169.254.169.254
        "2002:7f00:1::",  # 6to4 around 127.0.0.1
        "::ffff:127.0.0.1",
        "64:ff9b::a9fe:a9fe",  # NAT64 around 169.254.169.254
        "64:ff9b::7f00:1",
        "::7f00:1",  # IPv4-compatible (reserved)
        "64:ff9b:1::a9fe:a9fe",  # local-use NAT64
        "fec0::1",  # site-local
        "fd00::1",
        "169.254.169.254",
        "10.0.0.1",
        "192.168.1.1",
        "127.0.0.1",
        "0.0.0.0",
        "::1",
        "::",
        "224.0.0.1",
        "ff02::1",
        "240.0.0.1",
        "198.18.0.1",
        "192.0.2.1",
        "2001:db8::1",
    ],
)
def test_addresses_that_are_not_global_are_not_public(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "2002:5db8:d70e::"]
)
def test_global_addresses_are_public(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:80\\@93.184.215.14/",  # urllib3 and urlsplit disagree on its host
        "http://user:pw@93.184.215.14/",
        "http://93.184.215.14@127.0.0.1/",
        "http://93.184.215.14/ x",
        "http://93.184.215.14/\r\nX-Injected: 1",
        "ftp://93.184.215.14/",
        "http:///path",
        "http://exa mple.com/",
        "http://[::1/",
        "http://93.184.215.14:99999/",
        "//93.184.215.14/",
        "http://" + "a" * 2050 + ".com/",
        "",
    ],
)
def test_odd_urls_are_refused_by_the_parser(url: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_webhook_url(url)
    assert set(err.value.fields) == {"webhook_url"}


def test_the_parser_keeps_what_delivery_needs() -> None:
    t = parse_webhook_url("https://Hooks.Example.com:8443/T0/tok?sig=1#frag")
    assert (t.scheme, t.host, t.port, t.path) == (
        "https",
        "hooks.example.com",
        8443,
        "/T0/tok?sig=1",
    )
    assert t.host_header == "hooks.example.com:8443" and t.literal is None
    v6 = parse_webhook_url("http://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/")
    assert v6.literal is not None and v6.host_header == "[2606:2800:21f:cb07:6820:80da:af6b:8b2c]"
    assert parse_webhook_url("http://bücher.example/").host == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    "url",
    [
        "http://100.100.100.200/",
        "http://[2002:a9fe:a9fe::]/",
        "http://[::ffff:127.0.0.1]/",
        "http://127.0.0.1:80\\@93.184.215.14/",
        "http://localhost/",
    ],
)
def test_hostile_targets_are_refused_at_submit(url: str) -> None:
    with pytest.raises(InvalidInput) as err:
        check_webhook_url(url, allow_private=False)
    assert set(err.value.fields) == {"webhook_url"}


def answers(*addresses: str):
    """A resolver (getaddrinfo's signature) that answers the given addresses in turn."""
    calls: list[str] = []

    def resolve(host: str, port: int, **_: object) -> list:
        calls.append(host)
        ip = addresses[min(len(calls), len(addresses)) - 1]
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (ip, port))]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


def test_one_private_answer_refuses_the_name() -> None:
    def mixed(host: str, port: int, **_: object) -> list:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", port)),
        ]

    target = parse_webhook_url("http://hooks.example.com/")
    with pytest.raises(InvalidInput):
        resolve_target(target, allow_private=False, resolver=mixed)
    assert len(resolve_target(target, allow_private=True, resolver=mixed)) == 2


def test_a_name_that_does_not_resolve_is_unreachable_not_refused() -> None:
    def nxdomain(host: str, port: int, **_: object) -> list:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    target = parse_webhook_url("http://hooks.example.com/")
    with pytest.raises(Unreachable):
        resolve_target(target, allow_private=False, resolver=nxdomain)
    check_webhook_url(
        "http://hooks.example.com/", allow_private=False, strict=False, resolver=nxdomain
    )
    with pytest.raises(InvalidInput):
        check_webhook_url("http://hooks.example.com/", allow_private=False, resolver=nxdomain)


def test_the_public_answer_is_the_one_returned() -> None:
    resolver = answers("93.184.215.14", "127.0.0.1")
    target = parse_webhook_url("http://rebind.example/")
    assert resolve_target(target, allow_private=False, resolver=resolver) == [
        ipaddress.ip_address("93.184.215.14")
    ]
    assert resolver.calls == ["rebind.example"]  # type: ignore[attr-defined]


def test_job_webhooks_need_a_secret() -> None:
    check_job_webhook(None, secret="", allow_private=False)
    with pytest.raises(InvalidInput, match="KILN_WEBHOOK_SECRET"):
        check_job_webhook("https://93.184.215.14/", secret="", allow_private=False)
    check_job_webhook("https://93.184.215.14/", secret="whsec_x", allow_private=False)
