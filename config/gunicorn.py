"""gunicorn settings for the API: ``gunicorn -c python:config.gunicorn "app:create_app()"``.

Turns on prometheus-client's multiprocess mode so that ``/metrics`` sums every
worker process, and forgets a worker's files when it exits.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

worker_class = "gthread"
threads = 32
control_socket_disable = True  # gunicorn 27 writes a control socket otherwise

_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="kiln-prom-")
shutil.rmtree(_dir, ignore_errors=True)
os.makedirs(_dir, exist_ok=True)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _dir


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_fork(server: Any, worker: Any) -> None:
    """Each API worker logs like the rest of Kiln (JSON outside dev), secrets redacted."""
    from config.logging import setup_logging
    from config.settings import get_settings

    setup_logging(get_settings())
