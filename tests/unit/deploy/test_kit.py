"""The deploy kit: Dockerfile, compose.yaml, the Kubernetes recipe and the bucket's
lifecycle rule name commands, settings, endpoints and files that exist (no docker)."""

from __future__ import annotations

import configparser
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from app import create_app
from config.models import load_models
from config.settings import Settings, from_env
from tests.unit.deploy.test_recipes import DEPLOY, ROOT, SETTINGS, check_argv

PRODUCTION_MODELS = DEPLOY / "models.production.yaml"
LIFECYCLE = DEPLOY / "s3-lifecycle.json"
OTHER_VARIABLES = {"HF_HOME", "HF_TOKEN", "REDIS_PASSWORD", "HOSTNAME", "PATH"}


# -- Dockerfile ---------------------------------------------------------------------------
def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    args: dict[str, str] = {}
    current: list[tuple[str, str]] | None = None
    for word, rest in instructions((ROOT / "Dockerfile").read_text()):
        if word == "ARG" and current is None:
            name, _, value = rest.partition("=")
            args[name] = value
        elif word == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].lower() == "as" else parts[0]
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], parts[0])
            current = found.setdefault(name, [("FROM", base)])
        elif current is not None:
            current.append((word, rest))
    return found


def extras() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return set(cfg["options.extras_require"])


def app_routes() -> set[str]:
    settings = from_env({"KILN_PROFILE": "test", "KILN_AUTH": "off", "KILN_S3_CREATE_BUCKET": "0"})
    return {r.rule for r in create_app({"KILN_SETTINGS": settings}).url_map.iter_rules()}


def url_path(text: str) -> tuple[int, str]:
    m = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/]*)", text)
    assert m, text
    return int(m[1]), m[2]


def test_the_dockerfile_builds_one_package_on_two_bases() -> None:
    found = stages()
    assert {"wheel", "api", "worker"} <= set(found)
    assert re.match(r"python:3\.\d+-slim", found["api"][0][1])
    assert re.match(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-", found["worker"][0][1])
    built = [rest for word, rest in found["wheel"] if word == "RUN"]
    assert any(re.search(r"pip wheel .*--wheel-dir /wheels \.$", r) for r in built)
    for name in ("api", "worker"):
        runs = " ".join(rest for word, rest in found[name] if word == "RUN")
        installs = re.findall(r"pip install [^&]*?(/wheels/kiln-\*\.whl)(\[[\w,]+\])?", runs)
        assert installs, f"{name} installs the wheel built from this package"
        for _, wanted in installs:
            assert set(wanted.strip("[]").split(",")) - {""} <= extras()


def test_the_dockerfile_copies_files_that_exist_and_does_not_ignore_them() -> None:
    ignored = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln[:1] != "#"]
    for word, rest in (i for s in stages().values() for i in s):
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _ = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), source
                assert source.rstrip("/") not in ignored, source
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    packages = {p.split(".")[0] for p in cfg["options.packages.find"]["include"].split()}
    copied = {r.split()[0] for w, r in stages()["wheel"] if w == "COPY"}
    assert packages <= copied  # every package setup.cfg installs is in the build context


def test_images_run_as_a_user_with_healthchecks_on_real_endpoints() -> None:
    found = stages()
    for name in ("api", "worker"):
        users = [rest for word, rest in found[name] if word == "USER"]
        assert users and users[-1] not in {"root", "0"}
        (health,) = [rest for word, rest in found[name] if word == "HEALTHCHECK"]
        (cmd,) = [json.loads(rest) for word, rest in found[name] if word == "CMD"]
        check_argv(cmd, f"Dockerfile {name}", gpu=True)
        port, path = url_path(health)
        if name == "api":
            assert path in app_routes() and path == "/healthz"
            assert f"0.0.0.0:{port}" in cmd
        else:  # a worker serves Prometheus on --metrics-port, from before its model loads
            assert path == "/metrics" and cmd[cmd.index("--metrics-port") + 1] == str(port)
    env = " ".join(rest for word, rest in found["worker"] if word == "ENV")
    assert "HF_HOME=/var/cache/kiln/hf" in env


# -- compose.yaml -------------------------------------------------------------------------
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def env_example() -> dict[str, str]:
    text = (DEPLOY / "compose.env.example").read_text()
    return dict(ln.split("=", 1) for ln in text.splitlines() if ln and ln[0] != "#")


