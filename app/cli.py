"""The ``kiln`` command: workers, models, config, keys, the dev fleet, and a client
(``generate``, ``jobs``) that talks to the API over HTTP."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from config.settings import SettingsError, get_settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Kiln: a self-hosted image-generation fleet."""


@main.command("config")
@click.argument("key", required=False)
def config_cmd(key: str | None) -> None:
    """Print the effective settings (secrets redacted) and warn on what they leave open,
    or print one KEY's value."""
    from app.exposure import open_doors
    from config.production import SERVING_WITHOUT_CHECK, dev_default_problems

    try:
        settings = get_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    values = settings.redacted()
    if key is None:
        click.echo(json.dumps(values, indent=2, default=str))
        for line in open_doors(settings):  # what this configuration leaves open
            click.echo(f"warning: {line}", err=True)
        if settings.profile not in SERVING_WITHOUT_CHECK:
            for line in dev_default_problems(settings):
                click.echo(f"warning: the {settings.profile} profile refuses {line}", err=True)
        return
    key = key.lower().removeprefix("kiln_")
    if key not in values:
        raise click.ClickException(f"unknown setting {key!r}; known: {', '.join(values)}")
    click.echo(values[key])


@main.command()
@click.option("--model", "-m", required=True, help="Model name from models.yaml.")
@click.option("--gpu", type=int, default=None, help="GPU index; sets CUDA_VISIBLE_DEVICES.")
@click.option("--concurrency", "-c", type=int, default=None, help="Task threads (2 batches).")
@click.option("--loglevel", "-l", default="INFO")
@click.option("--metrics-port", type=int, default=0, help="Serve Prometheus /metrics here.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(
    model: str,
    gpu: int | None,
    concurrency: int | None,
    loglevel: str,
    metrics_port: int,
    celery_args: tuple[str, ...],
) -> None:
    """Serve one model on one GPU: load, warm, then consume gen.<model>."""
    from config.logging import setup_logging
    from config.production import refuse_dev_defaults
    from pipelines.registry import Registry, UnknownModel
    from tasks.worker.main import run_worker

    settings = get_settings()
    try:
        refuse_dev_defaults(settings)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    setup_logging(settings)
    try:
        Registry.from_file(settings.models_file)[model]
    except UnknownModel:
        raise click.ClickException(f"unknown model {model!r}; see `kiln models list`") from None
    run_worker(
        model,
        gpu=gpu,
        concurrency=concurrency,
        loglevel=loglevel,
        metrics_port=metrics_port,
        extra_args=celery_args,
    )


@main.group()
def models() -> None:
    """List models; build the tiny offline stand-ins."""


@models.command("list")
def models_list() -> None:
    """The models this fleet serves."""
    from pipelines.registry import Registry

    for m in Registry.from_file(get_settings().models_file).values():
        tag = " (stand-in)" if m.spec.stand_in else ""
        click.echo(f"{m.name:<16} {m.family.name:<13} {m.spec.source or m.spec.tiny}{tag}")


@models.command("make-tiny")
@click.argument("directory", required=False, type=click.Path(path_type=Path))
def make_tiny(directory: Path | None) -> None:
    """Write tiny random-weight SD, SDXL and Flux pipelines (and LoRAs) to DIRECTORY."""
    from pipelines.tiny import make_all

    out = directory or get_settings().models_dir
    for name, path in make_all(out).items():
        click.echo(f"{name:<10} {path}")


@main.command()
@click.option("--model", "-m", "models_", multiple=True, help="Models (default: all).")
@click.option(
    "--s-per-image",
    type=float,
    default=None,
    help="Seconds per image; default: what the workers measured (job store).",
)
@click.option("--usd-per-gpu-hour", type=float, default=2.5, show_default=True)
@click.option("--gpus", type=int, default=1, show_default=True, help="GPUs per model.")
def capacity(
    models_: tuple[str, ...], s_per_image: float | None, usd_per_gpu_hour: float, gpus: int
) -> None:
    """Estimate images/hour and cost per image from seconds per image."""
    from pipelines.registry import Registry
    from tasks.jobs.fleet import Fleet
    from tasks.jobs.store import JobStore

    settings = get_settings()
    names = list(models_) or list(Registry.from_file(settings.models_file))
    fleet = None if s_per_image else Fleet(JobStore(settings.redis_url).redis)
    click.echo(
        f"{'model':<16}{'s/image':>10}{'images/h/GPU':>14}{'images/h':>12}{'$/1k images':>13}"
    )
    for name in names:
        spi = s_per_image
        if spi is None and fleet is not None:
            try:
                spi = fleet.s_per_image(name)
            except Exception as exc:
                raise click.ClickException(
                    f"job store unreachable ({type(exc).__name__}); pass --s-per-image"
                ) from None
        if not spi:
            click.echo(f"{name:<16}{'no data':>10}  (run some jobs, or pass --s-per-image)")
            continue
        per_gpu = 3600 / spi
        click.echo(
            f"{name:<16}{spi:>10.3f}{per_gpu:>14.0f}{per_gpu * gpus:>12.0f}"
            f"{usd_per_gpu_hour * spi / 3600 * 1000:>13.3f}"
        )


@main.group()
def keys() -> None:
    """Make API keys (only their hashes go in the config)."""


