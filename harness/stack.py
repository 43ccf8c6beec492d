"""Start the real stack on free ports: Valkey, an S3 server, workers, the API.

Used by the integration fixtures and by the benchmarks. Every process is a real
subprocess; everything listens on 127.0.0.1 only and is stopped on close. (The fleet
across hosts, ``harness.hosts``, starts the same processes in network namespaces.)
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import redis
import requests
import yaml

from app.devfleet import s3_argv, valkey_argv
from config.settings import Settings, from_env
from harness import launcher
from harness.launcher import LaunchedProcess

ROOT = Path(__file__).resolve().parent.parent
# Every secret any stack of this test session configured: the log scan looks for them.
SECRETS: list[str] = []
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    check, *, timeout: float, what: str, proc: subprocess.Popen | LaunchedProcess | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout}s")


def process_env() -> dict[str, str]:
    """The environment of every process a stack starts, before Kiln's settings: this one's,
    offline, unbuffered, importing this checkout (whatever the venv's editable install
    points at)."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("KILN_")},
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }


def run_kiln(
    *args: str, env: Mapping[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``kiln ARGS`` run to its end as a person runs it: no input, output read as text.
    In the stacks' environment, a launcher's child (``harness.launcher``) runs it."""
    argv = [str(BIN / "kiln"), *args]
    if launcher.base_env(env) == launcher.base_env(process_env()):
        with tempfile.TemporaryDirectory(prefix="kiln-run-") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            proc = launcher.launch(argv, env=env, cwd=ROOT, log=out, err=err)
            if proc is not None:
                try:
                    code = proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
                    raise
                return subprocess.CompletedProcess(argv, code, out.read_text(), err.read_text())
    return subprocess.run(
        argv,
        env=dict(env),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen | LaunchedProcess  # a launcher's child: harness.launcher
    log: Path
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    netns: str = ""  # the network namespace (host) it runs in; empty: this one

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        stop_all([self], sig, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the process itself (as the OOM killer would)."""
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def stop_all(procs: list[Proc], sig: int = signal.SIGTERM, *, timeout: float = 15) -> None:
    """Signal every process group at once, then wait for each (SIGKILL past ``timeout``):
    a warm shutdown takes seconds of waiting, which stopping them together overlaps."""
    running = [p for p in procs if p.popen.poll() is None]
    for p in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.popen.pid, sig)
    deadline = time.monotonic() + timeout
    for p in running:
        try:
            p.popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.popen.pid, signal.SIGKILL)
            p.popen.wait(5)