def test_compose_runs_each_part_with_commands_that_exist() -> None:
    services = compose()["services"]
    redis = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis and "/data" in services["redis"]["volumes"][0]
    assert {"minio", "minio-init", "api", "webhooks", "flower"} <= set(services)
    workers = {n: s for n, s in services.items() if n.startswith("worker-")}
    assert workers
    gpus = []
    for name, svc in {**workers, **{n: services[n] for n in ("api", "webhooks", "flower")}}.items():
        check_argv(svc["command"], f"compose {name}", gpu=name in workers)
        assert svc["build"]["target"] == ("worker" if name in workers else "api")
    for name, svc in workers.items():
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        (gpu,) = device["device_ids"]
        gpus.append(gpu)
        cmd = svc["command"]
        assert cmd[cmd.index("--gpu") + 1] == "0"  # the one GPU the container sees
        model = cmd[cmd.index("--model") + 1]
        assert model in load_models(PRODUCTION_MODELS), name
    assert len(gpus) == len(set(gpus)), "one worker per GPU"


def test_compose_mounts_the_models_file_weights_and_lifecycle_rule_that_exist() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                assert (ROOT / source).is_file(), f"{name}: {source}"
            if target == "/etc/kiln/models.yaml":
                assert svc["environment"]["KILN_MODELS_FILE"] == target
                assert (ROOT / source).resolve() == PRODUCTION_MODELS
    for name in (n for n in services if n.startswith("worker-")):
        assert "hf-cache:/var/cache/kiln/hf" in services[name]["volumes"]
    init = " ".join(services["minio-init"]["command"])
    assert "mc mb --ignore-existing" in init and "mc ilm import" in init
    assert (
        "./deploy/s3-lifecycle.json:/etc/kiln/s3-lifecycle.json:ro"
        in (services["minio-init"]["volumes"])
    )
    health = {
        n: " ".join(s["healthcheck"]["test"]) for n, s in services.items() if "healthcheck" in s
    }
    assert "5555/healthcheck" in health["flower"]


def test_compose_variables_are_settings_or_come_from_the_env_file() -> None:
    text = (ROOT / "compose.yaml").read_text()
    example = env_example()
    for var in set(re.findall(r"\$\{(\w+)\}", text)):
        assert var in example, f"compose.yaml uses ${{{var}}}, not in compose.env.example"
    for var in example:
        assert var in SETTINGS or var in OTHER_VARIABLES, var
    assert example["KILN_PROFILE"] == "prod"
    for svc in compose()["services"].values():
        for var in svc.get("environment", {}):
            assert (
                var in SETTINGS
                or var.startswith(("MINIO_", "KILN_S3_"))
                or (var in OTHER_VARIABLES)
            ), var


# -- Kubernetes ---------------------------------------------------------------------------
def k8s() -> list[dict]:
    return list(yaml.safe_load_all((DEPLOY / "kubernetes" / "kiln.yaml").read_text()))


