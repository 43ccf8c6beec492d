"""Drop-in model entries (``kiln models add``): merged after models.yaml, checked like it,
and re-read by a live registry when they change (a bad one keeps the models in force)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from config.errors import ModelConfigError
from config.models import dropin_path, load_models, write_dropin
from config.settings import DEFAULT_MODELS_FILE, from_env
from pipelines.registry import LiveRegistry, Registry

ENTRY = {"name": "mine", "family": "sd15", "source": "/models/mine.safetensors", "dtype": "fp32"}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_dropin_is_read_after_the_models_file(tmp_path: Path) -> None:
    written = write_dropin(tmp_path, {**ENTRY, "config": "/models/sd15"})
    assert written == dropin_path(tmp_path, "mine") and not list(tmp_path.glob(".*"))
    models = load_models(DEFAULT_MODELS_FILE, dropin_dir=tmp_path)
    assert list(models)[-1] == "mine" and "tiny-sd" in models
    assert models["mine"].config == "/models/sd15"
    assert "mine" not in load_models(DEFAULT_MODELS_FILE, dropin_dir=tmp_path / "absent")


def test_a_dropin_may_not_take_a_packaged_name_nor_break_the_rules(tmp_path: Path) -> None:
    (tmp_path / "tiny-sd.yaml").write_text("name: tiny-sd\nfamily: sd15\nsource: /x\n")
    with pytest.raises(ModelConfigError, match="already listed in"):
        load_models(DEFAULT_MODELS_FILE, dropin_dir=tmp_path)
    with pytest.raises(ModelConfigError, match="single-file source only"):
        write_dropin(tmp_path, {**ENTRY, "source": "/models/folder", "config": "/models/sd15"})
    with pytest.raises(ModelConfigError, match="dtype"):
        write_dropin(tmp_path, {**ENTRY, "dtype": "fp8"})
    with pytest.raises(ModelConfigError, match="a single-file source is one file"):
        write_dropin(tmp_path, {**ENTRY, "variant": "fp16"})


def test_settings_name_the_dropin_folder_under_the_data_dir(tmp_path: Path) -> None:
    assert from_env({"KILN_DATA_DIR": str(tmp_path)}).models_dropin_dir == tmp_path / "models.d"
    other = from_env({"KILN_MODELS_DROPIN_DIR": str(tmp_path / "x")}).models_dropin_dir
    assert other == tmp_path / "x"


def test_a_live_registry_rereads_changes_and_keeps_its_models_on_a_bad_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = from_env({"KILN_DATA_DIR": str(tmp_path)})
    clock = Clock()
    live = LiveRegistry(settings, clock=clock)
    assert "mine" not in live and isinstance(live, Registry)
    write_dropin(settings.models_dropin_dir, ENTRY)
    assert "mine" not in live  # looked at most once a second
    clock.now += 1.5
    assert "mine" in live and live["mine"].family.name == "sd15" and live.reloads == 1
    dropin_path(settings.models_dropin_dir, "broken").write_text("name: broken\nfamily: nope\n")
    clock.now += 1.5
    with caplog.at_level(logging.ERROR, logger="kiln.models"):
        assert "mine" in live and "broken" not in live
    assert "not reloaded" in caplog.text
    dropin_path(settings.models_dropin_dir, "broken").unlink()
    dropin_path(settings.models_dropin_dir, "mine").unlink()
    clock.now += 1.5
    assert "mine" not in live and live.reloads == 2
