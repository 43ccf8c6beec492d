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

Used by the test suite (``tests/conftest.py`` calls ``enable``); the benchmarks measure
real starts and never use it.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

# The commands of celery's command line, which ``worker_main`` runs (not
# ``celery.bin.celery`` itself: it loads Flower's plugin, and so prometheus_client).
CELERY_COMMANDS = (
    "amqp",
    "base",
    "beat",
    "call",
    "control",
    "events",
    "graph",
    "list",
    "logtool",
    "migrate",
    "multi",
    "purge",
    "result",
    "shell",
    "upgrade",
    "worker",
)
WEB = (
    "flask",
    "flask_smorest",
    "flask_limiter",
    "limits",
    "marshmallow",
    "celery",
    *(f"celery.bin.{command}" for command in CELERY_COMMANDS),
    "celery.worker",
    "celery.apps.worker",
    "celery.concurrency.thread",
    "kombu.transport.redis",
    "redis",
    "valkey",
    "boto3",
    "botocore.client",
    "requests",
    "click",
    "yaml",
    "PIL.Image",
    "gunicorn.app.wsgiapp",
    "gunicorn.arbiter",
    "gunicorn.workers.gthread",
)
WORKER = (
    *WEB,
    "torch",
    "diffusers",
    "transformers",
    "accelerate",
    "peft",
    "safetensors.torch",
)
# Pipeline and model classes that diffusers and transformers import lazily, on first use.
LAZY = {
    "diffusers": (
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
        "StableDiffusionInpaintPipeline",
        "StableDiffusionXLPipeline",
        "StableDiffusionXLImg2ImgPipeline",
        "StableDiffusionXLInpaintPipeline",
        "FluxPipeline",
        "FluxImg2ImgPipeline",
        "FluxInpaintPipeline",
        "AutoencoderKL",
    ),
    "transformers": (
        "CLIPTextModel",
        "CLIPTextModelWithProjection",
        "CLIPTokenizer",
        "T5EncoderModel",
        "T5TokenizerFast",
    ),
}


def _s3_data() -> None:
    """boto3's default session with the S3 client's data files read (its service model,
    endpoint rules, partitions): a client made with it connects to nothing."""
    import boto3

    boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="warm",
        aws_secret_access_key="warm-up",
    )


def _checkpoint_renames() -> None:
    """transformers' table of checkpoint key renames (about a thousand regular
    expressions), built the first time any model loads."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    get_checkpoint_conversion_mapping("")


# What the libraries build on first use and then keep for the process, the same in every
# process of a launcher's environment: done once, before the forks.
WARM = {"web": (_s3_data,), "worker": (_s3_data, _checkpoint_renames)}
SCRIPTS = ("kiln", "gunicorn", "celery")
# Read by no preloaded library at import: Kiln's settings, pytest's note of the current
# test, prometheus_client's directory (never preloaded) and the directory torch's compiler
# sets in the test process's own environment once a test compiles (read when compiling).
UNREAD = ("KILN_", "PYTEST_", "PROMETHEUS_MULTIPROC_DIR", "TORCHINDUCTOR_CACHE_DIR")
_enabled = False
_launchers: dict[str, Launcher] = {}
_lock = threading.Lock()


def enable() -> None:
    """Let ``Stack.spawn`` start Kiln's programs through launchers (this process only)."""
    global _enabled
    _enabled = True


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
            launcher = _launchers[flavor] = Launcher(flavor, base_env(env), cwd=cwd)
    if launcher.env != base_env(env):
        return None
    return launcher.start(argv, env=env, cwd=cwd, log=log, err=err, netns=netns)


class Launcher:
    """One launcher server (a subprocess of this process) and the status files of its
    children: ``<pid>`` holds the exit code, as ``Popen.returncode`` spells it."""

    def __init__(self, flavor: str, env: dict[str, str], *, cwd: Path) -> None:
        self.env = env
        self.dir = Path(tempfile.mkdtemp(prefix=f"kiln-launcher-{flavor}-"))
        self.sock = str(self.dir / "sock")
        self._log = (self.dir / "launcher.log").open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-u", "-m", "harness.launcher", flavor, str(self.dir)],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        atexit.register(self.close)

    def alive(self) -> bool:
        return self.popen.poll() is None

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
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        self._log.close()
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


# -- the server side --------------------------------------------------------------------
def preload(flavor: str) -> None:
    for name in WORKER if flavor == "worker" else WEB:
        import_module(name)
    if flavor == "worker":
        for package, names in LAZY.items():
            for attr in names:
                getattr(import_module(package), attr)
    for warm in WARM[flavor]:
        warm()


def serve(flavor: str, directory: Path) -> tuple[dict[str, Any], socket.socket]:
    """Preload, then fork one child per request; returns only in a child, with its spec and
    the connection it answers on once it is set up (as ``Popen`` returns after the exec)."""
    preload(flavor)
    if len(os.listdir("/proc/self/task")) != 1:
        raise SystemExit("the preloaded libraries started a thread; forking would be unsafe")
    if "prometheus_client" in sys.modules:
        raise SystemExit("prometheus_client was preloaded: its children would miss its directory")
    if sys.dont_write_bytecode:  # PYTHONDONTWRITEBYTECODE: Kiln's modules were compiled
        # by every child; the children share their bytecode here instead, gone with this.
        sys.pycache_prefix = str(directory / "pycache")
        sys.dont_write_bytecode = False
    # The preloaded objects live as long as each child: outside the collector's sweeps,
    # which would otherwise walk (and copy, page by page) all of them in every child.
    gc.freeze()
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(directory / "sock.tmp"))
    listener.listen(64)
    os.rename(directory / "sock.tmp", directory / "sock")
    while os.getppid() == parent:
        reap(directory)
        ready, _, _ = select.select([listener], [], [], 0.05)
        if not ready:
            continue
        conn, _ = listener.accept()
        spec = json.loads(conn.makefile().readline())
        if os.fork() == 0:
            listener.close()
            return spec, conn
        conn.close()
    raise SystemExit(0)  # the test process is gone


def reap(directory: Path) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        tmp = directory / f"{pid}.tmp"
        tmp.write_text(str(code))
        tmp.rename(directory / str(pid))


def become(spec: dict[str, Any], conn: socket.socket) -> None:
    """In the child: the network namespace (``netns``, as ``ip netns exec`` enters it),
    session, directory, environment, log and argv of the program; then the answer (its
    pid); then its console-script entry point, as its own script would run it."""
    if spec.get("netns"):
        from harness.netns import enter

        enter(spec["netns"])
    os.setsid()
    os.chdir(spec["cwd"])
    os.environ.clear()
    os.environ.update(spec["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for fd, path in ((1, spec["log"]), (2, spec["err"])):
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(out, fd)
        os.close(out)
    sys.argv = list(spec["argv"])
    sys.path[0] = str(Path(sys.argv[0]).parent)  # as for a script run directly
    (entry,) = entry_points(group="console_scripts", name=Path(sys.argv[0]).name)
    with conn:
        conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
    sys.exit(entry.load()())


if __name__ == "__main__":
    become(*serve(sys.argv[1], Path(sys.argv[2])))
