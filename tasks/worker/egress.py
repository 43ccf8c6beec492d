"""Webhook egress: one POST to an address already checked, within a total deadline.

The receiver is treated as hostile:

- the connection goes to exactly the address ``tasks.jobs.urlsafety.resolve_target``
  checked (an IP literal: nothing resolves the name again), while the ``Host``
  header, TLS SNI and certificate check use the URL's host name;
- no redirect is followed and no proxy is taken from the environment (urllib3's
  connection classes do neither); ``KILN_WEBHOOK_PROXY`` names one explicitly, and
  is then asked for the checked address (``CONNECT <ip>:<port>`` for https, an
  absolute ``http://<ip>:<port>/...`` request line for http), never for the name;
- the whole exchange (connect, TLS, request, status line and headers, the first
  ``body_cap`` bytes of the answer) has one deadline: a watchdog shuts the socket
  when it passes, so a receiver that drips a byte a second holds a thread no longer;
- the answer's body is never decoded and at most ``body_cap`` bytes of it are read
  (http.client bounds the headers: 100 lines of 64 KiB at most).

The outcome is the HTTP status, or ``Unreachable`` with a reason for the operator's
log; the job's owner is only ever told the status or "unreachable".
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import urllib3.exceptions
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.util import parse_url

from config.errors import Unreachable
from tasks.jobs.urlsafety import IPAddress, WebhookTarget

BODY_CAP = 16 * 1024
_ERRORS = (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError, ValueError)


class _Raw:
    """Remembers the TCP socket a connection made, so that the watchdog can shut it."""

    raw: socket.socket | None = None

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        self.raw = sock
        return sock


class _HTTP(_Raw, HTTPConnection):
    pass


class _HTTPS(_Raw, HTTPSConnection):
    pass


def _cut(conn: _Raw) -> None:
    sock = conn.raw
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _ip_host(address: IPAddress) -> str:
    return f"[{address}]" if address.version == 6 else str(address)


def _connection(
    target: WebhookTarget, address: IPAddress, proxy: str, timeout: float
) -> tuple[_HTTP | _HTTPS, str, dict[str, str]]:
    """The connection, the request target and any proxy headers for one address."""
    tls: dict[str, Any] = {}
    if target.scheme == "https":
        tls["server_hostname"] = target.host  # SNI and the certificate check: the name
    if not proxy:
        if target.scheme == "https":
            return _HTTPS(str(address), target.port, timeout=timeout, **tls), target.path, {}
        return _HTTP(str(address), target.port, timeout=timeout), target.path, {}
    p = parse_url(proxy)
    auth: dict[str, str] = {}
    if p.auth:
        auth["Proxy-Authorization"] = "Basic " + base64.b64encode(p.auth.encode()).decode()
    if target.scheme == "https":
        conn = _HTTPS(p.host or "", p.port or 80, timeout=timeout, **tls)
        conn.set_tunnel(str(address), target.port, headers=auth)
        return conn, target.path, {}
    absolute = f"http://{_ip_host(address)}:{target.port}{target.path}"
    return _HTTP(p.host or "", p.port or 80, timeout=timeout), absolute, auth


def post(
    target: WebhookTarget,
    addresses: Sequence[IPAddress],
    body: bytes,
    headers: Mapping[str, str],
    *,
    deadline_s: float,
    proxy: str = "",
    body_cap: int = BODY_CAP,
) -> int:
    """POST ``body`` to the first of ``addresses`` that accepts a connection.

    Returns the HTTP status; raises ``Unreachable`` when no address answered within
    ``deadline_s`` seconds of the call. Once a connection is made, no other address is
    tried (the receiver may have the request already).
    """
    deadline = time.monotonic() + deadline_s
    why = "no address"
    for address in addresses:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        conn, request_target, extra = _connection(target, address, proxy, left)
        watchdog = threading.Timer(left, _cut, (conn,))
        watchdog.daemon = True
        watchdog.start()
        try:
            try:
                conn.connect()
            except _ERRORS as exc:
                why = f"connect to {address}: {type(exc).__name__}"
                continue
            try:
                conn.request(
                    "POST",
                    request_target,
                    body=body,
                    headers={**headers, **extra, "Host": target.host_header},
                    preload_content=False,
                    decode_content=False,
                )
                response = conn.getresponse()
            except _ERRORS as exc:
                late = time.monotonic() >= deadline
                why = "no answer within the deadline" if late else type(exc).__name__
                raise Unreachable(f"webhook receiver at {address}: {why}") from None
            with contextlib.suppress(*_ERRORS):  # the status is known: the rest is courtesy
                response.read(body_cap, decode_content=False)
            return int(response.status)
        finally:
            watchdog.cancel()
            with contextlib.suppress(Exception):
                conn.close()
    raise Unreachable(f"webhook receiver unreachable: {why}")
