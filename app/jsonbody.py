"""JSON bodies, read with a bound on their depth.

Every place the API reads JSON (a request body through Flask or webargs, a form field
that carries JSON) reads it here: a document nested deeper than ``MAX_DEPTH`` is a
``400`` that says so (Python's parser would raise ``RecursionError`` somewhere past a
thousand levels, and the code after it recurses too).
"""

from __future__ import annotations

import json
from typing import Any

from flask.json.provider import DefaultJSONProvider
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request

from config.errors import MalformedBody

MAX_DEPTH = 32  # a job nests three levels deep (loras: a list of objects)


def too_deep(where: str) -> MalformedBody:
    reason = f"nested deeper than {MAX_DEPTH} levels"
    return MalformedBody(f"the {where} is JSON {reason}", fields={where: [reason]})


def depth_within(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``value`` nests at most ``limit`` lists and objects deep (no recursion)."""
    todo: list[tuple[Any, int]] = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return False
            children = item.values() if isinstance(item, dict) else item
            todo.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return True


def loads(data: str | bytes, *, where: str = "body") -> Any:
    """``json.loads`` that answers a too-deep document with ``MalformedBody`` (400)."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise too_deep(where) from None
    if not depth_within(value):
        raise too_deep(where)
    return value


class BoundedJSONProvider(DefaultJSONProvider):
    """Flask's JSON, with the depth bound on everything it reads (``request.get_json``)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads(s)


class BoundedJsonParser(FlaskParser):
    """webargs' Flask parser (``@blp.arguments``), reading bodies with the depth bound."""

    def _raw_load_json(self, req: Any) -> Any:
        if not is_json_request(req):
            return core.missing
        data = req.get_data(cache=True)
        try:
            text = data.decode("utf-8") if isinstance(data, bytes) else data
        except UnicodeDecodeError as exc:
            raise json.JSONDecodeError(f"Bytes decoding error : {exc.reason}", "", 0) from exc
        return loads(text)