@keys.command("create")
@click.argument("name")
@click.option(
    "--scopes",
    default="generate,read",
    show_default=True,
    help="Comma-separated: generate, read, admin.",
)
def keys_create(name: str, scopes: str) -> None:
    """Print a new random key for NAME once, and the KILN_API_KEYS entry for it."""
    from app.auth import SCOPES, hash_key, new_key, valid_key_name

    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SCOPES))
    if unknown or not wanted or not valid_key_name(name):
        raise click.ClickException(f"bad name or scopes {unknown or wanted}; scopes: {SCOPES}")
    key = new_key()
    click.echo(f"API key for {name} (shown once; give it to the client):\n  {key}\n")
    click.echo("Add this entry to KILN_API_KEYS (comma-separated with others):")
    click.echo(f"  {name}:{hash_key(key)}:{'+'.join(wanted)}")


def _api_url(url: str | None) -> str:
    if url:
        return url
    s = get_settings()
    return f"http://{s.api_host}:{s.api_port}"


@main.command()
@click.argument("prompt")
@click.option("--model", "-m", default=None, help="Model name (see GET /v1/models).")
@click.option("-n", "n", type=int, default=1, help="Number of images.")
@click.option("--seed", type=int, default=None, help="Seed of image 0 (image i: seed + i).")
@click.option("--width", type=int, default=None)
@click.option("--height", type=int, default=None)
@click.option("--steps", type=int, default=None)
@click.option("--negative-prompt", default=None)
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
    "--out",
    "out",
    type=click.Path(path_type=Path),
    default=Path("."),
    help="Folder for the images.",
)
@click.option("--url", default=None, envvar="KILN_URL", help="API base URL.")
@click.option("--api-key", default=None, envvar="KILN_API_KEY")
def generate(
    prompt: str,
    model: str | None,
    n: int,
    seed: int | None,
    width: int | None,
    height: int | None,
    steps: int | None,
    negative_prompt: str | None,
    output_format: str | None,
    output_compression: int | None,
    out: Path,
    url: str | None,
    api_key: str | None,
) -> None:
    """Generate images for PROMPT, with a progress bar, and write them to --out."""
    from tqdm import tqdm

    from app.client import Kiln, KilnError

    kiln = Kiln(_api_url(url), api_key=api_key)
    given = dict(
        model=model,
        n=n,
        seed=seed,
        width=width,
        height=height,
        steps=steps,
        negative_prompt=negative_prompt,
        output_format=output_format,
        output_compression=output_compression,
    )
    params: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    try:
        job = kiln.submit(prompt, **params)
    except KilnError as exc:
        extra = " " + json.dumps(exc.fields) if exc.fields else ""
        raise click.ClickException(f"{exc}{extra}") from None
    bar = tqdm(
        total=job["params"]["steps"], desc=f"job {job['id'][:8]}", unit="step", file=sys.stderr
    )

    def on_progress(step: int, steps: int) -> None:
        bar.total = steps
        bar.update(step - bar.n)

    done = kiln.wait(job["id"], on_progress=on_progress)
    bar.close()
    if done["status"] != "succeeded":
        raise click.ClickException(f"job {done['id']} {done['status']}: {done.get('error')}")
    out.mkdir(parents=True, exist_ok=True)
    for image in done["images"]:
        ext = image.get("format") or image["key"].rsplit(".", 1)[-1]
        path = out / f"{done['id']}-{image['seed']}.{ext}"
        path.write_bytes(kiln.download(image))
        click.echo(f"{path}  seed {image['seed']}")


@main.group()
def jobs() -> None:
    """Show or cancel a job."""


@jobs.command("show")
@click.argument("job_id")
@click.option("--url", default=None, envvar="KILN_URL")
@click.option("--api-key", default=None, envvar="KILN_API_KEY")
def jobs_show(job_id: str, url: str | None, api_key: str | None) -> None:
    """Print a job's record as JSON."""
    from app.client import Kiln, KilnError

    try:
        click.echo(json.dumps(Kiln(_api_url(url), api_key=api_key).job(job_id), indent=2))
    except KilnError as exc:
        raise click.ClickException(str(exc)) from None


@jobs.command("cancel")
@click.argument("job_id")
@click.option("--url", default=None, envvar="KILN_URL")
@click.option("--api-key", default=None, envvar="KILN_API_KEY")
def jobs_cancel(job_id: str, url: str | None, api_key: str | None) -> None:
    """Cancel a queued or running job."""
    from app.client import Kiln, KilnError

    try:
        click.echo(json.dumps(Kiln(_api_url(url), api_key=api_key).cancel(job_id)))
    except KilnError as exc:
        raise click.ClickException(str(exc)) from None


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower(flower_args: tuple[str, ...]) -> None:
    """Start Flower on the configured address, with basic auth when set."""
    from app.devfleet import flower_argv, run_flower
    from config.logging import setup_logging
    from config.production import refuse_dev_defaults

    settings = get_settings()
    try:
        refuse_dev_defaults(settings)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    argv = flower_argv(settings, flower_args)
    setup_logging(settings)  # before tornado's: it adds no handler of its own then
    run_flower(argv, settings)


@main.group()
def dev() -> None:
    """Embedded servers for the dev fleet (`make run` starts them all)."""


@dev.command()
def valkey() -> None:
    """A Redis-protocol server (Valkey) on the dev broker port, in the foreground."""
    from app.devfleet import exec_valkey

    exec_valkey(get_settings())


@dev.command()
def s3() -> None:
    """An S3 server (rclone serve s3) on the dev S3 port, in the foreground."""
    from app.devfleet import exec_s3

    exec_s3(get_settings())


def run() -> None:
    """The console script: ``main`` with unreachable servers reported in one line."""
    import requests

    try:
        main()
    except requests.ConnectionError as exc:
        url = getattr(exc.request, "url", "") if exc.request is not None else ""
        click.echo(
            f"Error: cannot reach Kiln at {url or 'the configured URL'} (set --url or KILN_URL)",
            err=True,
        )
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    run()
