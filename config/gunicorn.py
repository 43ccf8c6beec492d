"""gunicorn settings for the API: ``gunicorn -c python:config.gunicorn "app:create_app()"``.

Turns on prometheus-client's multiprocess mode so that ``/metrics`` sums every
worker process (``PROMETHEUS_MULTIPROC_DIR``, a fresh temporary folder unless set),
forgets a worker's files when it exits, and logs through Kiln's logging (JSON lines
outside dev, secrets redacted).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

worker_class = "gthread"
threads = 32
control_socket_disable = True  # gunicorn 27 writes a control socket otherwise

_owned = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="kiln-prom-")
shutil.rmtree(_dir, ignore_errors=True)  # counters start at zero with the master
os.makedirs(_dir, exist_ok=True)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _dir


def post_fork(server: Any, worker: Any) -> None:  # before the app loads
    from config.logging import setup_logging
    from config.settings import get_settings

    setup_logging(get_settings())


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    if _owned:
        shutil.rmtree(_dir, ignore_errors=True)
