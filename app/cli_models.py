"""``kiln models add|remove`` and the local listing: models on this machine's disk.

``add`` reads a checkpoint's header (no tensor, no torch), checks or detects its family,
and writes the entry as ``<KILN_MODELS_DROPIN_DIR>/<name>.yaml``, which every registry
reads after ``KILN_MODELS_FILE`` (a running API within a second or so); ``remove``
deletes such a file, never an entry of the packaged models file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from config.errors import CheckpointError, ModelConfigError, UnknownFamily
from config.models import DTYPES, dropin_path, load_models, write_dropin
from config.settings import Settings, get_settings
from pipelines.checkpoints import disk_bytes, weights_path

FAMILY_ALIASES = {"flux": None}  # "flux": schnell or dev, as the file's keys say


def _config_option(config: str | None, family: str) -> str | None:
    """A local ``--config`` folder made absolute and checked to be of the family's
    pipeline; a hub id as given."""
    from pipelines.families import get_family

    if config is None:
        return None
    path = Path(config).expanduser()
    if not path.exists():
        if config.startswith(("/", "./", "../", "~")):
            raise click.ClickException(f"--config {config}: no such folder")
        return config  # a hub id
    index = path / "model_index.json"
    if not index.is_file():
        raise click.ClickException(f"--config {path}: not a diffusers folder (no model_index.json)")
    wanted = get_family(family).pipeline_class
    found = json.loads(index.read_text()).get("_class_name")
    if found != wanted:
        raise click.ClickException(
            f"--config {path}: a {found} folder, but family {family} takes a {wanted} one"
        )
    return str(path.resolve())


def add_model(
    settings: Settings,
    name: str,
    path: Path,
    *,
    family: str | None,
    config: str | None,
    dtype: str,
) -> tuple[Path, dict[str, Any]]:
    """Check the file and write its drop-in entry; returns the file and the entry."""
    from pipelines.checkpoints import check_checkpoint
    from pipelines.registry import Registry

    path = Path(path).expanduser().resolve()
    wanted = None if family in FAMILY_ALIASES else family
    try:
        ckpt = check_checkpoint(path, wanted)
    except CheckpointError as exc:
        raise click.ClickException(str(exc)) from None
    found = ckpt.family or ""
    if family == "flux" and not found.startswith("flux"):
        raise click.ClickException(f"{path}: --family flux, but the file's keys are {found}")
    target = dropin_path(settings.models_dropin_dir, name)
    known = load_models(settings.models_file, dropin_dir=settings.models_dropin_dir)
    if target.exists():
        raise click.ClickException(
            f"model {name!r} was added before ({target}); `kiln models remove {name}` first"
        )
    if name in known:
        raise click.ClickException(
            f"model {name!r} is in {settings.models_file}; pick another name"
        )
    entry: dict[str, Any] = {"name": name, "family": found, "source": str(path)}
    checked = _config_option(config, found)
    if checked:
        entry["config"] = checked
    entry.update(dtype=dtype, description=f"Single-file checkpoint {path.name}")
    try:
        written = write_dropin(settings.models_dropin_dir, entry)
    except ModelConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        Registry.from_settings(settings)  # the whole set still reads
    except (ModelConfigError, UnknownFamily, ValueError) as exc:
        written.unlink(missing_ok=True)
        raise click.ClickException(f"not added: {exc}") from None
    return written, entry


@click.command("add")
@click.argument("name")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--family",
    type=click.Choice(["sd15", "sdxl", "flux", "flux-schnell", "flux-dev"]),
    default=None,
    help="Checked against the file's keys; detected from them when left out.",
)
@click.option(
    "--config",
    default=None,
    help="Diffusers folder or hub id with the component configs and tokenizers "
    "(default: the family's reference repository, from the hub's cache when offline).",
)
@click.option("--dtype", type=click.Choice(DTYPES), default="fp16", show_default=True)
def models_add(name: str, path: Path, family: str | None, config: str | None, dtype: str) -> None:
    """Serve the single-file checkpoint PATH (.safetensors) as model NAME."""
    settings = get_settings()
    written, entry = add_model(settings, name, path, family=family, config=config, dtype=dtype)
    size = Path(entry["source"]).stat().st_size
    click.echo(
        f"added {name} ({entry['family']}, {size / 1e6:.1f} MB) as {written}; "
        f"serve it: kiln worker --model {name}"
    )


@click.command("remove")
@click.argument("name")
def models_remove(name: str) -> None:
    """Remove a model added with `kiln models add` (its drop-in file)."""
    settings = get_settings()
    target = dropin_path(settings.models_dropin_dir, name)
    if target.exists():
        target.unlink()
        click.echo(f"removed {name} ({target})")
        return
    if name in load_models(settings.models_file):
        raise click.ClickException(
            f"model {name!r} is in the packaged models file {settings.models_file}; only "
            "models added with `kiln models add` can be removed (edit that file, or set "
            "enabled: false)"
        )
    raise click.ClickException(f"no model {name!r} was added (none in {target.parent})")


def in_memory(settings: Settings, names: list[str]) -> dict[str, int | None]:
    """Device bytes per model as the workers measured them at load (job store); none
    when the job store cannot be reached."""
    import contextlib

    from tasks.jobs.fleet import Fleet
    from tasks.jobs.store import JobStore

    with contextlib.suppress(Exception):
        fleet = Fleet(JobStore.for_settings(settings).redis)
        return {name: fleet.device_bytes(name) for name in names}
    return {}


def local_rows(settings: Settings) -> list[dict[str, Any]]:
    """Each model of this machine's registry: name, family, dtype, source, bytes on disk
    and (as its workers measured, when the job store answers) in memory."""
    from pipelines.registry import Registry

    dropins = {p.stem for p in settings.models_dropin_dir.glob("*.yaml")}
    rows = []
    registry = Registry.from_settings(settings)
    memory = in_memory(settings, list(registry))
    for m in registry.values():
        s = m.spec
        where = weights_path(s, settings.models_dir)
        if s.tiny:
            source = f"tiny:{s.tiny}"
        elif s.random_init:
            source = f"random_init:{s.random_init}"
        else:
            source = s.source.replace("{models_dir}", str(settings.models_dir))
        size = disk_bytes(where) if where is not None else None
        rows.append(
            {
                "name": m.name,
                "family": m.family.name,
                "dtype": s.dtype,
                "source": source,
                "config": s.config,
                "disk_bytes": size,
                "memory_bytes": memory.get(m.name),
                "added": m.name in dropins,
                "stand_in": s.stand_in,
            }
        )
    return rows


def echo_local(settings: Settings, *, as_json: bool) -> None:
    rows = local_rows(settings)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'model':<16} {'family':<13} {'dtype':<5} {'disk':>10} {'memory':>7}  source")
    for r in rows:
        size = "-" if r["disk_bytes"] is None else f"{r['disk_bytes'] / 1e6:.1f} MB"
        mem = "-" if r["memory_bytes"] is None else f"{r['memory_bytes'] / 1e6:.0f}MB"
        tag = " (added)" if r["added"] else " (stand-in)" if r["stand_in"] else ""
        click.echo(
            f"{r['name']:<16} {r['family']:<13} {r['dtype']:<5} {size:>10} {mem:>7}  "
            f"{r['source']}{tag}"
        )
