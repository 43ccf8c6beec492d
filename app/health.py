"""``/healthz`` (the process is alive) and ``/readyz`` (it can do work)."""

from __future__ import annotations

from typing import Any

from flask import request
from flask.views import MethodView
from flask_smorest import Blueprint

from app.schemas import HealthSchema
from app.service import service

blp = Blueprint("health", __name__, description="Health and readiness")


@blp.route("/healthz")
class Healthz(MethodView):
    @blp.response(200, HealthSchema)
    def get(self) -> Any:
        """Always 200 while the process serves requests."""
        return {"status": "ok", "checks": {}}


@blp.route("/readyz")
class Readyz(MethodView):
    @blp.response(200, HealthSchema)
    @blp.alt_response(503, schema=HealthSchema, description="Not ready; checks say why")
    def get(self) -> Any:
        """Job store and storage reachable, and a ready worker for each required model.

        ?model=NAME (repeatable) checks those models only; otherwise the models in
        KILN_REQUIRED_MODELS (default: every enabled model). Workers count as ready
        while their heartbeat (every 2 s, 6 s TTL) is alive; a clean stop removes it at
        once, before the worker drains its running jobs. A model no ready worker holds
        counts when a worker serving several models can load it (standby).
        """
        d = service()
        asked = request.args.getlist("model")
        required = (
            asked or [m for m in d.settings.required_models.split(",") if m] or list(d.registry)
        )
        unknown = [m for m in required if m not in d.registry]
        checks: dict[str, Any] = {"job_store": d.store.ping(), "storage": d.storage.ping()}
        workers: dict[str, int] = {}
        standby: dict[str, int] = {}
        if checks["job_store"]:
            workers = {name: d.fleet.ready_workers(name) for name in d.registry}
            standby = {name: d.fleet.standby(name)[0] for name in d.registry}
        checks["workers"] = workers
        checks["standby"] = {name: n for name, n in standby.items() if n}
        checks["required"] = required
        if unknown:
            checks["unknown_models"] = unknown
        ok = (
            checks["job_store"]
            and checks["storage"]
            and not unknown
            and all(workers.get(m) or standby.get(m) for m in required)
        )
        return {"status": "ok" if ok else "unavailable", "checks": checks}, 200 if ok else 503
