"""``kiln`` for people, as a real subprocess against the session stack: Ctrl-C, --detach,
--out checks, the API's models, the new options and one-line errors."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
from pathlib import Path

import pytest

from harness.http import KilnHTTP
from harness.stack import BIN, Stack, free_port

KILN = str(BIN / "kiln")


def started(
    stack: Stack, *args: str, env: dict[str, str] | None = None, stdin: str = "devnull"
) -> subprocess.Popen:
    """``kiln generate`` as CI runs it: no terminal; stdin at /dev/null, or closed."""
    proc = subprocess.Popen(
        [KILN, "generate", "a red fox", "--model", "tiny-sd", "--url", stack.api_url, *args],
        env={**stack.env, **(env or {})},
        stdin=subprocess.DEVNULL if stdin == "devnull" else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if proc.stdin is not None:
        proc.stdin.close()  # the end of input, at once
        proc.stdin = None
    return proc


def job_id_of(proc: subprocess.Popen) -> str:
    """The full job id from the ``job <id>`` line the CLI prints once it has submitted."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("job "):
            return line.split()[1]
    raise AssertionError(f"no job line; exit {proc.wait()}: {proc.stdout and proc.stdout.read()}")


# A job long enough on the tiny model to be interrupted while it runs.
LONG = ("--width", "128", "--height", "128", "--steps", "150")
# A job left running by Ctrl-C runs to its end: long enough (a second or more) that the
# interrupt comes while the command still waits, no longer.
LEFT = "20"


@pytest.mark.parametrize(
    ("ci", "stdin"), [("true", "devnull"), ("", "closed")], ids=["CI", "stdin-closed"]
)
def test_sigint_cancels_the_job_without_asking(
    stack: Stack, api: KilnHTTP, ci: str, stdin: str
) -> None:
    proc = started(stack, *LONG, env={"CI": ci}, stdin=stdin)
    job_id = job_id_of(proc)
    assert len(job_id) == 32  # the whole id, not a shortened one
    api.wait_for_status(job_id, "running")
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Cancel job" not in err  # no question without a terminal
    assert f"job {job_id} cancel" in err and "Traceback" not in err
    assert api.wait(job_id)["status"] == "canceled"


def test_sigint_with_detach_leaves_the_job_running(stack: Stack, api: KilnHTTP) -> None:
    proc = started(stack, "--detach", "--steps", LEFT, env={"CI": "true"})
    job_id = job_id_of(proc)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert f"job {job_id} left running" in err and f"kiln jobs show {job_id}" in err
    assert api.wait(job_id)["status"] == "succeeded"


