"""``/healthz`` (the process is alive) and ``/readyz`` (it can do work)."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from app.schemas import HealthSchema
from app.service import dispatcher
from tasks.runtime import ready_workers

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
    @blp.alt_response(503, schema=HealthSchema)
    def get(self) -> Any:
        """Broker, storage, and a ready worker for every model; 503 otherwise."""
        d = dispatcher()
        checks: dict[str, Any] = {"job_store": d.store.ping(), "storage": d.storage.ping()}
        workers = {}
        if checks["job_store"]:
            workers = {name: ready_workers(d.store, name) for name in d.registry}
        checks["workers"] = workers
        ok = checks["job_store"] and checks["storage"] and all(workers.values())
        return {"status": "ok" if ok else "unavailable", "checks": checks}, 200 if ok else 503