def end_on_signals() -> None:
    """Turn SIGTERM and SIGHUP (``timeout``, a closed terminal) into ``SystemExit`` in
    this process, so that the ``finally`` that closes a stack runs and ends every
    process it started. Only where nobody handles them yet, and only from the main
    thread (where Python delivers signals)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _exit_on)


def _exit_on(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@dataclass
class Stack:
    workdir: Path
    env_overrides: Mapping[str, str] = field(default_factory=dict)
    models_dir: Path | None = None
    procs: list[Proc] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    api_url: str = ""
    webhook_secret: str = ""
    worker_metrics_port: int = 0
    persist: bool = False  # Valkey with an append-only file, so a restart keeps its data

    # -- servers --------------------------------------------------------------
    def start_servers(
        self, *, broker_url: str | None = None, redis_password: str | None = None
    ) -> None:
        """Valkey (asking for ``redis_password`` when given) and an S3 server."""
        end_on_signals()  # a stack's owner killed by timeout still closes it
        self.workdir.mkdir(parents=True, exist_ok=True)
        redis_port, s3_port = free_port(), free_port()
        access, secret = "kiln-test", "kiln-test-secret-" + os.urandom(6).hex()
        self.webhook_secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
        SECRETS.extend([secret, self.webhook_secret, *filter(None, [redis_password])])
        data = self.workdir / "valkey"
        data.mkdir(exist_ok=True)
        auth = ["--requirepass", redis_password] if redis_password else []
        persist_dir = data if self.persist else None
        self.spawn("valkey", [*valkey_argv(redis_port, persist_dir=persist_dir), *auth])
        s3_dir = self.workdir / "s3"
        s3_dir.mkdir(exist_ok=True)
        self.spawn("s3", s3_argv(s3_port, s3_dir, access, secret))
        userinfo = f":{redis_password}@" if redis_password else ""
        redis_url = f"redis://{userinfo}127.0.0.1:{redis_port}/0"
        wait_for(lambda: redis.Redis.from_url(redis_url).ping(), timeout=20, what="valkey")
        wait_for(
            lambda: socket.create_connection(("127.0.0.1", s3_port), 0.5), timeout=20, what="s3"
        )
        self.env = {
            **process_env(),
            "KILN_PROFILE": "test",
            "KILN_DATA_DIR": str(self.workdir / "data"),
            "KILN_MODELS_DIR": str(self.models_dir or self.workdir / "models"),
            "KILN_BROKER_URL": broker_url or redis_url,
            "KILN_REDIS_URL": redis_url,
            "KILN_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
            "KILN_S3_ACCESS_KEY": access,
            "KILN_S3_SECRET_KEY": secret,
            "KILN_S3_BUCKET": "kiln-test",
            "KILN_WEBHOOK_SECRET": self.webhook_secret,
            "KILN_RATE_LIMIT": "100000/minute",
            # The test profile, like prod, needs API keys unless told otherwise: this stack
            # runs open; tests of keys and scopes override KILN_AUTH and KILN_API_KEYS.
            "KILN_AUTH": "off",
            # The tests serve on the CPU on purpose (a prod-profile worker with an fp16
            # model asks for CUDA otherwise); the GPU proof's stack says cuda.
            "KILN_DEVICE": "cpu",
            **self.env_overrides,
        }

    @property
    def settings(self) -> Settings:
        return from_env(self.env)

    def run_kiln(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """``kiln ARGS`` on this stack's settings (and ``env``), run to its end."""
        return run_kiln(*args, env={**self.env, **(env or {})}, timeout=timeout)

    def spawn(
        self, name: str, argv: list[str], *, env: Mapping[str, str] | None = None, netns: str = ""
    ) -> Proc:
        """``argv`` started in its own session (in network namespace ``netns`` if given)."""
        log = self.workdir / f"{name}.log"
        full_env = dict(env or self.env or os.environ)
        wrap = ["ip", "netns", "exec", netns] if netns else []
        popen = launcher.launch(
            argv, env=full_env, cwd=ROOT, log=log, netns=netns
        ) or subprocess.Popen(
            [*wrap, *argv],
            cwd=ROOT,
            env=full_env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        proc = Proc(name, popen, log, list(argv), full_env, netns)
        self.procs.append(proc)
        return proc

    def proc(self, name: str) -> Proc:
        return next(p for p in reversed(self.procs) if p.name == name)

    def restart(self, proc: Proc) -> Proc:
        """Start a stopped process again with the same command line and environment."""
        return self.spawn(proc.name, proc.argv, env=proc.env, netns=proc.netns)

    # -- kiln processes -------------------------------------------------------
    def start_worker(
        self,
        model: str,
        *,
        name: str | None = None,
        args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
        wait: bool = True,
        timeout: float = 120,
        netns: str = "",
        models: tuple[str, ...] = (),
    ) -> Proc:
        """A worker of ``model``, or (``models``) one worker serving several, the first
        of them ``model``; waits until it is ready for ``model``."""
        serve = ["--models", ",".join((model, *(m for m in models if m != model)))]
        proc = self.spawn(
            name or f"worker-{model}",
            [str(BIN / "kiln"), "worker", *(serve if models else ["--model", model]), *args],
            env={**self.env, **(env or {})},
            netns=netns,
        )
        if wait:
            self.wait_worker_ready(model, proc, timeout=timeout)
        return proc

    def redis(self) -> redis.Redis:
        """A client of this stack's job store (over TLS where its URL says rediss://)."""
        from config.tls import redis_client_options

        settings = self.settings
        return redis.Redis.from_url(
            settings.redis_url, **redis_client_options(settings, settings.redis_url)
        )

    def ready_workers(self, model: str) -> int:
        from tasks.jobs.bookkeeping import ready_workers

        return ready_workers(self.redis(), model)

    def wait_worker_ready(
        self, model: str, proc: Proc, *, timeout: float = 120, count: int = 1
    ) -> None:
        try:
            wait_for(
                lambda: self.ready_workers(model) >= count,
                timeout=timeout,
                what=f"worker {model}",
                proc=proc.popen,
            )
        except Exception as exc:
            raise RuntimeError(f"{exc}\n--- {proc.name} log ---\n{proc.output()[-4000:]}") from exc

    def start_api(
        self, *, threads: int = 16, workers: int = 1, env: Mapping[str, str] | None = None
    ) -> str:
        port = free_port()
        proc = self.spawn(
            f"api-{port}",
            [
                str(BIN / "gunicorn"),
                "-c",
                "python:config.gunicorn",
                "--threads",
                str(threads),
                "--workers",
                str(workers),
                "-b",
                f"127.0.0.1:{port}",
                "app:create_app()",
            ],
            env={**self.env, **(env or {})},
        )
        url = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: requests.get(f"{url}/healthz", timeout=1).ok,
            timeout=30,
            what="api",
            proc=proc.popen,
        )
        self.api_url = self.api_url or url
        return url

    def start_fleet(self, model: str, *, workers: int = 2) -> None:
        """The API, ``workers`` workers of ``model`` (w1, w2, ...) and the webhooks worker."""
        self.start_api()
        procs = [self.start_worker(model, name=f"w{i + 1}", wait=False) for i in range(workers)]
        self.wait_worker_ready(model, procs[0], count=workers)
        self.start_webhooks_worker()

    def start_webhooks_worker(
        self, *, env: Mapping[str, str] | None = None, netns: str = ""
    ) -> Proc:
        proc = self.spawn(
            "webhooks",
            [
                str(BIN / "celery"),
                "-A",
                "tasks",
                "worker",
                "--queues=webhooks",
                "--pool=threads",
                "--concurrency=4",
                "--hostname=webhooks@%h",
                "--loglevel=INFO",
                "--without-mingle",
                "--without-gossip",
            ],
            env={**self.env, **(env or {})},
            netns=netns,
        )
        return proc

    def s3(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.env["KILN_S3_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id=self.env["KILN_S3_ACCESS_KEY"],
            aws_secret_access_key=self.env["KILN_S3_SECRET_KEY"],
        )

    def objects(self, prefix: str) -> list[str]:
        resp = self.s3().list_objects_v2(Bucket=self.env["KILN_S3_BUCKET"], Prefix=prefix)
        return [o["Key"] for o in resp.get("Contents", [])]

    def close(self) -> None:
        """Kiln's processes together, then the servers they were talking to."""
        servers = [p for p in self.procs if p.name in ("valkey", "s3")]
        stop_all([p for p in self.procs if p not in servers])
        stop_all(servers)
        self.procs.clear()


def one_model_file(directory: Path, name: str, **spec: object) -> Path:
    """A models.yaml with one tiny SD 1.5-family model (``sd-mini``) named ``name``, its
    own queue even on a shared broker; ``spec`` adds or overrides entry fields. Its default
    size is the stand-in's own, as for ``tiny-sd``: the family's 512² would make the
    warm-up alone cost 9 CPU-seconds."""
    entry = {
        "name": name,
        "family": "sd15",
        "tiny": "sd-mini",
        "max_batch": 8,
        "defaults": {"width": 64, "height": 64},
        **spec,
    }
    return models_file(directory, [entry])


def models_file(directory: Path, entries: list[dict[str, object]]) -> Path:
    """``directory/models.yaml`` holding ``entries``."""
    path = directory / "models.yaml"
    path.write_text(yaml.safe_dump({"models": entries}))
    return path


def tiny_models_file(directory: Path, names: list[str], **spec: object) -> Path:
    """A models.yaml of several tiny SD 1.5-family models (one stand-in, its weights
    loaded once per name), each with its own queue: what a worker serving several
    models swaps between."""
    return models_file(
        directory,
        [
            {
                "name": name,
                "family": "sd15",
                "tiny": "sd-mini",
                "max_batch": 4,
                "defaults": {"width": 64, "height": 64},
                **spec,
            }
            for name in names
        ],
    )


@contextlib.contextmanager
def running_stack(workdir: Path, **kw) -> Iterator[Stack]:
    stack = Stack(workdir, **kw)
    try:
        stack.start_servers()
        yield stack
    finally:
        stack.close()
