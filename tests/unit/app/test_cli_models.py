"""`kiln models add|remove|list --local`: a checked file becomes a drop-in entry; a wrong
family, a pickle or a packaged name is one line and a non-zero exit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from app.cli import main as kiln
from config.settings import get_settings


@pytest.fixture
def env(tmp_path: Path, tiny_models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("KILN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KILN_MODELS_DIR", str(tiny_models_dir))
    get_settings.cache_clear()
    yield tmp_path / "models.d"
    get_settings.cache_clear()


def run(*args: str):
    return CliRunner().invoke(kiln, ["models", *args])


def test_add_detects_the_family_and_writes_a_dropin(env: Path, tiny_models_dir: Path) -> None:
    file = tiny_models_dir / "checkpoints" / "sdxl.safetensors"
    out = run("add", "mine", str(file), "--config", str(tiny_models_dir / "sdxl"))
    assert out.exit_code == 0, out.output
    assert "added mine (sdxl" in out.output and "kiln worker --model mine" in out.output
    text = (env / "mine.yaml").read_text()
    assert f"source: {file}" in text and "family: sdxl" in text and "dtype: fp16" in text
    listing = run("list", "--local")
    line = next(x for x in listing.output.splitlines() if x.startswith("mine "))
    assert "sdxl" in line and "MB" in line and str(file) in line and "(added)" in line
    assert run("remove", "mine").exit_code == 0 and not (env / "mine.yaml").exists()


def test_a_wrong_family_is_one_line_naming_the_file_and_both(
    env: Path, tiny_models_dir: Path
) -> None:
    file = tiny_models_dir / "checkpoints" / "sdxl.safetensors"
    out = run("add", "mine", str(file), "--family", "sd15")
    assert out.exit_code != 0 and len(out.output.strip().splitlines()) == 1
    assert str(file) in out.output and "sd15" in out.output and "sdxl" in out.output
    assert not (env / "mine.yaml").exists()


def test_a_pickle_is_one_line_with_the_reason_and_the_conversion(env: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "model.ckpt"
    torch.save({"a": torch.zeros(1)}, ckpt)
    out = run("add", "mine", str(ckpt))
    assert out.exit_code != 0 and len(out.output.strip().splitlines()) == 1
    assert str(ckpt) in out.output and "runs any code" in out.output
    assert "weights_only=True" in out.output and "save_file" in out.output


def test_packaged_names_are_neither_taken_nor_removed(env: Path, tiny_models_dir: Path) -> None:
    file = tiny_models_dir / "checkpoints" / "sd15.safetensors"
    taken = run("add", "sd15", str(file), "--config", str(tiny_models_dir / "sd15"))
    assert taken.exit_code != 0 and "pick another name" in taken.output
    kept = run("remove", "tiny-sd")
    assert kept.exit_code != 0 and "only models added with `kiln models add`" in kept.output
    wrong = run("add", "mine", str(file), "--config", str(tiny_models_dir / "flux"))
    assert wrong.exit_code != 0 and "FluxPipeline folder" in wrong.output


def test_make_tiny_single_file_names_each_file_and_its_config(
    env: Path, tiny_models_dir: Path
) -> None:
    out = run("make-tiny", str(tiny_models_dir), "--single-file")  # all there: nothing rebuilt
    assert out.exit_code == 0, out.output
    for recipe in ("sd15", "sdxl", "flux"):
        file = tiny_models_dir / "checkpoints" / f"{recipe}.safetensors"
        assert f"{file}  (config: {tiny_models_dir / recipe})" in out.output
