"""The ``kiln`` command: workers, models, config, keys, the dev fleet, and a client
(``generate``, ``jobs``) that talks to the API over HTTP."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from app.cli_models import models_add, models_remove
from app.cli_people import generate, jobs, models_list
from config.settings import SettingsError, get_settings


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kiln")
    except PackageNotFoundError:
        return "unknown (not installed)"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    _version(), "--version", "-V", prog_name="kiln", message="%(prog)s %(version)s"
)
def main() -> None:
    """Kiln: a self-hosted image-generation fleet."""


@main.command("config")
@click.argument("key", required=False)
@click.option(
    "--env",
    "as_env",
    is_flag=True,
    help="As KILN_NAME=value lines (an env file), only what differs from the defaults.",
)
@click.option(
    "--secrets",
    is_flag=True,
    help="With --env: secrets as they are, for another host of this fleet (keep it secret).",
)
def config_cmd(key: str | None, as_env: bool, secrets: bool) -> None:
    """Print the effective settings (secrets redacted) and warn on what they leave open,
    or print one KEY's value."""
    from app.exposure import open_doors
    from config.production import SERVING_WITHOUT_CHECK, dev_default_problems
    from config.settings import env_lines

    try:
        settings = get_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    values = settings.redacted()
    if secrets and not as_env:
        raise click.UsageError("--secrets goes with --env")
    if key is None:
        if as_env:
            click.echo("\n".join(env_lines(settings, secrets=secrets)))
        else:
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
@click.option("--model", "-m", default=None, help="Model name from models.yaml.")
@click.option(
    "--models", "models_", default=None, help="Several models, comma separated: one device."
)
@click.option(
    "--max-resident", type=click.IntRange(min=1), default=None, help="Models held at once."
)
@click.option("--gpu", type=int, default=None, help="GPU index; sets CUDA_VISIBLE_DEVICES.")
@click.option("--concurrency", "-c", type=int, default=None, help="Task threads (2 batches).")
@click.option("--loglevel", "-l", default="INFO")
@click.option("--metrics-port", type=int, default=0, help="Serve Prometheus /metrics here.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(
    model: str | None,
    models_: str | None,
    max_resident: int | None,
    gpu: int | None,
    concurrency: int | None,
    loglevel: str,
    metrics_port: int,
    celery_args: tuple[str, ...],
) -> None:
    """Serve one model on one GPU (load, warm, then consume gen.<model>), or several
    (--models a,b,c): those that fit stay resident, the rest load on demand."""
    from config.logging import setup_logging
    from config.production import refuse_dev_defaults
    from config.tls import check_tls
    from pipelines.registry import Registry, UnknownModel
    from tasks.worker.main import run_worker

    settings = get_settings()
    try:
        refuse_dev_defaults(settings)
        check_tls(settings)  # a wrong CA or client certificate: one line, now
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    setup_logging(settings)
    names = [m.strip() for m in (models_ or "").split(",") if m.strip()]
    if bool(model) == bool(names):
        raise click.UsageError("give --model M or --models a,b,c (one of them)")
    registry = Registry.from_settings(settings)
    for name in names or [str(model)]:
        try:
            registry[name]
        except UnknownModel:
            raise click.ClickException(f"unknown model {name!r}; see `kiln models list`") from None
    if max_resident is not None and not names:
        raise click.UsageError("--max-resident goes with --models")
    run_worker(
        names[0] if names else str(model),
        models=tuple(names),
        max_resident=max_resident,
        gpu=gpu,
        concurrency=concurrency,
        loglevel=loglevel,
        metrics_port=metrics_port,
        extra_args=celery_args,
    )


