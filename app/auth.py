"""API keys: hashed in config, scoped, checked before every request.

``KILN_API_KEYS="alice:<sha256 hex>:generate+read,ops:<sha256 hex>:admin"``; make one
with ``kiln keys create alice --scopes generate,read`` (the key is shown once, only
its hash is configured). Send ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.
Scopes: ``generate`` (submit, cancel), ``read`` (jobs, models), ``admin`` (everything,
and every key's jobs). ``KILN_API_KEYS_FILE`` adds entries, one per line, re-read
when the file changes (``app/keyring.py``): no restart to add or revoke. Kiln fails
closed: without keys the dev profile serves only clients on its own machine (loopback,
not forwarded by a proxy: 401 for anyone else), the other profiles refuse to start; an
API open to all takes ``KILN_AUTH=off`` in so many words, in the dev or test profile.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apispec import BasePlugin
from flask import Flask, g, request
from flask_smorest import Api

from app.keyring import KeyRing
from config.errors import KilnError
from config.settings import Settings, SettingsError

log = logging.getLogger("kiln.auth")
SCOPES = ("generate", "read", "admin")
PUBLIC_ENDPOINTS = {
    "health.Healthz",
    "health.Readyz",
    "classic.ClassicHealth",
    "web.index",
    "web.docs",
    "web.docs_assets",
    "static",
    "api-docs.openapi_json",
    "metrics",
}
# endpoint → scope; anything not listed here and not public needs "admin".
ENDPOINT_SCOPES = {
    ("jobs.Jobs", "POST"): "generate",
    ("jobs.Jobs", "GET"): "read",
    ("jobs.Job", "GET"): "read",
    ("jobs.Job", "DELETE"): "generate",
    ("jobs.events", "GET"): "read",
    ("models.Models", "GET"): "read",
    ("models.ModelById", "GET"): "read",
    ("openai.Generations", "POST"): "generate",
    ("openai.Edits", "POST"): "generate",
    ("openai.Variations", "POST"): "generate",
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


_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}\Z")
_DIGEST = re.compile(r"[0-9a-fA-F]{64}\Z")


def valid_key_name(name: str) -> bool:
    return _NAME.match(name) is not None


def parse_entry(entry: str, where: str) -> tuple[str, ApiKey]:
    """``name:sha256hex:scope+scope`` → (digest, key); errors say ``where`` it was."""
    parts = entry.split(":")
    if len(parts) != 3:
        raise SettingsError(f"{where}: expected name:sha256hex:scopes")
    name, digest, scopes = (p.strip() for p in parts)
    if not valid_key_name(name):
        raise SettingsError(f"{where}: the key name must be 1-64 of A-Z a-z 0-9 _ . @ -")
    if not _DIGEST.match(digest):
        raise SettingsError(f"{where}: the digest must be 64 hex digits (a SHA-256)")
    wanted = set(scopes.split("+"))
    unknown = wanted - set(SCOPES)
    if unknown or not scopes:
        raise SettingsError(f"{where}: unknown scope(s) {sorted(unknown)}; scopes: {SCOPES}")
    return digest.lower(), ApiKey(name, frozenset(wanted))


def parse_keys(spec: str, *, source: str = "KILN_API_KEYS") -> dict[str, ApiKey]:
    """``name:sha256hex:scope+scope,...`` → {hash: ApiKey}; errors name the entry."""
    keys: dict[str, ApiKey] = {}
    for i, entry in enumerate(e.strip() for e in spec.split(",") if e.strip()):
        digest, key = parse_entry(entry, f"{source} entry {i + 1}")
        keys[digest] = key
    return keys


def load_keys(settings: Settings) -> dict[str, ApiKey]:
    """Entries of ``KILN_API_KEYS`` plus the lines of ``KILN_API_KEYS_FILE``."""
    keys = parse_keys(settings.api_keys)
    if settings.api_keys_file:
        try:
            text = Path(settings.api_keys_file).expanduser().read_text()
        except OSError as exc:
            raise SettingsError(
                f"KILN_API_KEYS_FILE cannot be read: {type(exc).__name__}"
            ) from None
        for n, line in enumerate(text.splitlines(), start=1):
            entry = line.split("#", 1)[0].strip()
            if entry:
                digest, key = parse_entry(entry, f"KILN_API_KEYS_FILE line {n}")
                keys[digest] = key
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


OPEN_BANNER = (
    "\n"
    + "*" * 78
    + "\n*** NO API KEYS: the Kiln API is OPEN to anyone who can reach it (%s). ***\n"
    "*** Make keys with `kiln keys create NAME` and set KILN_API_KEYS before exposing it. ***\n"
    + "*"
    * 78
)
LOOPBACK_BANNER = (
    "no API keys (dev profile): the Kiln API serves only clients on this machine "
    "(loopback, not forwarded by a proxy); make keys with `kiln keys create NAME`, or open "
    "it to all on purpose with KILN_AUTH=off"
)
FORWARDED = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


def from_this_machine() -> bool:
    """A request from a loopback address that no proxy forwarded."""
    if any(h in request.headers for h in FORWARDED):
        return False
    try:
        return ipaddress.ip_address(request.remote_addr or "").is_loopback
    except ValueError:
        return False


def init_auth(app: Flask, settings: Settings) -> None:
    """Check every request's key and scope, or refuse to start when keys are required."""
    ring = KeyRing(settings, load=load_keys)  # KILN_API_KEYS_FILE: re-read when it changes
    keys = ring.current()
    app.extensions["kiln_keys"] = ring
    if settings.auth == "off":
        if settings.profile not in {"dev", "test"}:
            raise SettingsError(f"KILN_AUTH=off is refused in the {settings.profile} profile")
        log.warning(OPEN_BANNER, f"KILN_AUTH=off, {settings.profile} profile")
        return
    if not keys:
        if not settings.is_dev or settings.auth == "on":
            raise SettingsError(
                f"KILN_API_KEYS is required in the {settings.profile} profile (make one with "
                "`kiln keys create NAME`; only dev and test may set KILN_AUTH=off)"
            )
        log.warning(LOOPBACK_BANNER)

        @app.before_request
        def _loopback_only() -> None:
            endpoint = request.endpoint or ""
            if endpoint in PUBLIC_ENDPOINTS or request.method == "OPTIONS":
                return
            if not from_this_machine():
                raise Unauthorized(
                    "this Kiln has no API keys and serves only clients on its own machine; "
                    "its operator must make keys (kiln keys create) or set KILN_AUTH=off"
                )

        return

    @app.before_request
    def _authenticate() -> None:
        endpoint = request.endpoint or ""
        if endpoint in PUBLIC_ENDPOINTS or request.method == "OPTIONS":
            return
        presented = presented_key()
        if presented is None:
            raise Unauthorized("an API key is required: Authorization: Bearer <key>")
        key = ring.current().get(hash_key(presented))
        if key is None:
            raise Unauthorized("invalid API key")
        method = "GET" if request.method == "HEAD" else request.method
        scope = ENDPOINT_SCOPES.get((endpoint, method), "admin")
        if not key.allows(scope):
            raise Forbidden(f"this key lacks the {scope!r} scope", fields={"scope": [scope]})
        g.api_key = key


SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKey": []}]
# Every door that makes a job: one rate limit, one per-key share, one body check.
SUBMIT_ENDPOINTS = {
    "jobs.Jobs",
    "openai.Generations",
    "openai.Edits",
    "openai.Variations",
    "classic.Generate",
}


class AuthDocPlugin(BasePlugin):
    """Documents keys, scopes and the 401/403/413/429 answers on every guarded operation."""

    def operation_helper(
        self, path: str | None = None, operations: dict | None = None, **kwargs: Any
    ) -> None:
        from app.schemas import ApiErrorSchema

        rule = kwargs.get("rule")
        endpoint = getattr(rule, "endpoint", "")
        if endpoint in PUBLIC_ENDPOINTS:
            return
        for method, op in (operations or {}).items():
            scope = ENDPOINT_SCOPES.get((endpoint, method.upper()), "admin")
            op.setdefault("security", SECURITY)
            op["x-scope"] = scope
            responses = op.setdefault("responses", {})
            # A door with its own error shape (OpenAI) documents it on its invalid-input
            # answer (400 there, 422 on the native doors).
            error = next(
                (
                    r["content"]
                    for code, r in sorted(responses.items(), key=lambda kv: str(kv[0]))
                    if str(code) in ("400", "422") and isinstance(r, dict) and "content" in r
                ),
                {"application/json": {"schema": ApiErrorSchema}},
            )
            responses.setdefault(
                "401", {"description": "No API key, or an unknown one", "content": error}
            )
            responses.setdefault(
                "403", {"description": f"The key lacks the {scope!r} scope", "content": error}
            )
            if "requestBody" in op:
                responses.setdefault(
                    "413", {"description": "Request body too large", "content": error}
                )
            if endpoint in SUBMIT_ENDPOINTS:
                responses.setdefault(
                    "429",
                    {
                        "description": "Rate limit or concurrent-job quota of this key reached",
                        "headers": {
                            "Retry-After": {
                                "schema": {"type": "integer"},
                                "description": "seconds to wait",
                            }
                        },
                        "content": error,
                    },
                )


def document_auth(api: Api) -> None:
    """Call before registering blueprints: security schemes plus per-operation answers."""
    api.spec.components.security_scheme(
        "bearerAuth",
        {
            "type": "http",
            "scheme": "bearer",
            "description": "`Authorization: Bearer <key>` (`kiln keys create`)",
        },
    )
    api.spec.components.security_scheme(
        "apiKey", {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    )
    plugin = AuthDocPlugin()
    plugin.init_spec(api.spec)
    api.spec.plugins.insert(0, plugin)  # before marshmallow's, which resolves the schemas
