"""Which webhook targets Kiln may call: one parser, one resolution, global addresses only.

A webhook URL is parsed once, by :func:`parse_webhook_url`, into a
:class:`WebhookTarget`; the check and the delivery both use that object, never the
raw string again (two URL parsers that disagree, as ``http://127.0.0.1:80\\@host/``
makes them, cannot be played against each other). Anything odd is refused: a scheme
other than http(s), user info, a backslash, whitespace or control characters.

The host is resolved once (:func:`resolve_target`) and every address it resolves to
must be globally routable (:func:`is_public`: ``is_global``, an IPv4-mapped, 6to4 or
NAT64 address judged by the IPv4 address it wraps, and no reserved, multicast,
link-local or site-local address). Delivery then connects to exactly those checked addresses
(``tasks.jobs.egress``), so a name that answers differently the second time
(DNS rebinding) gains nothing. ``KILN_WEBHOOK_ALLOW_PRIVATE=true`` lifts the address
rule (never the parsing rules) for fleets whose receivers live inside.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from config.errors import InvalidInput, Unreachable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., list[Any]]  # socket.getaddrinfo's signature
MAX_URL = 2048
_ODD = re.compile(r"[\x00-\x20\x7f\\]")  # whitespace, control characters, backslash
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True)
class WebhookTarget:
    """A parsed webhook URL: what the check resolved and what delivery connects to."""

    scheme: str
    host: str  # lower case, IDNA-encoded; an IPv6 literal without brackets
    port: int
    path: str  # path and query, as sent in the request line
    literal: IPAddress | None  # the host, when it is an IP address

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def _refuse(message: str, reason: str) -> InvalidInput:
    return InvalidInput(message, fields={"webhook_url": [reason]})


def parse_webhook_url(url: Any) -> WebhookTarget:
    """The one parser of webhook URLs; raises ``InvalidInput`` (field ``webhook_url``)."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise _refuse("webhook_url must be an http(s) URL", f"at most {MAX_URL} characters")
    if _ODD.search(url):
        raise _refuse(
            "webhook_url has a backslash, a space or a control character",
            "no backslash, whitespace or control characters",
        )
    try:
        parts = urlsplit(url)
    except ValueError:
        raise _refuse("webhook_url must be an http(s) URL", "not a URL") from None
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise _refuse("webhook_url must be an http(s) URL", "must be an http(s) URL")
    if "@" in parts.netloc:
        raise _refuse("webhook_url must not carry user info", "no user:password@ in the URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise _refuse("webhook_url has a bad port", "bad port") from None
    host = parts.hostname or ""
    literal: IPAddress | None = None
    if parts.netloc.split(":")[0].startswith("[") or ":" in host:
        try:
            literal = ipaddress.IPv6Address(host)
        except ValueError:
            raise _refuse("webhook_url has a bad IPv6 address", "bad IPv6 address") from None
    else:
        try:
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise _refuse("webhook_url has a bad host name", "bad host name") from None
        if not _HOST.match(host):
            raise _refuse("webhook_url has a bad host name", "bad host name")
        try:
            literal = ipaddress.IPv4Address(host)
        except ValueError:
            literal = None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return WebhookTarget(parts.scheme, host, port, path, literal)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address leads to (IPv4-mapped, 6to4, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(ip: IPAddress) -> bool:
    """Whether ``ip`` is globally routable, judging an IPv4-in-IPv6 form by its IPv4.

    (IPv4-compatible ``::a.b.c.d`` addresses are reserved, hence refused.)
    """
    inner = embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    if inner is not None:
        return is_public(inner)
    return bool(
        ip.is_global
        and not ip.is_reserved
        and not ip.is_multicast
        and not ip.is_link_local
        and not (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local)
    )


def resolve_target(
    target: WebhookTarget, *, allow_private: bool, resolver: Resolver = socket.getaddrinfo
) -> list[IPAddress]:
    """Resolve once; every address must be public (unless allowed). The addresses to use.

    Raises ``Unreachable`` when the name does not resolve (retried like a 5xx), and
    ``InvalidInput`` when any address it resolves to is not public.
    """
    if target.literal is not None:
        addresses = [target.literal]
    else:
        try:
            infos = resolver(target.host, target.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise Unreachable("webhook host does not resolve") from None
        addresses = list(
            dict.fromkeys(ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos)
        )
        if not addresses:
            raise Unreachable("webhook host does not resolve")
    if not allow_private and not all(is_public(a) for a in addresses):
        raise _refuse(
            "webhook_url points at an address that is not globally routable",
            f"{target.host} is not a public address",
        )
    return addresses


def check_webhook_url(
    url: str,
    *,
    allow_private: bool,
    strict: bool = True,
    resolver: Resolver = socket.getaddrinfo,
) -> WebhookTarget:
    """Parse and check a webhook URL; raise ``InvalidInput`` (field ``webhook_url``).

    ``strict=False`` lets a name that does not resolve now pass (it is resolved and
    checked again when the webhook is delivered).
    """
    target = parse_webhook_url(url)
    try:
        resolve_target(target, allow_private=allow_private, resolver=resolver)
    except Unreachable:
        if strict:
            raise _refuse("webhook_url host does not resolve", "host does not resolve") from None
    return target


def check_job_webhook(url: str | None, *, secret: str, allow_private: bool) -> None:
    """The submit-time rule for a job's webhook, for every door (API and Celery task)."""
    if not url:
        return
    if not secret:
        raise _refuse(
            "webhooks are off: KILN_WEBHOOK_SECRET unset",
            "webhooks are off: KILN_WEBHOOK_SECRET unset",
        )
    check_webhook_url(url, allow_private=allow_private, strict=False)
