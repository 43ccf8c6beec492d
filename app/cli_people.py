"""The ``kiln`` commands for people: ``generate``, ``jobs list|show|cancel`` and
``models list``, which talk to the API over HTTP (``--url`` or ``KILN_URL``, and
``--api-key`` or ``KILN_API_KEY``)."""

from __future__ import annotations

import json
import signal
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from app.cli_inputs import image_options, resolve_images
from config.settings import get_settings


def api_url(url: str | None) -> str:
    if url:
        return url
    s = get_settings()
    return f"http://{s.api_host}:{s.api_port}"


def api_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "--api-key", default=None, envvar="KILN_API_KEY", help="API key (or KILN_API_KEY)."
    )(fn)
    return click.option("--url", default=None, envvar="KILN_URL", help="API base URL.")(fn)


def client(url: str | None, api_key: str | None) -> Any:
    from app.client import Kiln

    return Kiln(api_url(url), api_key=api_key)


def fail(exc: Exception) -> click.ClickException:
    """One line for an error answer (with the fields it names)."""
    fields = getattr(exc, "fields", None)
    return click.ClickException(f"{exc}{' ' + json.dumps(fields) if fields else ''}")


def lora(value: str) -> dict[str, Any]:
    name, _, scale = value.partition(":")
    if not name:
        raise click.ClickException(f"--lora {value!r}: expected name[:scale]")
    try:
        return {"name": name, "weight": float(scale) if scale else 1.0}
    except ValueError:
        raise click.ClickException(
            f"--lora {value!r}: the scale must be a number, as in {name}:0.8"
        ) from None


