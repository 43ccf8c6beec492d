"""The fleet across hosts, for the tests: each host a network namespace (``harness.netns``).

::

        internal 10.203.0.0/24                      public 10.203.1.0/24
    gpu1 .11 ─┐                                  ┌─ client .10 (webhook receiver)
    gpu2 .12 ─┼── store .2 (Valkey, S3) .2 ──────┤
    gpu3 .13 ─┤                                  │
              └── api .3 (API, webhooks) .3 ─────┘

The store host runs Valkey (internal address only, with a password) and one S3 server
answering on both its addresses; the API host serves on its public address only and
reaches the store on the internal side; GPU hosts are on the internal side only; the
client host on the public side only, so everything a client does goes through the API's
public address and the URLs it is given. Every process binds its own host's address,
all in the prod profile with API keys. The test process joins a host for a call
(:meth:`HostFleet.on`).
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import redis
import requests
import yaml

from app.auth import hash_key, new_key
from app.devfleet import s3_argv, valkey_argv
from harness.http import KilnHTTP
from harness.netns import Host, Network, run_in
from harness.stack import BIN, ROOT, SECRETS, Proc, Stack, process_env, stop_all, wait_for

T = TypeVar("T")
SUBNETS = {"internal": "10.203.0", "public": "10.203.1"}
HOSTS = {
    "store": {"internal": 2, "public": 2},
    "api": {"internal": 3, "public": 3},
    "gpu1": {"internal": 11},
    "gpu2": {"internal": 12},
    "gpu3": {"internal": 13},
    "client": {"public": 10},
}
REDIS_PORT, S3_PORT, API_PORT = 6379, 9000, 8000
MODEL = "tiny-sd"  # served by gpu1 and gpu2
LATE_MODEL = "tiny-late"  # served only by the host that joins later


def models_file(directory: Path) -> Path:
    entries = [
        {
            "name": name,
            "family": "sd15",
            "tiny": "sd-mini",
            "max_batch": 8,
            "defaults": {"width": 64, "height": 64, "steps": 4},
        }
        for name in (MODEL, LATE_MODEL)
    ]
    path = directory / "models.yaml"
    path.write_text(yaml.safe_dump({"models": entries}))
    return path


class HostFleet(Stack):
    """A :class:`Stack` whose parts run on the hosts of one :class:`Network`."""

    def __init__(self, workdir: Path, *, models_dir: Path) -> None:
        super().__init__(workdir, models_dir=models_dir)
        self.net: Network | None = None
        self.key = new_key()
        SECRETS.append(self.key)

    def host(self, name: str) -> Host:
        assert self.net is not None
        return self.net.hosts[name]

    def on(self, host: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``call`` run as a program on ``host`` would (its sockets are that host's)."""
        return run_in(self.host(host).netns, call, *args, **kwargs)

    def addr(self, host: str, network: str = "internal") -> str:
        return self.host(host).address(network)

    # -- the fleet -------------------------------------------------------------
    def start(self, *, extra_env: dict[str, str] | None = None) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.net = Network(SUBNETS)
        for name, octets in HOSTS.items():
            self.net.add(name, **octets)
        store_in, store_out = self.addr("store"), self.addr("store", "public")
        password = "redis-" + os.urandom(8).hex()
        access, secret = "kiln-hosts", "kiln-hosts-secret-" + os.urandom(6).hex()
        self.webhook_secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
        SECRETS.extend([password, secret, self.webhook_secret])
        (self.workdir / "s3").mkdir(exist_ok=True)
        store_ns = self.host("store").netns
        self.spawn(
            "valkey",
            [*valkey_argv(REDIS_PORT, bind=store_in), "--requirepass", password],
            env=process_env(),
            netns=store_ns,
        )
        self.spawn(
            "s3",
            s3_argv(S3_PORT, self.workdir / "s3", access, secret, binds=(store_in, store_out)),
            env=process_env(),
            netns=store_ns,
        )
        redis_url = f"redis://:{password}@{store_in}:{REDIS_PORT}/0"
        self.env = {
            **process_env(),
            "KILN_PROFILE": "prod",
            "KILN_API_KEYS": f"client:{hash_key(self.key)}:generate+read",
            "KILN_DEVICE": "cpu",
            "KILN_MODELS_FILE": str(models_file(self.workdir)),
            "KILN_MODELS_DIR": str(self.models_dir),
            "KILN_REQUIRED_MODELS": MODEL,
            "KILN_BROKER_URL": redis_url,
            "KILN_REDIS_URL": redis_url,
            "KILN_S3_ENDPOINT_URL": f"http://{store_in}:{S3_PORT}",
            "KILN_S3_PUBLIC_ENDPOINT_URL": f"http://{store_out}:{S3_PORT}",
            "KILN_S3_ACCESS_KEY": access,
            "KILN_S3_SECRET_KEY": secret,
            "KILN_S3_BUCKET": "kiln-hosts",
            "KILN_WEBHOOK_SECRET": self.webhook_secret,
            "KILN_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver's public side is 10.203.1.x
            "KILN_WEBHOOK_BACKOFF_S": "0.2",
            "KILN_RATE_LIMIT": "100000/minute",
            **(extra_env or {}),
        }
        wait_for(lambda: self.on("store", self.ping), timeout=20, what="valkey on the store host")
        wait_for(
            lambda: (
                self.on("client", requests.get, f"http://{store_out}:{S3_PORT}/", timeout=1)
                is not None
            ),  # any answer, 4xx included: it is up
            timeout=20,
            what="s3 on the store host's public address",
        )

    def run_kiln_on(self, host: str, *args: str) -> subprocess.CompletedProcess[str]:
        """``kiln ARGS`` on ``host`` with that host's settings, run to its end."""
        return subprocess.run(
            ["ip", "netns", "exec", self.host(host).netns, str(BIN / "kiln"), *args],
            env=self.host_env(host),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def ping(self) -> bool:
        return bool(redis.Redis.from_url(self.env["KILN_REDIS_URL"], socket_timeout=2).ping())

    def host_env(self, host: str) -> dict[str, str]:
        """What a host's processes are given: the shared settings and a data dir of its own."""
        return {**self.env, "KILN_DATA_DIR": str(self.workdir / host)}

    def ready_workers(self, model: str) -> int:
        from tasks.jobs.bookkeeping import ready_workers

        def count() -> int:
            client = redis.Redis.from_url(self.env["KILN_REDIS_URL"], socket_timeout=2)
            return ready_workers(client, model)

        return self.on("store", count)

    def start_gpu_worker(
        self, host: str, *, model: str = MODEL, env: dict[str, str] | None = None
    ) -> Proc:
        return self.start_worker(
            model,
            name=host,
            env=env if env is not None else self.host_env(host),
            wait=False,
            netns=self.host(host).netns,
        )

    def start_api_host(self) -> str:
        """The API on the API host's public address, and the webhooks worker beside it."""
        api_ns, public = self.host("api").netns, self.addr("api", "public")
        env = {**self.host_env("api"), "KILN_API_HOST": public, "KILN_API_PORT": str(API_PORT)}
        proc = self.spawn(
            "api",
            [
                str(BIN / "gunicorn"),
                "-c",
                "python:config.gunicorn",
                "--threads",
                "16",
                "-b",
                f"{public}:{API_PORT}",
                "app:create_app()",
            ],
            env=env,
            netns=api_ns,
        )
        self.api_url = f"http://{public}:{API_PORT}"
        wait_for(
            lambda: self.on("client", requests.get, f"{self.api_url}/healthz", timeout=1).ok,
            timeout=60,
            what="api on its public address",
            proc=proc.popen,
        )
        self.start_webhooks_worker(env=env, netns=api_ns)
        return self.api_url

    def client(self) -> KilnHTTP:
        """A client of the API as the client host has it (use it inside :meth:`on`)."""
        return KilnHTTP(self.api_url, headers={"Authorization": f"Bearer {self.key}"})

    def from_client(self, method: str, path: str, **kw: Any) -> requests.Response:
        """One request from the client host to the API."""
        return self.on("client", getattr(self.client(), method), path, **kw)

    def store_call(self, call: Callable[[redis.Redis], T]) -> T:
        """``call(client)`` with a client of the job store, from the store host."""

        def body() -> T:
            client = redis.Redis.from_url(
                self.env["KILN_REDIS_URL"], socket_timeout=5, decode_responses=True
            )
            try:
                return call(client)
            finally:
                client.close()

        return self.on("store", body)

    def objects(self, prefix: str) -> list[str]:
        return self.on("store", super().objects, prefix)

    def close(self) -> None:
        """Every process at once, a short while for a clean stop (nothing here tests
        one), then the namespaces (and anything still in them)."""
        try:
            stop_all(self.procs, timeout=3)
            self.procs.clear()
        finally:
            if self.net is not None:
                self.net.close()
