"""API keys: hashed in config, scoped, checked before every request.

``KILN_API_KEYS="alice:<sha256 hex>:generate+read,ops:<sha256 hex>:admin"``; make one
with ``kiln keys create alice --scopes generate,read`` (the key is shown once, only
its hash is configured). Send ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.
Scopes: ``generate`` (submit, cancel), ``read`` (jobs, models), ``admin`` (everything,
and every key's jobs). Without keys the dev and test profiles run open, loudly; the
prod profile refuses to start.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass

from flask import Flask, g, request

from config.errors import KilnError
from config.settings import Settings, SettingsError

log = logging.getLogger("kiln.auth")
SCOPES = ("generate", "read", "admin")
PUBLIC_ENDPOINTS = {
    "health.Healthz", "health.Readyz", "classic.ClassicHealth", "web.index", "web.docs",
    "web.docs_assets", "static", "api-docs.openapi_json", "metrics",
}
# endpoint → scope; anything not listed here and not public needs "admin".
ENDPOINT_SCOPES = {
    ("jobs.Jobs", "POST"): "generate",
    ("jobs.Job", "GET"): "read",
    ("jobs.Job", "DELETE"): "generate",
    ("jobs.events", "GET"): "read",
    ("models.Models", "GET"): "read",
    ("openai.Generations", "POST"): "generate",
    ("classic.Generate", "POST"): "generate",
    ("classic.ClassicJob", "GET"): "read",
}


class Unauthorized(KilnError):
    code = "unauthorized"
    status = 401


class Forbidden(KilnError):
    code = "forbidden"
    status = 403


@dataclass(frozen=True)
class ApiKey:
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "kiln_" + secrets.token_urlsafe(32)


def parse_keys(spec: str) -> dict[str, ApiKey]:
    """``name:sha256hex:scope+scope,...`` → {hash: ApiKey}; errors name the entry."""
    keys: dict[str, ApiKey] = {}
    for i, entry in enumerate(e.strip() for e in spec.split(",") if e.strip()):
        parts = entry.split(":")
        if len(parts) != 3 or len(parts[1]) != 64:
            raise SettingsError(f"KILN_API_KEYS entry {i + 1}: expected name:sha256hex:scopes")
        name, digest, scopes = parts
        unknown = set(scopes.split("+")) - set(SCOPES)
        if unknown:
            raise SettingsError(f"KILN_API_KEYS entry {name!r}: unknown scope(s) {unknown}")
        keys[digest.lower()] = ApiKey(name, frozenset(scopes.split("+")))
    return keys


def presented_key() -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.headers.get("X-API-Key") or None


def current_key() -> ApiKey | None:
    return g.get("api_key")


def owner() -> str | None:
    key = current_key()
    return key.name if key else None


def can_see(record_owner: str | None) -> bool:
    """Jobs are visible to the key that made them, and to admin keys."""
    key = current_key()
    return key is None or "admin" in key.scopes or record_owner == key.name


def init_auth(app: Flask, settings: Settings) -> None:
    keys = parse_keys(settings.api_keys)
    app.extensions["kiln_keys"] = keys
    if not keys:
        if settings.profile == "prod":
            raise SettingsError("KILN_API_KEYS is required in the prod profile "
                                "(make one with `kiln keys create NAME`)")
        log.warning("*** NO API KEYS: the API is open to anyone who can reach it "
                    "(%s profile). Set KILN_API_KEYS before exposing it. ***", settings.profile)
        return

    @app.before_request
    def _authenticate() -> None:
        endpoint = request.endpoint or ""
        if endpoint in PUBLIC_ENDPOINTS or request.method == "OPTIONS":
            return
        presented = presented_key()
        if presented is None:
            raise Unauthorized("an API key is required: Authorization: Bearer <key>")
        key = keys.get(hash_key(presented))
        if key is None:
            raise Unauthorized("invalid API key")
        scope = ENDPOINT_SCOPES.get((endpoint, request.method), "admin")
        if not key.allows(scope):
            raise Forbidden(f"this key lacks the {scope!r} scope",
                            fields={"scope": [scope]})
        g.api_key = key
