"""Egress: one request to an address already checked, within a total deadline.

Webhooks are POSTed through it (``post``) and image inputs given as URLs are fetched
through it (``get``, which reads at most ``max_bytes`` of the body).

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
    tried (the receiver may have the request already). The answer's body is read up
    to ``body_cap`` bytes (a courtesy to the receiver) and dropped.
    """
    status, _ = _exchange("POST", target, addresses, body, headers, deadline_s, proxy, body_cap)
    return status


def get(
    target: WebhookTarget,
    addresses: Sequence[IPAddress],
    *,
    deadline_s: float,
    max_bytes: int,
    proxy: str = "",
) -> tuple[int, bytes]:
    """GET the target; returns the status and at most ``max_bytes + 1`` bytes of the
    body (one more than allowed tells the caller it was too big)."""
    return _exchange("GET", target, addresses, None, {}, deadline_s, proxy, max_bytes + 1)


def _exchange(
    method: str,
    target: WebhookTarget,
    addresses: Sequence[IPAddress],
    body: bytes | None,
    headers: Mapping[str, str],
    deadline_s: float,
    proxy: str,
    cap: int,
) -> tuple[int, bytes]:
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
                    method,
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
                raise Unreachable(f"{target.host} at {address}: {why}") from None
            try:
                data = _read(response, cap, deadline)
            except _ERRORS:
                if method != "POST":  # a POST's status is known: its body was a courtesy
                    raise Unreachable(f"{target.host}: the body did not arrive in time") from None
                data = b""
            return int(response.status), data
        finally:
            watchdog.cancel()
            with contextlib.suppress(Exception):
                conn.close()
    raise Unreachable(f"{target.host} unreachable: {why}")


def _read(response: Any, cap: int, deadline: float) -> bytes:
    """At most ``cap`` bytes of the body, undecoded, read before the deadline."""
    chunks: list[bytes] = []
    got = 0
    while got < cap:
        if time.monotonic() >= deadline:
            raise TimeoutError("deadline")
        chunk = response.read(min(65536, cap - got), decode_content=False)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
