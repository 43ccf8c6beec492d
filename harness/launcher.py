"""Start Kiln's programs as forks of a process that has already imported their libraries.

A fresh ``kiln worker`` spends 5 to 8 CPU-seconds importing torch, diffusers and
transformers before it runs a line of Kiln; the API and the webhooks worker about one
importing Flask, Celery and boto3. The test suite starts dozens of them on two cores, so
those imports cost it more than any test. A launcher is a small server that imports the
libraries once, then forks on request. The child becomes the program:

- the same console-script entry point (``kiln``, ``gunicorn``, ``celery``) with the same
  argv, environment, working directory and log, in a session of its own, so it is
  signalled, killed and waited for like any subprocess (``LaunchedProcess``), and in
  the network namespace asked for (a host of ``harness.hosts``);
- Kiln's own modules are not preloaded: the child imports and runs all of Kiln itself.

Only libraries that read nothing from the environment at import time are preloaded
(``prometheus_client``, which reads its multiprocess directory then, is left to the
child), with what they build once and keep (``WARM``: files read, tables compiled), and
a launcher serves only requests whose environment matches its own in all that its
libraries may read (everything but ``UNREAD``). Where the environment says not to write
bytecode, the children share theirs in the launcher's folder (gone with it). The worker launcher
is kept apart from the web one, so an API process never holds torch. ``Stack.spawn``
falls back to a plain ``exec`` for any other program or environment.

Used by the test suite (``tests/conftest.py`` calls ``enable``; under xdist its worker
processes ``share`` one launcher of each flavor, started by whichever needs it first and
ended with the run); the benchmarks measure real starts and never use it. The server
side is ``harness.launcher_server``.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from harness.launcher_server import running

SCRIPTS = ("kiln", "gunicorn", "celery")
FLAVORS = ("worker", "web")  # ``kiln worker``, and every other program
# Read by no preloaded library at import: Kiln's settings, pytest's note of the current
# test, prometheus_client's directory (never preloaded), the directory torch's compiler
# sets in the test process's own environment once a test compiles (read when compiling)
# and the terminal size xdist gives its workers (read when printing).
UNREAD = (
    "KILN_",
    "PYTEST_",
    "PROMETHEUS_MULTIPROC_DIR",
    "TORCHINDUCTOR_CACHE_DIR",
    "COLUMNS",
    "LINES",
)
_enabled = False
_shared: tuple[Path, int] | None = None  # the folder of a run's launchers, and its owner
_launchers: dict[str, Launcher] = {}
_lock = threading.Lock()


def enable() -> None:
    """Let ``Stack.spawn`` start Kiln's programs through launchers (this process only)."""
    global _enabled
    _enabled = True


def share(directory: Path, *, owner: int) -> None:
    """Use the launchers in ``directory``, started there by whichever process of a run
    needs one first and ended when ``owner`` (the process that ends the run) is gone."""
    global _shared
    _shared = (directory, owner)


def prestart(env: Mapping[str, str], *, cwd: Path) -> None:
    """Start the launchers of every flavor for ``env`` now (their imports take seconds),
    where ``launch`` would start them on first use."""
    with _lock:
        for flavor in FLAVORS:
            if flavor not in _launchers:
                _launchers[flavor] = _launcher(flavor, base_env(env), cwd)


def close_shared(directory: Path) -> None:
    """End the launchers in ``directory`` and remove it (the run's owner, at its end)."""
    for info in directory.glob("*/launcher.json"):
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(json.loads(info.read_text())["pid"]), signal.SIGKILL)
    shutil.rmtree(directory, ignore_errors=True)


def base_env(env: Mapping[str, str]) -> dict[str, str]:
    """What a launcher's libraries may have read at import time."""
    return {k: v for k, v in env.items() if not k.startswith(UNREAD)}


