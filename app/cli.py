"""The ``kiln`` command: workers, models, config, the dev fleet, and (later) clients."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from config.settings import SettingsError, get_settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Kiln: a self-hosted image-generation fleet."""


@main.command("config")
@click.argument("key", required=False)
def config_cmd(key: str | None) -> None:
    """Print the effective settings (secrets redacted), or one KEY's value."""
    try:
        values = get_settings().redacted()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    if key is None:
        click.echo(json.dumps(values, indent=2, default=str))
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
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(model: str, gpu: int | None, concurrency: int | None, loglevel: str,
           celery_args: tuple[str, ...]) -> None:
    """Serve one model on one GPU: load, warm, then consume gen.<model>."""
    from config.logging import setup_logging
    from pipelines.registry import Registry, UnknownModel
    from tasks.worker import run_worker

    settings = get_settings()
    setup_logging(settings)
    try:
        Registry.from_file(settings.models_file)[model]
    except UnknownModel:
        raise click.ClickException(f"unknown model {model!r}; see `kiln models list`") from None
    run_worker(model, gpu=gpu, concurrency=concurrency, loglevel=loglevel, extra_args=celery_args)


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


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower(flower_args: tuple[str, ...]) -> None:
    """Start Flower on the configured address, with basic auth when set."""
    from app.devfleet import flower_argv, run_flower

    run_flower(flower_argv(get_settings(), flower_args))


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