def writable_folder(out: Path) -> None:
    """``out`` is (or can be made) a folder this process can write to, or a clear error."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise click.ClickException(f"--out {out} is not a writable folder ({reason})") from None


def on_interrupt(kiln: Any, job_id: str, *, detach: bool, ask: bool) -> None:
    """Ctrl-C while waiting: leave the job (``--detach``, or a "no" to the one question)
    or cancel it. The question is asked only when ``ask``: never without a terminal."""
    cancel = not detach
    if cancel and ask:
        try:
            cancel = click.confirm(f"\nCancel job {job_id}?", default=True, err=True)
        except click.Abort:  # a second Ctrl-C, or the end of input: cancel
            cancel = True
    if not cancel:
        click.echo(f"\njob {job_id} left running; see it with: kiln jobs show {job_id}", err=True)
        sys.exit(0)
    from app.client import KilnError

    try:
        out = kiln.cancel(job_id)
        click.echo(f"\njob {job_id} {out.get('status', 'canceled')}", err=True)
    except KilnError as exc:
        click.echo(f"\njob {job_id} not canceled: {exc}", err=True)
    sys.exit(130)


@click.command()
@click.argument("prompt")
@click.option("--model", "-m", default=None, help="Model name (see `kiln models list`).")
@click.option("-n", "n", type=int, default=None, help="Number of images.")
@click.option("--seed", type=int, default=None, help="Seed of image 0 (image i: seed + i).")
@click.option("--width", type=int, default=None)
@click.option("--height", type=int, default=None)
@click.option("--steps", type=int, default=None)
@click.option("--guidance", type=float, default=None, help="Guidance scale.")
@click.option("--scheduler", default=None, help="Scheduler (see `kiln models list`).")
@click.option("--lora", "loras", multiple=True, metavar="NAME[:SCALE]", help="A LoRA; repeatable.")
@click.option("--negative-prompt", default=None)
@image_options
@click.option(
    "--output-format",
    type=click.Choice(["png", "jpeg", "webp"]),
    default=None,
    help="Image format (default png).",
)
@click.option(
    "--output-compression",
    type=click.IntRange(0, 100),
    default=None,
    help="jpeg/webp: 100 (default) keeps most detail, lower is smaller.",
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("."), help="Folder for the images."
)
@click.option("--detach", is_flag=True, help="On Ctrl-C, leave the job running.")
@click.option("--no-input", is_flag=True, help="Never ask; Ctrl-C cancels (on when CI is set).")
@click.option("--ci", envvar="CI", default="", hidden=True)
@click.option("--json", "as_json", is_flag=True, help="Print the job record as JSON.")
@api_options
def generate(
    prompt: str,
    out: Path,
    loras: tuple[str, ...],
    guidance: float | None,
    detach: bool,
    no_input: bool,
    ci: str,
    as_json: bool,
    url: str | None,
    api_key: str | None,
    **given: Any,
) -> None:
    """Generate images for PROMPT, with a progress bar, and write them to --out.

    Ctrl-C cancels the job (asking first at a terminal); with --detach it leaves the
    job running and prints its id.
    """
    from tqdm import tqdm

    from app.client import KilnError

    # Started in the background by a shell, a process may inherit an ignored SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    writable_folder(out)
    params: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if guidance is not None:
        params["guidance_scale"] = guidance
    if loras:
        params["loras"] = [lora(v) for v in loras]
    kiln = client(url, api_key)
    resolve_images(kiln, params)
    try:
        job = kiln.submit(prompt, **params)
    except KilnError as exc:
        raise fail(exc) from None
    job_id = job["id"]
    no_input = no_input or ci.strip().lower() not in {"", "0", "false", "no"}
    ask = not no_input and sys.stdin is not None and sys.stdin.isatty()
    bar = tqdm(total=job["params"]["steps"], desc="steps", unit="step", file=sys.stderr)

    def on_progress(step: int, steps: int) -> None:
        bar.total = steps
        bar.update(step - bar.n)

    try:
        bar.write(f"job {job_id}", file=sys.stderr)  # inside: a Ctrl-C from here on is handled
        done = kiln.wait(job_id, on_progress=on_progress)
    except KeyboardInterrupt:
        bar.close()
        on_interrupt(kiln, job_id, detach=detach, ask=ask)
        return
    bar.close()
    if done["status"] != "succeeded":
        raise click.ClickException(f"job {job_id} {done['status']}: {done.get('error')}")
    files = []
    for image in done["images"]:
        ext = image.get("format") or image["key"].rsplit(".", 1)[-1]
        path = out / f"{job_id}-{image['seed']}.{ext}"
        path.write_bytes(kiln.download(image))
        files.append(str(path))
        if not as_json:
            click.echo(f"{path}  seed {image['seed']}")
    if as_json:
        click.echo(json.dumps({**done, "files": files}, indent=2))


@click.group()
def jobs() -> None:
    """List, show or cancel your jobs (ids may be shortened to a unique start)."""


STATUSES = ["queued", "running", "succeeded", "failed", "canceled"]


def when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


@jobs.command("list")
@click.option("--status", type=click.Choice(STATUSES), default=None)
@click.option("--model", "-m", default=None)
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--after", default=None, help="List the jobs older than this job id.")
@click.option("--json", "as_json", is_flag=True, help="Print the page as JSON.")
@api_options
def jobs_list(
    status: str | None,
    model: str | None,
    limit: int,
    after: str | None,
    as_json: bool,
    url: str | None,
    api_key: str | None,
) -> None:
    """Your jobs, newest first."""
    from app.client import KilnError

    try:
        page = client(url, api_key).jobs(status=status, model=model, limit=limit, after=after)
    except KilnError as exc:
        raise fail(exc) from None
    if as_json:
        click.echo(json.dumps(page, indent=2))
        return
    for j in page["data"]:
        prompt = str((j.get("params") or {}).get("prompt") or "")
        prompt = prompt if len(prompt) <= 40 else prompt[:39] + "…"
        click.echo(
            f"{j['id']}  {j['status']:<9}  {j['model']:<12}  {when(j.get('created_at'))}  "
            f"{len(j.get('seeds') or [])}  {prompt}"
        )
    if page.get("has_more"):
        click.echo(f"more: kiln jobs list --after {page['next_after']}", err=True)


@jobs.command("show")
@click.argument("job_id")
@api_options
def jobs_show(job_id: str, url: str | None, api_key: str | None) -> None:
    """Print a job's record as JSON."""
    from app.client import KilnError

    kiln = client(url, api_key)
    try:
        click.echo(json.dumps(kiln.job(kiln.resolve(job_id)), indent=2))
    except (KilnError, ValueError) as exc:
        raise fail(exc) from None


@jobs.command("cancel")
@click.argument("job_id")
@api_options
def jobs_cancel(job_id: str, url: str | None, api_key: str | None) -> None:
    """Cancel a queued or running job."""
    from app.client import KilnError

    kiln = client(url, api_key)
    try:
        click.echo(json.dumps(kiln.cancel(kiln.resolve(job_id))))
    except (KilnError, ValueError) as exc:
        raise fail(exc) from None


@click.command("list")
@click.option(
    "--local",
    is_flag=True,
    help="Read models.yaml and the added models here instead of the API: source, family, "
    "dtype and bytes on disk.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@api_options
def models_list(local: bool, as_json: bool, url: str | None, api_key: str | None) -> None:
    """The models the API serves (or, with --local, the ones this machine's files name)."""
    from app.client import KilnError

    if local:
        from app.cli_models import echo_local

        echo_local(get_settings(), as_json=as_json)
        return
    try:
        data = client(url, api_key).models()
    except KilnError as exc:
        raise fail(exc) from None
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for m in data:
        d = m.get("defaults") or {}
        tag = " (stand-in)" if m.get("stand_in") else ""
        size = f"{d.get('width')}×{d.get('height')}"
        click.echo(
            f"{m['id']:<16} {m.get('family', ''):<13} {size:<10} {d.get('steps')} steps, "
            f"{d.get('scheduler')}{tag}"
        )
