"""Webhook egress against hostile receivers, on real sockets (127.0.0.x only).

In-process: the delivery function with a resolver that answers a public address
first and loopback second, refused targets, redirects. In a real webhooks worker
(its own Valkey, which asks for a password): a receiver sending 400 MB and one
that drips its status line.
"""

from __future__ import annotations

import os
import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings, from_env
from harness.http import KilnHTTP
from harness.stack import SECRETS, Stack, wait_for
from tasks.worker.webhooks import attempt_delivery

TOKEN = "egress-hook-token-" + os.urandom(4).hex()
PASSWORD = "valkey-pass-" + os.urandom(6).hex()
SECRETS.extend([TOKEN, PASSWORD])
RECORD = {"id": "j1", "status": "succeeded", "images": [], "model": "tiny-sd"}


class Receiver(socketserver.ThreadingTCPServer):
    """A raw HTTP receiver that counts connections and answers as ``mode`` says."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, mode: str = "ok") -> None:
        self.mode, self.location = mode, ""
        self.connections = 0
        self.requests: list[bytes] = []
        self.sent = 0
        self.held_s: list[float] = []
        super().__init__((host, port), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        srv: Receiver = self.server  # type: ignore[assignment]
        srv.connections += 1
        t0 = time.monotonic()
        sock: socket.socket = self.request
        sock.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                return
            head += chunk
        srv.requests.append(head)
        try:
            if srv.mode == "ok":
                sock.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            elif srv.mode == "redirect":
                sock.sendall(
                    f"HTTP/1.1 302 Found\r\nLocation: {srv.location}\r\n"
                    "Content-Length: 0\r\n\r\n".encode()
                )
            elif srv.mode == "huge":  # 400 MB of body, as fast as it is taken
                size = 400 * 1024 * 1024
                sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
                block = b"\0" * (1024 * 1024)
                for _ in range(400):
                    sock.sendall(block)
                    srv.sent += len(block)
            elif srv.mode == "drip":  # one byte of the status line every 0.2 s
                for byte in b"HTTP/1.1 200 OK\r\n" * 100:
                    sock.sendall(bytes([byte]))
                    time.sleep(0.2)
        except OSError:
            pass
        finally:
            srv.held_s.append(time.monotonic() - t0)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.stop()


def settings_for(**env: str) -> Settings:
    return from_env(
        {
            "KILN_PROFILE": "test",
            "KILN_WEBHOOK_SECRET": "whsec_" + "A" * 32,
            "KILN_WEBHOOK_TIMEOUT_S": "3",
            **{f"KILN_{k.upper()}": v for k, v in env.items()},
        }
    )


def answers(*addresses: str) -> Any:
    """A resolver that answers each address in turn (the last one from then on)."""
    calls: list[str] = []

    def resolve(host: str, port: int, **_: object) -> list:
        calls.append(host)
        ip = addresses[min(len(calls), len(addresses)) - 1]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


def test_a_rebinding_name_never_reaches_loopback(receiver: Receiver) -> None:
    """Public first, loopback second: the request goes to the public address only.

    The egress proxy (a loopback recorder, so that nothing leaves this machine) is
    asked for exactly the checked address; the loopback receiver sees no connection.
    """
    proxy = Receiver()
    try:
        resolver = answers("93.184.215.14", "127.0.0.1")
        hook = {"url": f"http://rebind.example:{receiver.port}/hook/{TOKEN}"}
        out = attempt_delivery(
            settings_for(webhook_proxy=f"http://127.0.0.1:{proxy.port}"),
            RECORD,
            hook,
            job_id="j1",
            resolver=resolver,
        )
        assert out == ("delivered", "HTTP 204", False)
        line, *headers = proxy.requests[0].decode().split("\r\n")
        assert line == f"POST http://93.184.215.14:{receiver.port}/hook/{TOKEN} HTTP/1.1"
        assert f"Host: rebind.example:{receiver.port}" in headers
        assert receiver.connections == 0 and resolver.calls == ["rebind.example"]
    finally:
        proxy.stop()


def test_https_through_the_proxy_tunnels_to_the_checked_address(receiver: Receiver) -> None:
    """``CONNECT <checked ip>:443``: the proxy is never given the name to resolve."""
    proxy = Receiver()  # answers the CONNECT with a 204, so no tunnel is made
    try:
        hook = {"url": f"https://rebind.example/hook/{TOKEN}"}
        out = attempt_delivery(
            settings_for(webhook_proxy=f"http://127.0.0.1:{proxy.port}"),
            RECORD,
            hook,
            job_id="j1",
            resolver=answers("93.184.215.14", "127.0.0.1"),
        )
        assert out == ("error", "unreachable", True)
        assert proxy.requests[0].decode().startswith("CONNECT 93.184.215.14:443 HTTP/")
        assert TOKEN not in proxy.requests[0].decode() and receiver.connections == 0
    finally:
        proxy.stop()


def test_a_name_that_does_not_resolve_is_retried_like_a_5xx() -> None:
    def nxdomain(host: str, port: int, **_: object) -> list:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    hook = {"url": "https://hooks.example.com/hook"}
    out = attempt_delivery(settings_for(), RECORD, hook, job_id="j1", resolver=nxdomain)
    assert out == ("error", "unreachable", True)


def test_delivery_connects_to_the_checked_address_only() -> None:
    """Without a proxy: the first answer (127.0.0.2) gets the POST, the second none."""
    first = Receiver("127.0.0.2")
    second = Receiver("127.0.0.1", first.port)
    try:
        resolver = answers("127.0.0.2", "127.0.0.1")
        hook = {"url": f"http://rebind.example:{first.port}/hook"}
        settings = settings_for(webhook_allow_private="true")
        out = attempt_delivery(settings, RECORD, hook, job_id="j1", resolver=resolver)
        assert out == ("delivered", "HTTP 204", False)
        assert first.connections == 1 and second.connections == 0
        assert f"Host: rebind.example:{first.port}" in first.requests[0].decode()
    finally:
        first.stop()
        second.stop()


@pytest.mark.parametrize(
    "url",
    [
        "http://100.100.100.200:{port}/",
        "http://[2002:a9fe:a9fe::]:{port}/",
        "http://[::ffff:127.0.0.1]:{port}/",
        "http://127.0.0.1:{port}\\@93.184.215.14/",
    ],
)
def test_hostile_targets_are_refused_at_delivery(receiver: Receiver, url: str) -> None:
    hook = {"url": url.format(port=receiver.port)}
    out = attempt_delivery(settings_for(), RECORD, hook, job_id="j1")
    assert out == ("refused", "refused", False)
    assert receiver.connections == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://100.100.100.200/",
        "http://[2002:a9fe:a9fe::]/",
        "http://[::ffff:127.0.0.1]/",
        "http://127.0.0.1:80\\@93.184.215.14/",
    ],
)
def test_hostile_targets_are_refused_at_submit(api: KilnHTTP, url: str) -> None:
    r = api.post("/v1/jobs", json={"prompt": "x", "model": "tiny-sd", "webhook_url": url})
    assert r.status_code == 422, r.text
    assert "webhook_url" in r.json()["error"]["fields"]


def test_a_redirect_to_loopback_is_not_followed(receiver: Receiver) -> None:
    inside = Receiver()
    try:
        receiver.mode, receiver.location = "redirect", f"http://127.0.0.1:{inside.port}/"
        hook = {"url": f"http://127.0.0.1:{receiver.port}/hook"}
        settings = settings_for(webhook_allow_private="true")
        assert attempt_delivery(settings, RECORD, hook, job_id="j1") == (
            "error",
            "HTTP 302",
            False,
        )
        assert receiver.connections == 1 and inside.connections == 0
    finally:
        inside.stop()


# -- a real webhooks worker -----------------------------------------------------------
DEADLINE_S = 2.0


@pytest.fixture(scope="module")
def hooks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A webhooks worker on its own Valkey (password in the broker URL), one attempt."""
    s = Stack(
        tmp_path_factory.mktemp("egress"),
        env_overrides={
            "KILN_WEBHOOK_ALLOW_PRIVATE": "true",
            "KILN_WEBHOOK_TIMEOUT_S": str(DEADLINE_S),
            "KILN_WEBHOOK_MAX_ATTEMPTS": "1",
        },
    )
    try:
        s.start_servers(redis_password=PASSWORD)
        proc = s.start_webhooks_worker()
        from tasks.messaging.app import make_celery

        app = make_celery(s.settings)
        wait_for(lambda: app.control.ping(timeout=0.5), timeout=60, what="webhooks worker")
        wait_for(lambda: proc.popen.poll() is None, timeout=1, what="webhooks worker alive")
        yield s
    finally:
        s.close()


