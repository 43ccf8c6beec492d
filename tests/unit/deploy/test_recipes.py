"""The deployment recipes name real commands, real models and real settings."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import subprocess
from pathlib import Path

import yaml
from prometheus_client.metrics import MetricWrapperBase

from app import metrics as api_metrics
from app.cli import main as kiln_cli
from app.metrics import FleetCollector
from config.models import load_models
from config.settings import DEFAULT_MODELS_FILE, Settings
from tasks.worker import metrics as worker_metrics

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
SETTINGS = {f"KILN_{f.name.upper()}" for f in dataclasses.fields(Settings)}
PRODUCTION_MODELS_FILE = DEPLOY / "models.production.yaml"
MODELS = set(load_models(DEFAULT_MODELS_FILE)) | set(load_models(PRODUCTION_MODELS_FILE))
KILN_COMMANDS = set(kiln_cli.commands)


def recipe_texts() -> dict[str, str]:
    files = [
        *DEPLOY.rglob("*.yaml"),
        *DEPLOY.rglob("*.service"),
        *DEPLOY.rglob("*.example"),
        ROOT / "Procfile",
        ROOT / "Procfile.dev",
        ROOT / "Dockerfile",
        ROOT / "compose.yaml",
    ]
    return {str(p.relative_to(ROOT)): p.read_text() for p in files}


def test_every_kiln_variable_is_a_setting() -> None:
    for name, text in recipe_texts().items():
        for var in set(re.findall(r"\bKILN_[A-Z_]+\b", text)):
            assert var in SETTINGS, f"{name} uses {var}, which is not a setting"


def env_and_argv(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Leading ``NAME=value`` words (the shell sets them for the command), and the rest."""
    env: dict[str, str] = {}
    while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):
        name, _, value = argv[0].partition("=")
        env[name], argv = value, argv[1:]
    return env, argv


def check_argv(argv: list[str], where: str, *, gpu: bool = False) -> None:
    _, argv = env_and_argv(argv)
    prog = Path(argv[0]).name
    assert prog in {"kiln", "gunicorn", "celery"}, f"{where}: {prog}"
    if prog == "kiln":
        assert argv[1] in KILN_COMMANDS, f"{where}: kiln {argv[1]}"
        if argv[1] == "worker":
            model = argv[argv.index("--model") + 1]
            assert model in MODELS or model.startswith("$"), f"{where}: unknown model {model}"
            if gpu:  # production recipes pin one GPU per worker process
                assert argv[argv.index("--gpu") + 1].isdigit(), f"{where}: --gpu I"
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
                check_argv(c["command"], doc["metadata"]["name"], gpu=True)
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "kiln-config":
            assert set(doc["data"]) <= SETTINGS
    workers = {
        n
        for n, d in deployments.items()
        if "worker" in d["spec"]["template"]["spec"]["containers"][0]["command"]
        and d["spec"]["template"]["spec"]["containers"][0]["command"][0] == "kiln"
    }
    scaled = {d["spec"]["scaleTargetRef"]["name"] for d in docs if d["kind"] == "ScaledObject"}
    assert workers and workers <= scaled, "every model's worker Deployment autoscales"
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
        exec_start = next(ln for ln in unit.read_text().splitlines() if ln.startswith("ExecStart="))
        argv = shlex.split(systemd_expand(exec_start.removeprefix("ExecStart="), "sdxl:3"))
        if Path(argv[0]).name == "sh":  # run the real shell line, printing argv instead
            line = argv[2].replace("exec ", "printf '%s\\n' ", 1)
            argv = subprocess.run(
                ["/bin/sh", "-c", line, *argv[3:]], capture_output=True, text=True, check=True
            ).stdout.splitlines()
            assert argv[-6:] == ["--model", "sdxl", "--gpu", "3", "--metrics-port", "9103"]
        check_argv(argv, unit.name, gpu=True)


PRODUCTION = ("KILN_API_KEYS", "KILN_FLOWER_BASIC_AUTH", "KILN_WEBHOOK_SECRET")


