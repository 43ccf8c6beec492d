"""The real stack on free ports: Valkey, an S3 server, a tiny-sd worker, the API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import Stack
from tests.support import KilnHTTP

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("stack"), models_dir=tiny_models_dir)
    try:
        s.start_servers()
        s.start_worker("tiny-sd")
        s.start_api()
        yield s
    finally:
        s.close()


@pytest.fixture(scope="session")
def api(stack: Stack) -> KilnHTTP:
    return KilnHTTP(stack.api_url)
