"""The test stacks' launcher (``harness/launcher.py``): what it starts is the program a
plain exec would start, with its argv, environment, directory, log, session, exit code
and signals."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from harness import launcher
from harness.stack import BIN, ROOT, free_port, process_env


def launched(argv: list[str], log: Path, **env: str) -> launcher.LaunchedProcess:
    proc = launcher.launch(argv, env={**process_env(), **env}, cwd=ROOT, log=log)
    assert proc is not None, "Kiln's programs, in the stacks' environment, are launched"
    return proc


def test_a_launched_command_has_its_argv_environment_log_and_exit_code(tmp_path: Path) -> None:
    log = tmp_path / "config.log"
    proc = launched([str(BIN / "kiln"), "config", "s3_bucket"], log, KILN_S3_BUCKET="asked-for")
    assert proc.wait(60) == 0
    assert log.read_text() == "asked-for\n"

    log = tmp_path / "unknown.log"
    proc = launched([str(BIN / "kiln"), "config", "no_such_setting"], log)
    assert proc.wait(60) == 1
    assert "unknown setting 'no_such_setting'" in log.read_text()


def test_a_launched_process_leads_its_own_session_and_dies_by_its_signal(tmp_path: Path) -> None:
    nothing = f"redis://127.0.0.1:{free_port()}/0"  # a broker that never answers
    log = tmp_path / "celery.log"
    proc = launched(
        [str(BIN / "celery"), "-A", "tasks", "worker", "--pool=solo", "--without-mingle"],
        log,
        KILN_BROKER_URL=nothing,
        KILN_REDIS_URL=nothing,
    )
    assert os.getsid(proc.pid) == proc.pid  # killpg reaches it and all it starts
    deadline = time.monotonic() + 60
    while "Cannot connect" not in log.read_text(errors="replace"):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL
    assert proc.poll() == proc.returncode == -signal.SIGKILL


def test_another_environment_or_program_is_left_to_a_plain_exec(tmp_path: Path) -> None:
    launched([str(BIN / "kiln"), "config", "profile"], tmp_path / "log").wait(60)
    other = {**process_env(), "HF_HOME": str(tmp_path)}  # read by libraries at import
    kiln = [str(BIN / "kiln"), "config"]
    assert launcher.launch(kiln, env=other, cwd=ROOT, log=tmp_path / "log") is None
    assert launcher.launch(["/bin/true"], env=process_env(), cwd=ROOT, log=tmp_path / "log") is None


OWNER = """
import json, sys, threading
from pathlib import Path
from harness.stack import Stack

stack = Stack(Path(sys.argv[1]))
try:
    stack.start_servers()
    print(json.dumps([p.popen.pid for p in stack.procs]), flush=True)
    threading.Event().wait(120)
finally:
    stack.close()
"""


def test_a_stack_whose_owner_is_ended_by_sigterm_ends_every_process_it_started(
    tmp_path: Path,
) -> None:
    """As ``timeout`` ends a benchmark: the stack's servers go with it, not on for good."""
    import json
    import subprocess
    import sys

    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path / "stack")],
        cwd=ROOT,
        env=process_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        pids = json.loads(owner.stdout.readline())
        assert len(pids) == 2  # Valkey and the S3 server
        owner.send_signal(signal.SIGTERM)
        assert owner.wait(60) == 128 + signal.SIGTERM
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            raise AssertionError(f"process {pid} outlived the stack's owner")
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(10)
