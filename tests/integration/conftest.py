"""Integration tests use the session stack from tests/conftest.py (marked there)."""