def deliver(stack: Stack, url: str) -> dict:
    """Write a finished job asking for a webhook, send its delivery, wait for the end."""
    from tasks.jobs.store import JobStore
    from tasks.messaging.app import make_celery
    from tasks.messaging.names import DELIVER_WEBHOOK

    store = JobStore(stack.settings.redis_url)
    job_id = uuid.uuid4().hex
    hook = {"url": url, "state": "pending", "attempts": 0}
    store.create({**RECORD, "id": job_id, "webhook": hook, "created_at": time.time()})
    make_celery(stack.settings).send_task(DELIVER_WEBHOOK, kwargs={"job_id": job_id})
    out: dict = {}

    def ended() -> bool:
        out.update((store.get(job_id) or {}).get("webhook") or {})
        return out.get("state") in {"delivered", "dead", "refused"}

    wait_for(ended, timeout=60, what=f"webhook of {job_id}")
    return out


def memory_kb(pid: int) -> dict[str, int]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {
        k: int(v.split()[0])
        for k, _, v in (ln.partition(":") for ln in lines)
        if k in {"VmHWM", "VmRSS"}
    }


def test_a_receiver_sending_400_mb_costs_the_worker_under_10_mb(
    hooks: Stack, receiver: Receiver
) -> None:
    pid = next(p for p in hooks.procs if p.name == "webhooks").popen.pid
    url = f"http://127.0.0.1:{receiver.port}/hook/{TOKEN}?sig={TOKEN}"
    assert deliver(hooks, url)["last_result"] == "HTTP 204"  # warm: imports, clients
    receiver.mode = "huge"
    before = memory_kb(pid)["VmRSS"]
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak RSS := current RSS
    hook = deliver(hooks, url)
    peak = memory_kb(pid)["VmHWM"]
    print(
        f"400 MB receiver: worker peak RSS {peak - before:+d} KiB over {before} KiB; "
        f"receiver got {receiver.sent / 2**20:.0f} MiB out before the worker closed"
    )
    assert hook["state"] == "delivered" and hook["last_result"] == "HTTP 200"
    assert peak - before < 10 * 1024
    assert receiver.sent < 100 * 1024 * 1024  # the body was never read


def test_a_dripping_receiver_is_cut_at_the_deadline(hooks: Stack, receiver: Receiver) -> None:
    receiver.mode = "drip"
    hook = deliver(hooks, f"http://127.0.0.1:{receiver.port}/hook/{TOKEN}")
    assert hook["state"] == "dead" and hook["last_result"] == "unreachable"
    wait_for(lambda: receiver.held_s, timeout=10, what="the receiver to see the cut")
    (held,) = receiver.held_s
    print(f"dripping receiver held the delivery {held:.2f}s (deadline {DEADLINE_S}s)")
    assert DEADLINE_S - 1 <= held <= DEADLINE_S + 1


def test_the_webhooks_worker_logs_through_the_redacting_handler(hooks: Stack) -> None:
    """``celery -A tasks worker`` sets Kiln's logging up (JSON lines, secrets scrubbed)."""
    log = next(p for p in hooks.procs if p.name == "webhooks").output()
    assert '"logger": "kiln.webhooks"' in log
    assert PASSWORD not in log and TOKEN not in log