def test_kubernetes_mounts_the_models_file_where_kiln_reads_it() -> None:
    docs = k8s()
    config = next(d for d in docs if d["metadata"]["name"] == "kiln-config")["data"]
    models = next(d for d in docs if d["metadata"]["name"] == "kiln-models")
    assert models["data"]["models.yaml"] == PRODUCTION_MODELS.read_text()
    path = Path(config["KILN_MODELS_FILE"])
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    for d in deployments:
        pod = d["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        (c,) = pod["containers"]
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert str(path.parent) in mounts, d["metadata"]["name"]
        source = volumes[mounts[str(path.parent)]]["configMap"]
        assert source["name"] == "kiln-models" and path.name in models["data"]
        if "worker" in c["command"] and c["command"][0] == "kiln":
            env = {e["name"]: e for e in c["env"]}
            hf_home = env["HF_HOME"]["value"]
            claim = volumes[mounts[hf_home]]["persistentVolumeClaim"]["claimName"]
            assert any(
                x["kind"] == "PersistentVolumeClaim" for x in docs if x["metadata"]["name"] == claim
            )
            token = env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert token["name"] == "kiln-secrets" and token["key"] == "HF_TOKEN"
            assert c["image"].endswith("kiln-worker:0.1.0")
        else:
            assert c["image"].endswith("kiln-api:0.1.0")


def test_kubernetes_scales_every_model_and_probes_real_endpoints() -> None:
    docs = k8s()
    config = next(d for d in docs if d["metadata"]["name"] == "kiln-config")["data"]
    scaled = {
        d["spec"]["triggers"][0]["metadata"]["listName"].removeprefix("gen."): d["spec"]
        for d in docs
        if d["kind"] == "ScaledObject"
    }
    assert set(scaled) == set(load_models(PRODUCTION_MODELS))  # KEDA per model queue
    required = config["KILN_REQUIRED_MODELS"].split(",")
    assert all(scaled[m]["minReplicaCount"] >= 1 for m in required)  # never asleep
    routes = app_routes()
    api = next(d for d in docs if d["metadata"]["name"] == "kiln-api")
    (c,) = api["spec"]["template"]["spec"]["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" in routes
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" in routes
    workers = [d for d in docs if d["kind"] == "Deployment" and "worker-" in d["metadata"]["name"]]
    assert len(workers) == len(scaled)
    for d in workers:
        (c,) = d["spec"]["template"]["spec"]["containers"]
        port = int(c["command"][c["command"].index("--metrics-port") + 1])
        for probe in ("startupProbe", "livenessProbe"):
            assert c[probe]["httpGet"] == {"path": "/metrics", "port": port}


# -- the bucket's lifecycle rule ------------------------------------------------------------
def test_the_lifecycle_rule_expires_images_with_their_job_records() -> None:
    rules = json.loads(LIFECYCLE.read_text())["Rules"]
    prefixes = {r["Filter"]["Prefix"]: r for r in rules}
    assert set(prefixes) == {"generated/", "inputs/"}
    for rule in rules:
        assert rule["Status"] == "Enabled"
        assert rule["Expiration"]["Days"] * 86400 == Settings().job_ttl_s
    from tasks.jobs.storage import image_key

    assert image_key("0" * 32, 0, "png").startswith("generated/")
    for where in ("compose.yaml", "deploy/kubernetes/kiln.yaml", "README.md"):
        assert "s3-lifecycle.json" in (ROOT / where).read_text(), where


@pytest.mark.parametrize("name", ["compose.yaml", "deploy/kubernetes/kiln.yaml"])
def test_recipes_parse_as_yaml(name: str) -> None:
    assert list(yaml.safe_load_all((ROOT / name).read_text()))


def test_readme_deploy_walks_to_a_running_compose_host() -> None:
    readme = (ROOT / "README.md").read_text()
    deploy = readme.split("\n## Deploy", 1)[1].split("\n## ", 1)[0]
    for needed in (
        "NVIDIA Container Toolkit",
        "cp deploy/compose.env.example .env",
        "docker compose up",
        "HF_TOKEN",
        "HF_HOME",
        "/readyz",
        "Flower",
        "s3-lifecycle.json",
    ):
        assert needed in deploy, needed
    for command in re.findall(r"^\s*(kiln [a-z-]+ [a-z-]+)", deploy, flags=re.M):
        assert shlex.split(command)[1] in {"keys", "config", "models", "worker", "flower"}


def test_every_program_the_recipes_run_is_installed_by_this_package() -> None:
    """``kiln`` is this package's console script; gunicorn and celery come with its
    requirements (the images and hosts install nothing else)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    scripts = dict(
        (part.strip() for part in line.split("=", 1))
        for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    )
    assert scripts["kiln"] == "app.cli:run"
    requires = {
        re.split(r"[\[~=<>! ]", line.strip(), maxsplit=1)[0]
        for line in cfg["options"]["install_requires"].strip().splitlines()
    }
    assert {"gunicorn", "celery", "flower"} <= requires


def test_the_worker_image_can_compile_and_takes_its_torch_build_as_an_argument() -> None:
    worker = stages()["worker"]
    runs = " ".join(rest for word, rest in worker if word == "RUN")
    for package in ("gcc", "python3-dev"):  # inductor and Triton build launchers at run time
        assert re.search(rf"apt-get install [^&]*\b{package}\b", runs), package
    assert ("ARG", "TORCH_CUDA") in worker
    assert "download.pytorch.org/whl/$TORCH_CUDA" in runs
    env = " ".join(rest for word, rest in worker if word == "ENV")
    assert "TORCHINDUCTOR_CACHE_DIR=/var/lib/kiln/inductor" in env


def test_every_recipe_keeps_the_inductor_cache_across_restarts() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert "inductor-cache:/var/lib/kiln/inductor" in compose["x-worker"]["volumes"]
    assert "inductor-cache" in compose["volumes"]
    docs = list(yaml.safe_load_all((ROOT / "deploy/kubernetes/kiln.yaml").read_text()))
    workers = [d for d in docs if d and d["metadata"]["name"].startswith("kiln-worker-")]
    workers = [d for d in workers if d["kind"] == "Deployment"]
    assert workers
    for d in workers:
        (container,) = d["spec"]["template"]["spec"]["containers"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/var/lib/kiln/inductor"]["name"] == "hf-cache", d["metadata"]["name"]
    unit = (ROOT / "deploy/systemd/kiln-worker@.service").read_text()
    assert "StateDirectory=kiln" in unit  # /var/lib/kiln: KILN_DATA_DIR, inductor/ inside
