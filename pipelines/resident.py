"""Which of an engine's models are on its device: a memory budget, least-recently-used
eviction, a host-RAM cache for the way back, and loading on demand.

Everything here runs on the engine thread (the one thread that owns torch work), between
pipeline calls: a model is evicted only once its running batch has ended. A model that
cannot load (missing, corrupt, wrong family, larger than the budget, out of memory twice)
is remembered with its reason, and its next requests fail at once with it, until its
source on disk changes.
"""

from __future__ import annotations

import collections
import gc
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.errors import ModelUnavailable, OutOfMemory
from pipelines.checkpoints import disk_bytes, weights_path
from pipelines.registry import Model

log = logging.getLogger("kiln.resident")
MiB = 1 << 20


@dataclass(frozen=True, kw_only=True)
class Budget:
    """What the device may hold: bytes (None: no byte limit), a count of models (None: no
    count limit), and the host-RAM cache for evicted models (GPU only; 0: none)."""

    device_bytes: int | None = None
    max_resident: int | None = None
    host_bytes: int = 0


@dataclass(frozen=True)
class Loaded:
    """One load, as reported to ``on_load``: ``source`` is ``disk`` or ``host``."""

    model: str
    source: str
    seconds: float
    device_bytes: int


def device_bytes(pipe: Any) -> int:
    """Bytes of every parameter and buffer of a pipeline's torch components."""
    seen: set[int] = set()
    total = 0
    for module in getattr(pipe, "components", {}).values():
        for tensor in [*_tensors(module, "parameters"), *_tensors(module, "buffers")]:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total


def _tensors(module: Any, kind: str) -> list[Any]:
    method = getattr(module, kind, None)
    return list(method()) if callable(method) else []