def test_sigint_at_a_terminal_asks_once(stack: Stack, api: KilnHTTP) -> None:
    """At a terminal (stdin a tty, CI unset), Ctrl-C asks; "n" leaves the job running."""
    master, terminal = pty.openpty()
    proc = subprocess.Popen(
        [KILN, "generate", "a red fox", "--steps", LEFT, "--url", stack.api_url],
        env={**stack.env, "CI": ""},
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(terminal)
    try:
        job_id = job_id_of(proc)
        proc.send_signal(signal.SIGINT)
        assert proc.stderr is not None
        asked = ""
        while "[Y/n]" not in asked:
            char = proc.stderr.read(1)
            assert char, f"no question before the end: {asked!r}"
            asked += char
        assert f"Cancel job {job_id}?" in asked
        os.write(master, b"n\n")
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        os.close(master)
    assert proc.returncode == 0 and f"job {job_id} left running" in err, err
    assert api.wait(job_id)["status"] == "succeeded"


@pytest.mark.parametrize("kind", ["proc", "file"])
def test_out_must_be_a_writable_folder_before_anything_is_sent(
    stack: Stack, tmp_path: Path, kind: str
) -> None:
    out = Path("/proc/nope") if kind == "proc" else tmp_path / "a-file"
    if kind == "file":
        out.write_text("x")
    # An API that is not there: had the command submitted first, it would say so.
    dead = f"http://127.0.0.1:{free_port()}"
    res = stack.run_kiln("generate", "a red fox", "--out", str(out), "--url", dead)
    assert res.returncode != 0
    assert res.stderr.count("\n") == 1  # one line
    assert f"--out {out} is not a writable folder" in res.stderr
    assert "Traceback" not in res.stderr and "cannot reach" not in res.stderr


def test_options_and_json(stack: Stack, tmp_path: Path) -> None:
    res = stack.run_kiln(
        *("generate", "a red fox", "--model", "tiny-sd", "--seed", "3", "--steps", "3"),
        *("--scheduler", "euler", "--guidance", "5.5", "--lora", "style:0.5", "--json"),
        *("--out", str(tmp_path / "new" / "folder"), "--url", stack.api_url),
    )
    assert res.returncode == 0, res.stderr
    job = json.loads(res.stdout)
    assert job["status"] == "succeeded"
    p = job["params"]
    assert (p["scheduler"], p["guidance_scale"]) == ("euler", 5.5)
    assert p["loras"] == [{"name": "style", "weight": 0.5}]
    assert [Path(f).name for f in job["files"]] == [f"{job['id']}-3.png"]
    assert Path(job["files"][0]).is_file()


def test_bad_option_values_are_one_line_errors(stack: Stack) -> None:
    bad_lora = stack.run_kiln("generate", "x", "--lora", "style:lots", "--url", stack.api_url)
    assert bad_lora.returncode == 1 and bad_lora.stderr.count("\n") == 1
    assert "--lora 'style:lots'" in bad_lora.stderr
    unknown = stack.run_kiln("generate", "x", "--scheduler", "nope", "--url", stack.api_url)
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    assert unknown.stderr.count("\n") == 1 and "scheduler" in unknown.stderr


def test_models_list_asks_the_api_at_kiln_url(stack: Stack) -> None:
    res = stack.run_kiln("models", "list", env={"KILN_URL": stack.api_url})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[0] == "tiny-sd"
    as_json = stack.run_kiln("models", "list", "--json", env={"KILN_URL": stack.api_url})
    assert [m["id"] for m in json.loads(as_json.stdout)][:1] == ["tiny-sd"]
    dead = f"http://127.0.0.1:{free_port()}"
    down = stack.run_kiln("models", "list", env={"KILN_URL": dead})
    assert down.returncode == 1 and down.stderr.count("\n") == 1
    assert f"cannot reach Kiln at {dead}" in down.stderr


def test_version(stack: Stack) -> None:
    res = stack.run_kiln("--version")
    assert res.returncode == 0 and res.stdout.startswith("kiln ")
    assert res.stdout.split()[1][0].isdigit()


def test_jobs_show_takes_a_prefix(stack: Stack, api: KilnHTTP) -> None:
    job = api.run(prompt="a red fox", model="tiny-sd", steps=2)
    show = stack.run_kiln("jobs", "show", job["id"][:10], "--url", stack.api_url)
    assert show.returncode == 0, show.stderr
    assert json.loads(show.stdout)["id"] == job["id"]
    missing = stack.run_kiln("jobs", "show", "zzzzzz", "--url", stack.api_url)
    assert missing.returncode == 1 and "404" in missing.stderr
    assert missing.stderr.count("\n") == 1
    odd = stack.run_kiln("jobs", "show", "../models", "--url", stack.api_url)
    assert odd.returncode == 1 and "is not a job id" in odd.stderr


def test_generate_from_an_image_file_with_strength_then_from_that_job(
    stack: Stack, tmp_path: Path
) -> None:
    import hashlib

    from PIL import Image

    source = tmp_path / "start.png"
    Image.radial_gradient("L").resize((80, 72)).convert("RGB").save(source)
    common = ("--model", "tiny-sd", "--steps", "3", "--json", "--url", stack.api_url)
    common += ("--out", str(tmp_path / "out"))
    res = stack.run_kiln(
        *("generate", "a red fox at night", "--image", str(source), "--strength", "0.6"),
        *("--seed", "4", *common),
    )
    assert res.returncode == 0, res.stderr
    job = json.loads(res.stdout)
    p = job["params"]
    assert job["status"] == "succeeded" and (p["mode"], p["strength"]) == ("img2img", 0.6)
    assert p["image"]["source"] == "data_url"
    assert p["image"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert Image.open(job["files"][0]).size == (80, 72)  # the image's size

    # The start of a finished job's id chains from its output, with no upload.
    again = stack.run_kiln("generate", "sharper", "--image", job["id"][:12], *common)
    assert again.returncode == 0, again.stderr
    image = json.loads(again.stdout)["params"]["image"]
    assert (image["source"], image["job"]) == ("job", job["id"])
    assert image["key"] == job["images"][0]["key"]

    missing = stack.run_kiln("generate", "x", "--image", str(tmp_path / "nope.png"), *common)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert "no such file, http(s) URL or job" in missing.stderr
    too_much = stack.run_kiln("generate", "x", "--image", str(source), "--strength", "2", *common)
    assert too_much.returncode == 1 and "strength" in too_much.stderr
    assert too_much.stderr.count("\n") == 1 and "Traceback" not in too_much.stderr
