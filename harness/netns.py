"""Hosts as Linux network namespaces, joined by veth pairs to bridges in a switch namespace.

A :class:`Network` makes, for one test run, a ``switch`` namespace holding one bridge per
network (``internal``, ``public``, ...) and a namespace per host, each with one veth per
network it is on, an address this module assigns from that network's private subnet,
and loopback. Nothing is made in the root namespace: no bridge, no veth, no route, so no
traffic can leave these namespaces, and none has a route to anything outside them.

Names carry this process's id (``kh<pid>x<n>-<host>``), so parallel test runs never meet;
:meth:`Network.close` removes every namespace (also at exit, as a backstop, and a SIGTERM
reads as an interrupt while a network is up, so that it too ends in the clean-ups),
after ending the processes still inside them, which only this network's users can have
started. Names left by a run killed outright are deleted by the next run.
``cut`` / ``mend`` set a host's port on a bridge down and up: its packets are dropped,
its connections see timeouts, not resets, as when a cable or a switch port fails.

The test process joins a host for one call (:func:`run_in`: a thread of its own enters
the namespace, so its sockets are that host's); programs start there with
``ip netns exec`` or through a launcher's :func:`enter`.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import itertools
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
_count = itertools.count()
_OURS = re.compile(r"^kh(\d+)x\d+-")


def enter(name: str) -> None:
    """Move the calling thread into network namespace ``name`` (``/run/netns/<name>``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in(name: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``call(*args, **kwargs)`` on a thread inside namespace ``name``; its result or error.
    Sockets made there stay that host's after the call."""
    out: dict[str, Any] = {}

    def body() -> None:
        try:
            enter(name)
            out["value"] = call(*args, **kwargs)
        except BaseException as exc:  # handed to the caller
            out["error"] = exc

    thread = threading.Thread(target=body, name=f"in-{name}", daemon=True)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    value: T = out["value"]
    return value


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


_open: set[int] = set()  # the networks up in this process (ids)


def interrupt_on_sigterm(network: object) -> None:
    """While ``network`` is up, a SIGTERM raises KeyboardInterrupt (as Ctrl-C does) where
    nothing else handles it, so ``finally`` blocks, fixtures' teardowns and atexit run."""
    _open.add(id(network))
    main = threading.current_thread() is threading.main_thread()
    if main and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def sigterm_as_before(network: object) -> None:
    """The default SIGTERM again once the last network of this process is down."""
    _open.discard(id(network))
    main = threading.current_thread() is threading.main_thread()
    if main and not _open and signal.getsignal(signal.SIGTERM) is _interrupt:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def unavailable() -> str:
    """Why network namespaces cannot be made here ('' when they can)."""
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    if shutil.which("ip") is None:
        return "no ip command (iproute2)"
    probe = f"kh{os.getpid()}x{next(_count)}-probe"
    try:
        ip("netns", "add", probe)
        ip("-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
    except (RuntimeError, OSError) as exc:
        return f"cannot make network namespaces: {exc}"
    finally:
        with contextlib.suppress(RuntimeError, OSError):
            ip("netns", "delete", probe)
    return ""


def remove_stale() -> None:
    """Delete the names of namespaces left by runs whose process is gone (killed outright)."""
    for name in namespaces():
        m = _OURS.match(name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            with contextlib.suppress(RuntimeError):
                ip("netns", "delete", name)


@dataclass
class Host:
    name: str
    netns: str
    addresses: dict[str, str] = field(default_factory=dict)  # network -> address

    def address(self, network: str) -> str:
        return self.addresses[network]


class Network:
    """A switch namespace with one bridge per network, and hosts plugged into them."""

    def __init__(self, subnets: dict[str, str]) -> None:
        """``subnets``: network name → its first three octets, e.g. ``{"internal": "10.203.0"}``."""
        remove_stale()
        self.tag = f"kh{os.getpid()}x{next(_count)}"
        self.subnets = dict(subnets)
        self.hosts: dict[str, Host] = {}
        self.switch = f"{self.tag}-switch"
        self._made: list[str] = []
        atexit.register(self.close)
        interrupt_on_sigterm(self)
        self._add_namespace(self.switch)
        for net in self.subnets:
            ip("-n", self.switch, "link", "add", self._bridge(net), "type", "bridge")
            ip("-n", self.switch, "link", "set", self._bridge(net), "up")

    @staticmethod
    def _bridge(net: str) -> str:
        return f"br-{net}"[:15]

    @staticmethod
    def _port(host: str, net: str) -> str:
        return f"{host[:9]}-{net[:3]}"

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self._made.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def add(self, name: str, **octets: int) -> Host:
        """Host ``name`` on each network named, at ``<subnet>.<octet>``."""
        host = Host(name, f"{self.tag}-{name}")
        self._add_namespace(host.netns)
        for net, octet in octets.items():
            port, inside = self._port(name, net), f"eth-{net}"[:15]
            ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", inside)
            ip("-n", self.switch, "link", "set", inside, "netns", host.netns)
            ip("-n", self.switch, "link", "set", port, "master", self._bridge(net), "up")
            address = f"{self.subnets[net]}.{octet}"
            ip("-n", host.netns, "addr", "add", f"{address}/24", "dev", inside)
            ip("-n", host.netns, "link", "set", inside, "up")
            host.addresses[net] = address
        self.hosts[name] = host
        return host

    def cut(self, host: str, net: str) -> None:
        """Unplug ``host`` from ``net``: its packets there are dropped until :meth:`mend`."""
        ip("-n", self.switch, "link", "set", self._port(host, net), "down")

    def mend(self, host: str, net: str) -> None:
        ip("-n", self.switch, "link", "set", self._port(host, net), "up")

    @contextlib.contextmanager
    def cut_off(self, host: str, net: str) -> Iterator[None]:
        self.cut(host, net)
        try:
            yield
        finally:
            self.mend(host, net)

    def pids(self, name: str) -> list[int]:
        with contextlib.suppress(RuntimeError):
            return [int(p) for p in ip("netns", "pids", name).split()]
        return []

    def close(self) -> None:
        """End what still runs inside these namespaces, then remove them."""
        made, self._made = self._made, []
        sigterm_as_before(self)
        for name in made:
            for pid in self.pids(name):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for name in reversed(made):
            with contextlib.suppress(RuntimeError):
                ip("netns", "delete", name)