def test_every_production_recipe_fails_closed() -> None:
    """The prod profile on every process; keys, Flower credentials and one webhook secret
    in the one environment every host shares."""
    env_file = (DEPLOY / "systemd" / "kiln.env.example").read_text()
    settings = dict(ln.split("=", 1) for ln in env_file.splitlines() if ln and ln[0] != "#")
    assert settings["KILN_PROFILE"] == "prod"
    assert all(settings.get(name) for name in PRODUCTION)
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line and not line.startswith("#"):
            env, _ = env_and_argv(shlex.split(line.split(":", 1)[1]))
            assert env.get("KILN_PROFILE") == "prod", line
    assert "honcho -e /etc/kiln/kiln.env" in (ROOT / "Procfile").read_text()
    for unit in (DEPLOY / "systemd").glob("*.service"):
        assert "EnvironmentFile=/etc/kiln/kiln.env" in unit.read_text(), unit.name
    text = (DEPLOY / "kubernetes" / "kiln.yaml").read_text()
    docs = list(yaml.safe_load_all(text))
    (config,) = [d for d in docs if d["metadata"]["name"] == "kiln-config"]
    assert config["data"]["KILN_PROFILE"] == "prod"
    header = text.split("apiVersion", 1)[0]
    assert all(name in header for name in PRODUCTION)
    for doc in (d for d in docs if d["kind"] == "Deployment"):
        for c in doc["spec"]["template"]["spec"]["containers"]:
            assert {"secretRef": {"name": "kiln-secrets"}} in c["envFrom"], doc["metadata"]


def systemd_expand(line: str, instance: str) -> str:
    """What systemd hands to exec: specifiers (%i, %%) and $$ replaced."""
    line = re.sub(r"%([%iI])", lambda m: "%" if m[1] == "%" else instance, line)
    return line.replace("$$", "$")


def collectors() -> list:
    """Every collector the metrics modules define (a new metric is picked up by itself)."""
    found = [
        v
        for mod in (worker_metrics, api_metrics)
        for v in vars(mod).values()
        if isinstance(v, MetricWrapperBase)
    ]
    return [*found, FleetCollector(None, [])]  # type: ignore[arg-type]


SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}


def exposed_names() -> set[str]:
    return {fam.name + s for c in collectors() for fam in c.describe() for s in SUFFIXES[fam.type]}


def fleet_names() -> set[str]:
    """Series every API host reports alike (read from Redis): never summed across hosts."""
    fleet = FleetCollector(None, [])  # type: ignore[arg-type]
    return {fam.name + s for fam in fleet.describe() for s in SUFFIXES[fam.type]}


def check_exprs(exprs: list[str], where: str) -> None:
    used = {m for e in exprs for m in re.findall(r"\bkiln_[a-z_]+\b", e)}
    assert used, f"no Kiln metric in {where}"
    missing = used - exposed_names()
    assert not missing, f"{where} uses metrics nobody exposes: {missing}"
    for e in exprs:
        for name in fleet_names() & set(re.findall(r"\bkiln_[a-z_]+\b", e)):
            assert not re.search(rf"\bsum\b[^;]*\b{name}\b", e), f"{where}: sum of {name}: {e}"


def test_grafana_dashboard_uses_metrics_that_exist() -> None:
    dash = json.loads((DEPLOY / "grafana" / "kiln.json").read_text())
    check_exprs([t["expr"] for p in dash["panels"] for t in p["targets"]], "dashboard")
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("queue depth", "throughput", "p95", "batch", "failures"):
        assert topic in titles


def test_prometheus_config_and_alerts() -> None:
    conf = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert {j["job_name"] for j in conf["scrape_configs"]} >= {
        "kiln-api",
        "kiln-worker",
        "kiln-flower",
    }
    for rule_file in conf["rule_files"]:
        rules = yaml.safe_load((DEPLOY / "prometheus" / rule_file).read_text())
        alerts = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
        assert "kiln_ready_workers" in alerts["KilnModelHasNoReadyWorker"]
        check_exprs([e for e in alerts.values() if "kiln_" in e], rule_file)


def test_fleet_series_check_catches_a_sum() -> None:
    import pytest

    with pytest.raises(AssertionError, match="sum of kiln_queue_depth"):
        check_exprs(["sum by (model) (kiln_queue_depth)"], "x")
    with pytest.raises(AssertionError, match="nobody exposes"):
        check_exprs(["rate(kiln_no_such_thing_total[5m])"], "x")