class Resident:
    """The models an engine serves, and those of them on its device now (LRU order)."""

    def __init__(
        self,
        models: Mapping[str, Model],
        *,
        load: Callable[[Model], Any],
        budget: Budget,
        device: str,
        models_dir: Path,
        on_load: Callable[[Loaded], None] | None = None,
        on_evict: Callable[[str], None] | None = None,
    ) -> None:
        self.models = dict(models)
        self.budget = budget
        self.device = device
        self.models_dir = Path(models_dir)
        self.on_load = on_load
        self.on_evict = on_evict
        self._load = load
        self.resident: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self.host: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self.sizes: dict[str, int] = {}  # device bytes, measured at each model's load
        self.failed: dict[str, tuple[ModelUnavailable | OutOfMemory, Any]] = {}
        self.wanted: frozenset[str] = frozenset()  # the worker's choice: evicted last

    # -- what it holds ------------------------------------------------------------
    def used(self) -> int:
        return sum(self.sizes.get(name, 0) for name in self.resident)

    def capacity(self) -> int:
        """How many of its models fit at once (at least one), by count and by bytes."""
        fit = len(self.models)
        if self.budget.max_resident is not None:
            fit = min(fit, self.budget.max_resident)
        if self.budget.device_bytes is not None and self.models:
            biggest = max(self.estimate(name) for name in self.models)
            if biggest:
                fit = min(fit, self.budget.device_bytes // biggest)
        return max(1, fit)

    def estimate(self, name: str) -> int:
        """Device bytes of a model: measured once loaded, else its weights' bytes on disk."""
        if name in self.sizes:
            return self.sizes[name]
        where = weights_path(self.models[name].spec, self.models_dir)
        return (disk_bytes(where) if where is not None else None) or 0

    def _fingerprint(self, name: str) -> Any:
        where = weights_path(self.models[name].spec, self.models_dir)
        try:
            st = where.stat() if where is not None else None
        except OSError:
            return None
        return None if st is None else (st.st_mtime_ns, st.st_size)

    # -- on the engine thread -----------------------------------------------------
    def get(self, name: str) -> tuple[Any, float]:
        """The model on the device, loaded now when it is not (evicting others to make
        room); returns it and the seconds this call spent loading it (0 when resident)."""
        if name in self.resident:
            self.resident.move_to_end(name)
            return self.resident[name], 0.0
        if name not in self.models:
            raise ModelUnavailable(f"this worker does not serve model {name!r}")
        failed = self.failed.get(name)
        if failed is not None:
            if failed[1] == self._fingerprint(name):
                raise failed[0]
            del self.failed[name]  # its source changed: try it again
        t0 = time.perf_counter()
        try:
            loaded, source = self._bring(name)
        except (ModelUnavailable, OutOfMemory) as exc:
            self.failed[name] = (exc, self._fingerprint(name))
            log.error("%s", exc.message)
            raise
        took = time.perf_counter() - t0
        self._make_room(name, self.sizes[name])  # its estimate was short: room now
        self.resident[name] = loaded
        if self.on_load is not None:
            self.on_load(Loaded(name, source, took, self.sizes[name]))
        return loaded, took

    def keep(self, names: Iterable[str]) -> None:
        """Load these now, in order, as far as they fit (a worker's start)."""
        for name in list(names)[: self.capacity()]:
            try:
                self.get(name)
            except (ModelUnavailable, OutOfMemory):
                continue  # remembered: its jobs fail with the reason; the rest serve

    def _bring(self, name: str) -> tuple[Any, str]:
        import torch

        cached = self.host.pop(name, None)  # out of the host cache before room is made
        for attempt in (1, 2):
            self._make_room(name, self.estimate(name))
            try:
                return self._bring_once(name, cached)
            except torch.OutOfMemoryError:
                pass  # freed below, out of this block (its traceback holds the tensors)
            except (ModelUnavailable, OutOfMemory):
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"[:400]
                raise ModelUnavailable(f"model {name} cannot load: {reason}") from None
            cached = None  # half moved: the retry reads it from disk
            self._free()
            if attempt == 1:
                log.warning("out of memory loading %s: evicting every other model", name)
                for other in list(self.resident):
                    self.evict(other)
        raise OutOfMemory(f"model {name} does not fit in device memory, even alone")

    def _bring_once(self, name: str, cached: Any) -> tuple[Any, str]:
        if cached is not None:
            loaded, source = cached, "host"
            loaded.pipe.to(self.device)
        else:
            loaded, source = self._load(self.models[name]), "disk"
        size = self.sizes[name] = device_bytes(loaded.pipe)
        limit = self.budget.device_bytes
        if limit is not None and size > limit:
            del loaded
            self._free()
            raise ModelUnavailable(
                f"model {name} needs {size / MiB:.0f} MiB of device memory, more than "
                f"the budget of {limit / MiB:.0f} MiB"
            )
        return loaded, source

    def _make_room(self, name: str, need: int) -> None:
        while self.resident and not self._fits(need):
            self.evict(self._victim())

    def _fits(self, need: int) -> bool:
        count, limit = self.budget.max_resident, self.budget.device_bytes
        if count is not None and len(self.resident) >= count:
            return False
        return limit is None or self.used() + need <= limit

    def _victim(self) -> str:
        """The least recently used model the worker no longer wants, else the least
        recently used."""
        for name in self.resident:
            if name not in self.wanted:
                return name
        return next(iter(self.resident))

    def evict(self, name: str) -> None:
        loaded = self.resident.pop(name, None)
        if loaded is None:
            return
        size = self.sizes.get(name, 0)
        room = self.budget.host_bytes
        if room and size <= room and self.device.startswith("cuda"):
            while self.host and sum(self.sizes[h] for h in self.host) + size > room:
                self.host.popitem(last=False)
            loaded.pipe.to("cpu")  # the way back is a copy, not a load from disk
            self.host[name] = loaded
        del loaded
        self._free()
        log.info("evicted %s", name, extra={"model": name})
        if self.on_evict is not None:
            self.on_evict(name)

    def _free(self) -> None:
        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
