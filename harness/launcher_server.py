"""The launcher's server (``python -m harness.launcher_server FLAVOR DIR OWNER``): it
preloads a flavor's libraries, then forks one child per request that becomes the program
asked for (``harness.launcher`` is the side that asks). It ends when its owner, the
process whose stacks it serves, is gone.

``WEB`` serves the API, the webhooks worker, Flower and the ``kiln`` command line;
``WORKER`` (``kiln worker``) adds torch, diffusers and transformers, so that an API
process never holds torch.
"""

from __future__ import annotations

import gc
import json
import os
import select
import socket
import sys
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


def preload(flavor: str) -> None:
    for name in WORKER if flavor == "worker" else WEB:
        import_module(name)
    if flavor == "worker":
        for package, names in LAZY.items():
            for attr in names:
                getattr(import_module(package), attr)
    for warm in WARM[flavor]:
        warm()


def running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, ended and not yet waited for, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def serve(flavor: str, directory: Path, owner: int) -> tuple[dict[str, Any], socket.socket]:
    """Preload, then fork one child per request while ``owner`` runs; returns only in a
    child, with its spec and the connection it answers on once it is set up (as
    ``Popen`` returns after the exec)."""
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
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(directory / "sock.tmp"))
    listener.listen(64)
    os.rename(directory / "sock.tmp", directory / "sock")
    while running(owner):
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
    raise SystemExit(0)  # the test run is over


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
    become(*serve(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])))
