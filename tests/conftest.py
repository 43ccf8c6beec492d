"""Fixtures shared by every test: tiny models, and one stack per pytest session.

Markers come from where a test lives and what it uses: ``tests/e2e`` → ``e2e``; a test
that uses a server fixture (``servers``, ``stack``, ``api``, ``redis_url``) or lives in
``tests/integration`` → ``integration``; everything else → ``unit``, which starts no
server (``pytest -m unit``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import launcher
from harness.http import KilnHTTP
from harness.stack import ROOT, Stack, free_port, process_env

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The suite's workers share two cores with each other and with pytest: one OpenMP thread
# each, or their spin-waits slow every pipeline call many times over (notes: infra).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Workers, APIs and webhooks workers start as forks of processes that imported their
# libraries once (harness.launcher): a fresh interpreter's imports cost more than most tests.
launcher.enable()
_run_launchers: list[Path] = []  # under xdist, in the controller: the folder its workers share


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:  # xdist, in the controller, for each worker
    """The xdist workers of one run share their launchers (one preload of each flavor,
    not one per worker), which end with this process."""
    import tempfile

    if not _run_launchers:  # started now, their imports overlap the workers' collection
        _run_launchers.append(Path(tempfile.mkdtemp(prefix="kiln-launchers-")))
        launcher.share(_run_launchers[0], owner=os.getpid())
        launcher.prestart(process_env(), cwd=ROOT)
    node.workerinput["kiln_launchers"] = str(_run_launchers[0])
    node.workerinput["kiln_launchers_owner"] = os.getpid()


def pytest_configure(config: pytest.Config) -> None:
    shared = getattr(config, "workerinput", {}).get("kiln_launchers")
    if shared:
        launcher.share(Path(shared), owner=int(config.workerinput["kiln_launchers_owner"]))


def pytest_unconfigure(config: pytest.Config) -> None:
    for directory in _run_launchers:
        launcher.close_shared(directory)


@pytest.fixture(scope="session")
def tiny_models_dir() -> Path:
    """Every tiny stand-in (``pipelines.tiny.make_all``) and its single-file checkpoint
    (``checkpoints/<recipe>.safetensors``), built once for this code and these library
    versions and kept in ~/.cache/kiln-tests (a lock lets parallel runs share it)."""
    import fcntl
    import hashlib
    import shutil
    from importlib.metadata import version

    from pipelines import original_layout, tiny

    recipe = (
        Path(tiny.__file__).read_bytes()
        + Path(original_layout.__file__).read_bytes()
        + " ".join(version(p) for p in ("torch", "diffusers", "transformers", "peft")).encode()
    )
    cache = Path.home() / ".cache" / "kiln-tests"
    out = cache / f"tiny-{hashlib.sha256(recipe).hexdigest()[:16]}"
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "tiny.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "ready").exists():
            building = out.with_suffix(".building")
            shutil.rmtree(building, ignore_errors=True)
            tiny.make_all(building)
            for name in tiny.CHECKPOINTS:
                tiny.make_checkpoint(name, building)
            (building / "ready").touch()
            shutil.rmtree(out, ignore_errors=True)
            building.rename(out)
    return out


SERVER_FIXTURES = {"servers", "stack", "api", "redis_url"}


# Under xdist (``make test``: ``--dist loadfile --no-loadscope-reorder``) the modules that
# take longest (own stacks, long faults) go first, so that the processes end on short ones
# together rather than one on a long one. A run in one process keeps the order it is given.
LONGEST_FIRST = (
    "test_faults",
    "test_hosts",
    "test_gpu_proof",
    "test_families",
    "test_readme",
    "test_web_page",
    "test_security",
    "test_batching",
    "test_reliability",
    "test_compile",
    "test_crash",
    "test_single_file",
    "test_cli",
    "test_fuzz",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker: this order is the schedule
        rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(Path(str(item.fspath)).stem, len(rank)))
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "e2e" in parts:
            item.add_marker(pytest.mark.e2e)
        elif "integration" in parts or SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Valkey and an S3 server on free ports, shared by the whole session."""
    s = Stack(tmp_path_factory.mktemp("stack"))
    try:
        s.start_servers()
        yield s
    finally:
        s.close()


@pytest.fixture
def redis_url(servers: Stack) -> str:
    """A database of the session's own Valkey for tests of Redis bookkeeping (flushed)."""
    import redis

    url = servers.env["KILN_REDIS_URL"].rsplit("/", 1)[0] + "/15"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="session")
def stack(servers: Stack, tiny_models_dir: Path) -> Stack:
    """The real stack on free ports: Valkey, an S3 server, a tiny-sd worker, the API."""
    s = servers
    if not s.api_url:
        s.models_dir = tiny_models_dir
        s.env["KILN_MODELS_DIR"] = str(tiny_models_dir)
        s.worker_metrics_port = free_port()
        s.start_worker("tiny-sd", args=("--metrics-port", str(s.worker_metrics_port)))
        s.start_api()
    return s


@pytest.fixture(scope="session")
def api(stack: Stack) -> KilnHTTP:
    return KilnHTTP(stack.api_url)


def pytest_collection_finish(session: pytest.Session) -> None:
    """What the process holds once the tests are collected (torch and the rest, all of
    it kept to the end) leaves the collector's sweeps, which walk it again and again."""
    import gc

    gc.freeze()
