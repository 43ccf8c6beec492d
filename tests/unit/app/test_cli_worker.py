"""``kiln worker``: one model or several, and the mistakes it names before anything loads."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from app.cli import main as kiln


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give --model M or --models a,b,c"),
        (["--model", "tiny-sd", "--models", "tiny-sd,sd15"], "give --model M or --models a,b,c"),
        (["--model", "tiny-sd", "--max-resident", "2"], "--max-resident goes with --models"),
        (["--models", "tiny-sd,nope"], "unknown model 'nope'"),
        (["--models", "tiny-sd", "--max-resident", "0"], "--max-resident"),
    ],
)
def test_worker_names_what_is_wrong_with_its_models(args: list[str], message: str) -> None:
    out = CliRunner().invoke(kiln, ["worker", *args])
    assert out.exit_code in (1, 2), out.output  # a usage error or a refusal, never a start
    assert message in out.output
