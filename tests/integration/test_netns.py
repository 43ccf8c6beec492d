"""The hosts of harness.netns: joined only by their bridges, nothing made outside their
own namespaces, and every namespace removed, also when the run is interrupted."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from harness import netns
from harness.stack import ROOT

REASON = netns.unavailable()
pytestmark = pytest.mark.skipif(bool(REASON), reason=REASON or "namespaces can be made")


@pytest.fixture
def net() -> Iterator[netns.Network]:
    n = netns.Network({"inside": "10.204.0", "outside": "10.204.1"})
    try:
        n.add("a", inside=2)
        n.add("b", inside=3, outside=3)
        n.add("c", outside=4)
        yield n
    finally:
        n.close()


def listen(address: str) -> socket.socket:
    s = socket.socket()
    s.bind((address, 0))
    s.listen(1)
    return s


def connect(address: str, port: int) -> str:
    try:
        with socket.create_connection((address, port), timeout=3):
            return "connected"
    except OSError as exc:
        return type(exc).__name__


def test_hosts_meet_only_on_the_networks_they_share_and_have_no_way_out(
    net: netns.Network,
) -> None:
    b, c = net.hosts["b"], net.hosts["c"]
    server = netns.run_in(b.netns, listen, b.address("inside"))
    port = server.getsockname()[1]
    try:
        assert netns.run_in(net.hosts["a"].netns, connect, b.address("inside"), port) == (
            "connected"
        )
        # a and c share no network: no route at all, at once (never a packet out).
        assert netns.run_in(net.hosts["a"].netns, connect, c.address("outside"), 1) == "OSError"
        net.cut("a", "inside")
        assert netns.run_in(net.hosts["a"].netns, connect, b.address("inside"), port) in {
            "TimeoutError",
            "timeout",
        }
        net.mend("a", "inside")
    finally:
        server.close()
    for host in net.hosts.values():
        assert "default" not in netns.ip("-n", host.netns, "route")
    root_links = netns.ip("-o", "link")
    assert net.tag not in root_links and "br-inside" not in root_links
    assert all(h.netns in netns.namespaces() for h in net.hosts.values())


SCRIPT = """
import sys, time
from harness import netns
n = netns.Network({"inside": "10.204.2"})
n.add("x", inside=2)
print(n.tag, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_run_removes_its_namespaces(sig: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        tag = proc.stdout.readline().strip()
        assert tag and any(name.startswith(tag) for name in netns.namespaces())
        proc.send_signal(sig)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not [name for name in netns.namespaces() if name.startswith(tag)]