@main.command()
@click.option("--model", "-m", "models_", multiple=True, help="Models this host serves (all).")
def doctor(models_: tuple[str, ...]) -> None:
    """What this machine has (torch, CUDA, driver, devices) and whether each model can be
    served here; exits 1 when one of them cannot."""
    from pipelines.doctor import check, host, report
    from pipelines.registry import Registry, UnknownModel

    settings = get_settings()
    registry = Registry.from_settings(settings)
    try:
        chosen = [registry[m] for m in models_] or [registry[m] for m in registry]
    except UnknownModel as exc:
        raise click.ClickException(f"unknown model {exc}; see `kiln models list`") from None
    facts = host()
    verdicts = [
        check(
            m,
            facts,
            device=settings.device,
            profile=settings.profile,
            models_dir=settings.models_dir,
        )
        for m in chosen
        if m.spec.enabled
    ]
    for line in report(facts, verdicts):
        click.echo(line)
    bad = [v.model for v in verdicts if not v.ok]
    if bad:
        click.echo(f"cannot serve here: {', '.join(bad)}", err=True)
        sys.exit(1)


@main.group()
def models() -> None:
    """List, add and remove models; build the tiny offline stand-ins."""


@models.command("make-tiny")
@click.argument("directory", required=False, type=click.Path(path_type=Path))
@click.option(
    "--single-file",
    is_flag=True,
    help="Also write the sd15, sdxl and flux stand-ins as one original-layout "
    ".safetensors file each, in DIRECTORY/checkpoints.",
)
def make_tiny(directory: Path | None, single_file: bool) -> None:
    """Write tiny random-weight SD, SDXL and Flux pipelines (and LoRAs) to DIRECTORY."""
    from pipelines.tiny import CHECKPOINTS, make_all, make_checkpoint

    out = directory or get_settings().models_dir
    for name, path in make_all(out).items():
        click.echo(f"{name:<10} {path}")
    for recipe in CHECKPOINTS if single_file else ():
        click.echo(
            f"{'file:' + recipe:<10} {make_checkpoint(recipe, out)}  (config: {out / recipe})"
        )


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
    names = list(models_) or list(Registry.from_settings(settings))
    fleet = None if s_per_image else Fleet(JobStore.for_settings(settings).redis)
    click.echo(
        f"{'model':<16}{'s/image':>10}{'images/h/GPU':>14}{'images/h':>12}{'$/1k images':>13}"
        "  measured on"
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
        on = "--s-per-image" if s_per_image else (fleet.measured_on(name) if fleet else None)
        click.echo(
            f"{name:<16}{spi:>10.3f}{per_gpu:>14.0f}{per_gpu * gpus:>12.0f}"
            f"{usd_per_gpu_hour * spi / 3600 * 1000:>13.3f}  {on or 'unknown device'}"
        )
        if on and on.startswith("cpu"):
            click.echo(f"{'':<16}  (CPU timings: a GPU's will differ; pass --s-per-image)")


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


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower(flower_args: tuple[str, ...]) -> None:
    """Start Flower on the configured address, with basic auth when set."""
    from app.devfleet import flower_argv, run_flower
    from config.logging import setup_logging
    from config.production import refuse_dev_defaults
    from config.tls import check_tls

    settings = get_settings()
    try:
        refuse_dev_defaults(settings)
        check_tls(settings)  # a wrong CA or client certificate: one line, now
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


main.add_command(generate)
main.add_command(jobs)
models.add_command(models_list)
models.add_command(models_add)
models.add_command(models_remove)


def run() -> None:
    """The console script: ``main``, with every error reported in one line."""
    import requests

    from app.client import KilnError

    try:
        main()
    except requests.ConnectionError as exc:
        url = getattr(exc.request, "url", "") if exc.request is not None else ""
        click.echo(
            f"Error: cannot reach Kiln at {url or 'the configured URL'} (set --url or KILN_URL)",
            err=True,
        )
        sys.exit(1)
    except requests.RequestException as exc:
        click.echo(f"Error: the request to Kiln failed ({type(exc).__name__})", err=True)
        sys.exit(1)
    except (KilnError, TimeoutError, OSError, SettingsError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    run()
