"""The model registry: ``models.yaml`` entries merged with their family rules.

Torch-free: the API asks it what a model accepts; the worker asks it what to load.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from config.errors import UnknownModel
from config.models import ModelSpec, load_models
from pipelines.families import SCHEDULERS, Family, get_family


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
    def from_file(cls, path: Path) -> Registry:
        return cls(load_models(path))

    def __getitem__(self, name: str) -> Model:
        try:
            return self._models[name]
        except KeyError:
            raise UnknownModel(name) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)
