"""``app/client.py`` stands alone: copied into a project with only ``requests``, it works."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_the_client_file_imports_only_requests(tmp_path: Path) -> None:
    shutil.copy(ROOT / "app" / "client.py", tmp_path / "kiln_client.py")
    code = (
        "import sys; from kiln_client import Kiln; Kiln('http://127.0.0.1:1');"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in"
        " {'flask', 'app', 'tasks', 'config', 'pipelines', 'celery', 'torch', 'marshmallow'});"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run(
        [sys.executable, "-E", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
