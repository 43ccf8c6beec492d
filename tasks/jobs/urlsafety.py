"""Webhook targets must not reach inside the network unless the operator allows it.

A URL whose host resolves to a private, loopback, link-local, reserved, multicast or
unspecified address (``http://169.254.169.254/``, ``http://10.0.0.5/``, ``localhost``)
is refused unless ``KILN_WEBHOOK_ALLOW_PRIVATE=true``. Checked at submit and again
at delivery (DNS can change in between).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from config.errors import InvalidInput


def _forbidden(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    )


def resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def check_webhook_url(url: str, *, allow_private: bool, strict: bool = True) -> None:
    """Raise ``InvalidInput`` (field ``webhook_url``) for a target Kiln must not call.

    ``strict=False`` lets a name that does not resolve now pass (it is checked again
    when the webhook is delivered).
    """
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise InvalidInput("webhook_url must be an http(s) URL", fields={"webhook_url": [url]})
    if allow_private:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = [parts.hostname] if _is_ip(parts.hostname) else resolve(parts.hostname, port)
    except OSError:
        if strict:
            raise InvalidInput(
                "webhook_url host does not resolve",
                fields={"webhook_url": ["host does not resolve"]},
            ) from None
        return
    bad = [a for a in addresses if _forbidden(ipaddress.ip_address(a.split("%")[0]))]
    if bad:
        raise InvalidInput(
            "webhook_url points at a private, loopback or link-local address",
            fields={"webhook_url": [f"{parts.hostname} resolves to a non-public address"]},
        )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
