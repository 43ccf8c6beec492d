"""The deployment recipes name real commands, real models and real settings."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path

import yaml

from app.metrics import FleetCollector
from config.models import load_models
from config.settings import DEFAULT_MODELS_FILE, Settings
from tasks import metrics as worker_metrics

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
SETTINGS = {f"KILN_{f.name.upper()}" for f in dataclasses.fields(Settings)}
MODELS = set(load_models(DEFAULT_MODELS_FILE))
KILN_COMMANDS = {"worker", "flower", "generate", "jobs", "models", "config", "keys", "dev",
                 "capacity"}


def recipe_texts() -> dict[str, str]:
    files = [*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.service"), *DEPLOY.rglob("*.example"),
             ROOT / "Procfile", ROOT / "Procfile.dev"]
    return {str(p.relative_to(ROOT)): p.read_text() for p in files}


def test_every_kiln_variable_is_a_setting() -> None:
    for name, text in recipe_texts().items():
        for var in set(re.findall(r"\bKILN_[A-Z_]+\b", text)):
            assert var in SETTINGS, f"{name} uses {var}, which is not a setting"


def check_argv(argv: list[str], where: str) -> None:
    prog = Path(argv[0]).name
    if prog == "kiln":
        assert argv[1] in KILN_COMMANDS, f"{where}: kiln {argv[1]}"
        if argv[1] == "worker":
            model = argv[argv.index("--model") + 1]
            assert model in MODELS or model.startswith("$"), f"{where}: unknown model {model}"
    elif prog == "gunicorn":
        assert "app:create_app()" in argv and "python:config.gunicorn" in argv, where
    elif prog == "celery":
        assert argv[1:3] == ["-A", "tasks"], where
        assert "--queues=webhooks" in argv, where


def test_kubernetes_manifests() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "kiln.yaml").read_text()))
    kinds = [d["kind"] for d in docs]
    assert kinds.count("ScaledObject") >= 2 and "ConfigMap" in kinds
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for doc in docs:
        if doc["kind"] == "Deployment":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                check_argv(c["command"], doc["metadata"]["name"])
        if doc["kind"] == "ConfigMap":
            assert set(doc["data"]) <= SETTINGS
    for so in (d for d in docs if d["kind"] == "ScaledObject"):
        target = deployments[so["spec"]["scaleTargetRef"]["name"]]
        (container,) = target["spec"]["template"]["spec"]["containers"]
        model = container["command"][container["command"].index("--model") + 1]
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["listName"] == f"gen.{model}"  # the model's Celery queue
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_procfiles_and_systemd_units() -> None:
    for name in ("Procfile", "Procfile.dev"):
        for line in (ROOT / name).read_text().splitlines():
            if line and not line.startswith("#"):
                check_argv(shlex.split(line.split(":", 1)[1]), name)
    for unit in (DEPLOY / "systemd").glob("*.service"):
        exec_start = next(ln for ln in unit.read_text().splitlines()
                          if ln.startswith("ExecStart="))
        argv = shlex.split(exec_start.removeprefix("ExecStart="))
        if Path(argv[0]).name == "sh":
            argv = shlex.split(argv[2].removeprefix("exec "))
        check_argv(argv, unit.name)


def exposed_names() -> set[str]:
    names: set[str] = set()
    collectors = [worker_metrics.JOBS_FINISHED, worker_metrics.QUEUE_WAIT, worker_metrics.RUN,
                  worker_metrics.UPLOAD, worker_metrics.IMAGES, worker_metrics.BATCH_SIZE,
                  worker_metrics.BATCH_FILL, worker_metrics.BATCH_SECONDS,
                  worker_metrics.OOM_SPLITS, worker_metrics.MODEL_LOAD,
                  worker_metrics.GPU_ALLOCATED, worker_metrics.GPU_PEAK]
    from app import metrics as api_metrics

    collectors += [api_metrics.SUBMITTED, api_metrics.REQUESTS, api_metrics.LATENCY,
                   FleetCollector(None)]
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                "gauge": [""]}
    for c in collectors:
        for fam in c.describe():
            names |= {fam.name + s for s in suffixes[fam.type]}
    return names


def test_grafana_dashboard_uses_metrics_that_exist() -> None:
    dash = json.loads((DEPLOY / "grafana" / "kiln.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bkiln_[a-z_]+\b", e)}
    assert used, "no Kiln metric in the dashboard"
    missing = used - exposed_names()
    assert not missing, f"dashboard uses metrics nobody exposes: {missing}"
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("queue depth", "throughput", "p95", "batch", "failures"):
        assert topic in titles
