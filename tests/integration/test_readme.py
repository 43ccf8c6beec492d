"""The README's examples run as written (against this test's stack instead of :8000)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.stack import BIN, ROOT, Stack

BLOCK = re.compile(r"<!-- test -->\n```(\w+)\n(.*?)```", re.S)
EXAMPLES = BLOCK.findall((ROOT / "README.md").read_text())


def localize(code: str, stack: Stack) -> str:
    port = stack.api_url.rsplit(":", 1)[1]
    return code.replace("localhost:8000", f"127.0.0.1:{port}").replace(
        "redis://127.0.0.1:6390/0", stack.env["KILN_REDIS_URL"]
    )


def test_the_readme_has_examples() -> None:
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize(
    ("lang", "code"), EXAMPLES, ids=[f"{i}-{lang}" for i, (lang, _) in enumerate(EXAMPLES)]
)
def test_readme_example(lang: str, code: str, stack: Stack, tmp_path: Path) -> None:
    env = {**stack.env, "PATH": f"{BIN}:{stack.env.get('PATH', '')}", "KILN_URL": stack.api_url}
    argv = [sys.executable, "-c"] if lang == "python" else ["bash", "-euo", "pipefail", "-c"]
    out = subprocess.run(
        [*argv, localize(code, stack)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    assert out.stdout.strip()
    assert "error" not in out.stdout.lower() or lang == "sh"
