"""Multipart forms: the doors that take image files read their fields here.

A form carries text only, so each field is typed as the schema expects it (numbers as
numbers, lists and job references as JSON); file parts become :class:`Upload`\\ s. A
value that cannot be typed is passed on as text, for the schema to name.
"""

from __future__ import annotations

import hashlib
from typing import Any

from flask import Request, g
from marshmallow import Schema, fields

from app.jsonbody import BoundedJsonParser, loads
from tasks.jobs.inputs import ImageInput, Upload


def form_payload(schema: Schema, req: Request) -> dict[str, Any]:
    """The form's fields and files, typed for ``schema``."""
    payload: dict[str, Any] = {}
    for key, value in req.form.items():
        name = str(key)
        field = schema.fields.get(name)
        try:
            if isinstance(field, fields.Integer):
                payload[name] = int(value)
            elif isinstance(field, fields.Float):
                payload[name] = float(value)
            elif isinstance(field, fields.List) or (
                isinstance(field, ImageInput) and value.lstrip().startswith("{")
            ):
                payload[name] = loads(value, where=name)
            else:
                payload[name] = value
        except ValueError:
            payload[name] = value
    for name, part in req.files.items():
        payload[str(name)] = Upload(part.read())
    return payload


def comparable(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with each file part as its SHA-256: what an Idempotency-Key compares."""
    return {
        name: {"sha256": hashlib.sha256(v.data).hexdigest()} if isinstance(v, Upload) else v
        for name, v in payload.items()
    }


class JsonOrFormParser(BoundedJsonParser):
    """Reads a body as JSON or, for ``multipart/form-data``, as a form with file parts
    (kept as ``g.form_payload``: the file parts are read once)."""

    def load_json(self, req: Request, schema: Schema) -> Any:
        if req.mimetype == "multipart/form-data":
            g.form_payload = form_payload(schema, req)
            return g.form_payload
        return super().load_json(req, schema)
