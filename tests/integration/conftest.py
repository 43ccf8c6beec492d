"""Integration tests use the session stack from tests/conftest.py."""

import pytest

pytestmark = pytest.mark.integration