def launch(
    argv: list[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log: Path,
    err: Path | None = None,
    netns: str = "",
) -> LaunchedProcess | None:
    """A ``LaunchedProcess`` running ``argv`` (its stdout, and its stderr unless ``err``
    is given, to ``log``), or None where a plain exec must start it."""
    script = Path(argv[0])
    if not _enabled or script.name not in SCRIPTS or script.parent != Path(sys.executable).parent:
        return None
    flavor = "worker" if argv[1:2] == ["worker"] and script.name == "kiln" else "web"
    with _lock:
        launcher = _launchers.get(flavor)
        if launcher is None or not launcher.alive():
            launcher = _launchers[flavor] = _launcher(flavor, base_env(env), cwd)
    if launcher.env != base_env(env):
        return None
    return launcher.start(argv, env=env, cwd=cwd, log=log, err=err, netns=netns)


def _launcher(flavor: str, env: dict[str, str], cwd: Path) -> Launcher:
    """This process's own launcher, or the run's (found, else started) when shared."""
    if _shared is None:
        launcher = Launcher.start_server(flavor, env, cwd=cwd)
        atexit.register(launcher.close)
        return launcher
    root, owner = _shared
    with (root / f"{flavor}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one start among the run's processes
        found = Launcher.found(root / flavor)
        if found is not None and found.alive():
            return found
        return Launcher.start_server(flavor, env, cwd=cwd, directory=root / flavor, owner=owner)


class Launcher:
    """One launcher server and the status files of its children: ``<pid>`` holds the
    exit code, as ``Popen.returncode`` spells it; ``launcher.json`` its pid and the
    environment it preloaded in."""

    def __init__(self, directory: Path, pid: int, env: dict[str, str]) -> None:
        self.dir, self.pid, self.env = directory, pid, env
        self.sock = str(directory / "sock")
        self.popen: subprocess.Popen | None = None  # when this process started it

    @classmethod
    def start_server(
        cls,
        flavor: str,
        env: dict[str, str],
        *,
        cwd: Path,
        directory: Path | None = None,
        owner: int | None = None,
    ) -> Launcher:
        """A new server in ``directory`` (a fresh temporary one by default) that ends when
        ``owner`` (this process by default) is gone."""
        directory = directory or Path(tempfile.mkdtemp(prefix=f"kiln-launcher-{flavor}-"))
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "sock").unlink(missing_ok=True)  # a former server's
        argv = ["-m", "harness.launcher_server", flavor, str(directory), str(owner or os.getpid())]
        with (directory / "launcher.log").open("ab") as log:
            popen = subprocess.Popen(
                [sys.executable, "-u", *argv],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        info = directory / "launcher.json.tmp"
        info.write_text(json.dumps({"pid": popen.pid, "env": env}))
        info.rename(directory / "launcher.json")
        launcher = cls(directory, popen.pid, env)
        launcher.popen = popen
        return launcher

    @classmethod
    def found(cls, directory: Path) -> Launcher | None:
        """The server another process started in ``directory``, if any."""
        try:
            info = json.loads((directory / "launcher.json").read_text())
        except FileNotFoundError:
            return None
        return cls(directory, int(info["pid"]), info["env"])

    def alive(self) -> bool:
        return self.popen.poll() is None if self.popen else running(self.pid)

    def start(
        self,
        argv: list[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log: Path,
        err: Path | None = None,
        netns: str = "",
    ) -> LaunchedProcess:
        spec = {
            "argv": argv,
            "env": dict(env),
            "cwd": str(cwd),
            "log": str(log),
            "err": str(err or log),
            "netns": netns,
        }
        deadline = time.monotonic() + 120  # the first request waits for the imports
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(self.sock)
                    s.sendall(json.dumps(spec).encode() + b"\n")
                    reply = s.makefile().readline()  # once the child is set up
                if not reply:
                    raise RuntimeError(f"launcher child failed to start {argv}: {self.log()}")
                return LaunchedProcess(int(json.loads(reply)["pid"]), self.dir)
            except (FileNotFoundError, ConnectionRefusedError):
                if not self.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"launcher did not start:\n{self.log()}") from None
                time.sleep(0.05)

    def log(self) -> str:
        return (self.dir / "launcher.log").read_text(errors="replace")[-3000:]

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


class LaunchedProcess:
    """What the harness uses of ``subprocess.Popen``, for a launcher's child."""

    def __init__(self, pid: int, status_dir: Path) -> None:
        self.pid = pid
        self.args = [str(pid)]
        self.returncode: int | None = None
        self._status = status_dir / str(pid)

    def poll(self) -> int | None:
        if self.returncode is None and self._status.exists():
            self.returncode = int(self._status.read_text())
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            time.sleep(0.02)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
