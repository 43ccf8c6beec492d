"""The model registry: ``models.yaml`` entries merged with their family rules.

Torch-free: the API asks it what a model accepts; the worker asks it what to load.
The entries are ``KILN_MODELS_FILE`` and the drop-in files of ``KILN_MODELS_DROPIN_DIR``
(``kiln models add``); :class:`LiveRegistry` re-reads them when they change, as the API
re-reads its keys file, so an added model is served without a restart.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from config.errors import ModelConfigError, UnknownFamily, UnknownModel
from config.models import ModelSpec, dropin_files, load_models
from config.settings import Settings
from pipelines.checkpoints import PICKLE_SUFFIXES, refuse_pickle
from pipelines.families import SCHEDULERS, Family, get_family

log = logging.getLogger("kiln.models")


@dataclass(frozen=True, kw_only=True)
class Model:
    """A model entry with every default filled in from its family."""

    spec: ModelSpec
    family: Family
    width: int
    height: int
    steps: int
    guidance_scale: float
    scheduler: str
    schedulers: tuple[str, ...]
    min_size: int
    max_size: int
    max_steps: int

    @property
    def name(self) -> str:
        return self.spec.name

    def describe(self) -> dict[str, object]:
        """The public view served by ``GET /v1/models``."""
        s, f = self.spec, self.family
        return {
            "id": s.name,
            "object": "model",
            "family": f.name,
            "stand_in": s.stand_in,
            "description": s.description,
            "dtype": s.dtype,
            "defaults": {
                "width": self.width,
                "height": self.height,
                "steps": self.steps,
                "guidance_scale": self.guidance_scale,
                "scheduler": self.scheduler,
            },
            "limits": {
                "min_size": self.min_size,
                "max_size": self.max_size,
                "size_multiple": f.size_multiple,
                "max_steps": self.max_steps,
                "max_n": s.limits.max_n,
                "max_prompt_chars": s.limits.max_prompt_chars,
                "guidance_scale": [s.limits.min_guidance, s.limits.max_guidance],
                "max_pixels_per_batch": s.limits.max_pixels_per_batch,
                "max_loras": s.limits.max_loras,
            },
            "schedulers": list(self.schedulers),
            "negative_prompt": f.negative_prompt,
            "guidance": f.guidance,
            "loras": [lo.name for lo in s.loras],
            "max_batch": s.max_batch,
        }


def resolve(spec: ModelSpec) -> Model:
    fam = get_family(spec.family)
    if spec.source.lower().endswith(PICKLE_SUFFIXES):  # refused by name, before any load
        refuse_pickle(Path(spec.source))
    d, lim = spec.defaults, spec.limits
    schedulers = spec.schedulers or fam.schedulers
    scheduler = spec.scheduler or fam.scheduler
    for name in (scheduler, *schedulers):
        if name and name not in SCHEDULERS:
            raise ValueError(f"model {spec.name!r}: unknown scheduler {name!r}")
    if scheduler and scheduler not in schedulers:
        schedulers = (scheduler, *schedulers)
    return Model(
        spec=spec,
        family=fam,
        width=d.width or fam.width,
        height=d.height or fam.height,
        steps=d.steps or fam.steps,
        guidance_scale=fam.guidance_scale if d.guidance_scale is None else d.guidance_scale,
        scheduler=scheduler,
        schedulers=tuple(schedulers),
        min_size=lim.min_size or fam.min_size,
        max_size=lim.max_size or fam.max_size,
        max_steps=lim.max_steps or fam.max_steps,
    )


class Registry(Mapping[str, Model]):
    def __init__(self, specs: Mapping[str, ModelSpec]) -> None:
        self._models = {name: resolve(spec) for name, spec in specs.items()}

    @classmethod
    def from_file(cls, path: Path, *, dropin_dir: Path | None = None) -> Registry:
        return Registry(load_models(path, dropin_dir=dropin_dir))

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        """``KILN_MODELS_FILE`` and the drop-ins of ``KILN_MODELS_DROPIN_DIR``."""
        return cls.from_file(settings.models_file, dropin_dir=settings.models_dropin_dir)

    def __getitem__(self, name: str) -> Model:
        try:
            return self._models[name]
        except KeyError:
            raise UnknownModel(name) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)


Stamp = tuple[tuple[str, int, int, int], ...]


def models_stamp(settings: Settings) -> Stamp:
    """What the registry was read from: each file's path, mtime, size and inode."""
    out = []
    for path in [Path(settings.models_file), *dropin_files(settings.models_dropin_dir)]:
        try:
            st = os.stat(path)
        except OSError:
            continue
        out.append((str(path), st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


class LiveRegistry(Registry):
    """The registry of the settings, read again when its files change (looked at most
    once per ``check_every_s``, on use). A set that no longer reads (a bad drop-in)
    keeps the models in force and logs why, once per change."""

    def __init__(
        self,
        settings: Settings,
        *,
        check_every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._check_every_s = check_every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp = models_stamp(settings)
        super().__init__(load_models(settings.models_file, dropin_dir=settings.models_dropin_dir))
        self._checked = clock()
        self.reloads = 0

    def _fresh(self) -> None:
        if self._clock() - self._checked < self._check_every_s:
            return
        with self._lock:
            if self._clock() - self._checked < self._check_every_s:
                return
            self._checked = self._clock()
            stamp = models_stamp(self._settings)
            if stamp == self._stamp:
                return
            self._stamp = stamp
            s = self._settings
            try:
                models = {
                    n: resolve(spec)
                    for n, spec in load_models(
                        s.models_file, dropin_dir=s.models_dropin_dir
                    ).items()
                }
            except (ModelConfigError, UnknownFamily, ValueError) as exc:
                log.error("models not reloaded, the models in force stay: %s", exc)
                return
            added = sorted(set(models) - set(self._models))
            removed = sorted(set(self._models) - set(models))
            self._models = models
            self.reloads += 1
            log.info(
                "models reloaded: %d in force (added: %s; removed: %s)",
                len(models),
                ", ".join(added) or "none",
                ", ".join(removed) or "none",
            )

    def __getitem__(self, name: str) -> Model:
        self._fresh()
        return super().__getitem__(name)

    def __iter__(self) -> Iterator[str]:
        self._fresh()
        return super().__iter__()

    def __len__(self) -> int:
        self._fresh()
        return super().__len__()
