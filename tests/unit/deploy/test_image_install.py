"""The images' install steps without docker: the wheel stage builds from exactly the
files the Dockerfile copies, and the wheel, installed in a clean venv, gives a working
``kiln`` with its package data (models file, web page, gunicorn settings)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from tests.unit.deploy.test_kit import stages
from tests.unit.deploy.test_recipes import ROOT


def test_the_wheel_stage_builds_a_package_that_runs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for word, rest in stages()["wheel"]:
        if word == "COPY":  # the build context the Dockerfile gives the wheel stage
            *sources, dest = rest.split()
            for source in sources:
                target = src / (source if dest in {".", "./"} else dest.removeprefix("./"))
                if (ROOT / source).is_dir():
                    shutil.copytree(
                        ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__")
                    )
                else:
                    shutil.copy(ROOT / source, target)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    # As the Dockerfile's `pip wheel --no-deps --wheel-dir /wheels .` (offline here: the
    # build backend of this venv instead of a fresh one).
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(wheels), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("kiln-*.whl")
    clean = tmp_path / "venv"
    venv.create(clean, with_pip=False)
    python = clean / "bin" / "python"
    subprocess.run(
        [*pip, "--python", str(python), "install", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    # Dependencies from this venv (the images install them from the wheel's requirements).
    deps = sysconfig.get_paths()["purelib"]
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": deps,
        "HF_HUB_OFFLINE": "1",
        "HOME": str(tmp_path),
    }
    where = subprocess.run(
        [str(python), "-c", "import app, config.gunicorn; print(app.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert where.returncode == 0, where.stderr[-2000:]
    assert where.stdout.strip().startswith(str(clean))  # the installed copy, not this checkout
    listed = subprocess.run(
        [str(clean / "bin" / "kiln"), "models", "list", "--local"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "tiny-sd" in listed.stdout  # config/models.yaml came with the package
    installed = clean / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = installed / "site-packages"
    for data in ("app/templates/index.html", "app/static/kiln.js", "config/models.yaml"):
        assert (site / data).is_file(), data
