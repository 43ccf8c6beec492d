"""Every front door against the real stack: OpenAI SDK, classic API, Celery, client, CLI."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from openai import OpenAI
from PIL import Image

from app.client import Kiln, image_field
from app.client import KilnError as KilnClientError
from harness.http import KilnHTTP, fetch_image
from harness.stack import Stack, wait_for


def test_openai_sdk_with_url(stack: Stack) -> None:
    client = OpenAI(base_url=f"{stack.api_url}/v1", api_key="kiln")
    resp = client.images.generate(
        model="tiny-sd", prompt="a red fox", size="64x64", n=2, extra_body={"seed": 7, "steps": 4}
    )
    assert len(resp.data) == 2
    assert fetch_image(resp.data[0].url).size == (64, 64)
    assert resp.data[0].revised_prompt == "a red fox"


def test_openai_sdk_with_b64_json(stack: Stack) -> None:
    client = OpenAI(base_url=f"{stack.api_url}/v1", api_key="kiln")
    resp = client.images.generate(
        model="tiny-sd",
        prompt="a red fox",
        size="64x64",
        response_format="b64_json",
        extra_body={"steps": 4},
    )
    image = Image.open(io.BytesIO(base64.b64decode(resp.data[0].b64_json)))
    assert image.size == (64, 64)


def test_openai_sdk_extra_body_gets_exactly_that(stack: Stack) -> None:
    client = OpenAI(base_url=f"{stack.api_url}/v1", api_key="kiln")
    resp = client.images.generate(
        model="tiny-sd",
        prompt="a red fox",
        response_format="b64_json",
        extra_body={"scheduler": "euler", "width": 128, "steps": 2, "seed": 11},
    )
    image = Image.open(io.BytesIO(base64.b64decode(resp.data[0].b64_json)))
    assert image.size == (128, 64)  # width asked, the model's default height
    meta = json.loads(image.text["kiln"])  # what the worker really ran
    assert meta["scheduler"] == "euler" and meta["width"] == 128 and meta["height"] == 64
    assert meta["steps"] == 2 and meta["seed"] == 11


def test_openai_sdk_invented_field_is_a_400_naming_it(stack: Stack) -> None:
    client = OpenAI(base_url=f"{stack.api_url}/v1", api_key="kiln", max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        client.images.generate(
            model="tiny-sd", prompt="a red fox", extra_body={"sharpness": 3, "steps": 2}
        )
    err = bad.value.body
    assert isinstance(err, dict), err
    assert err["param"] == "sharpness" and err["type"] == "invalid_request_error"
    assert "sharpness" in str(bad.value) and "unknown parameter" in err["message"]
    with pytest.raises(openai.BadRequestError) as steps:
        client.images.generate(model="tiny-sd", prompt="a red fox", extra_body={"steps": 999})
    assert steps.value.body["param"] == "steps"  # type: ignore[index]
    assert "must be between 1 and 150 for tiny-sd, got 999" in str(steps.value)


def test_openai_sdk_models_retrieve(stack: Stack) -> None:
    client = OpenAI(base_url=f"{stack.api_url}/v1", api_key="kiln", max_retries=0)
    model = client.models.retrieve("tiny-sd")
    assert model.id == "tiny-sd"
    extra = model.model_dump()
    # The stack's worker runs on the CPU: fp32, whatever models.yaml asks (fp16).
    assert (extra["dtype"], extra["dtype_source"], extra["dtype_configured"]) == (
        "fp32",
        "workers",
        "fp16",
    )
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("dall-e-3")
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_a_202_carries_no_retry_after(api: KilnHTTP) -> None:
    r = api.post("/v1/jobs", json={"prompt": "a fox", "model": "tiny-sd", "steps": 2})
    assert r.status_code == 202 and r.json()["status"] == "queued"
    assert "Retry-After" not in r.headers
    assert "X-RateLimit-Limit" in r.headers  # the limiter still says where the key stands
    assert api.wait(r.json()["id"])["status"] == "succeeded"


def test_openai_errors_have_the_openai_shape(api: KilnHTTP) -> None:
    r = api.post(
        "/v1/images/generations", json={"prompt": "x", "model": "tiny-sd", "size": "63x64"}
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "size"
    r = api.post("/v1/images/generations", json={"model": "tiny-sd"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def test_openai_times_out_with_the_job_id(stack: Stack) -> None:
    slow = KilnHTTP(stack.start_api(env={"KILN_SYNC_TIMEOUT_S": "0.5"}))
    # No worker serves sd15 in this stack: the job waits in its queue.
    r = slow.post("/v1/images/generations", json={"prompt": "x", "model": "sd15", "size": "64x64"})
    assert r.status_code == 504
    job_id = r.json()["error"]["code"]
    assert slow.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    assert slow.delete(f"/v1/jobs/{job_id}").status_code == 200


def test_openai_door_over_its_cap_answers_503_and_healthz_stays_fast(stack: Stack) -> None:
    """Two synchronous waits fill a cap of two on a 4-thread API process."""
    import redis
    import requests

    from tasks.jobs.bookkeeping import queued_key

    env = {"KILN_SYNC_MAX_WAITS": "2", "KILN_KEY_SLOT_SHARE": "1", "KILN_SYNC_TIMEOUT_S": "60"}
    url = stack.start_api(threads=4, env=env)
    door = f"{url}/v1/images/generations"
    body = {"prompt": "held", "model": "sd15", "size": "64x64"}  # no sd15 worker: it waits
    r = redis.Redis.from_url(stack.env["KILN_REDIS_URL"], decode_responses=True)
    before = set(r.zrange(queued_key("sd15"), 0, -1))

    def waiting() -> set[str]:
        return set(r.zrange(queued_key("sd15"), 0, -1)) - before

    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(requests.post, door, json=body, timeout=90) for _ in range(2)]
        try:
            wait_for(lambda: len(waiting()) == 2, timeout=30, what="two synchronous waits")
            over = requests.post(door, json=body, timeout=10)
            assert over.status_code == 503 and int(over.headers["Retry-After"]) > 0
            assert over.json()["error"]["code"] == "too_many_waits"
            assert len(waiting()) == 2  # refused before any job was made
            assert requests.get(f"{url}/healthz", timeout=2).ok
        finally:
            for job_id in waiting():
                requests.delete(f"{url}/v1/jobs/{job_id}", timeout=10)
        assert [f.result().status_code for f in held] == [500, 500]  # canceled: they end
    assert requests.post(door, json={**body, "model": "tiny-sd"}, timeout=60).ok  # slots back


def test_classic_api(api: KilnHTTP) -> None:
    r = api.post(
        "/generate",
        json={
            "prompt": "a red fox",
            "model": "tiny-sd",
            "width": 64,
            "height": 64,
            "steps": 10,
            "guidance_scale": 7,
            "seed": 1,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "queued" and body["job_id"]
    job = api.wait(body["job_id"])
    assert job["status"] == "succeeded"
    classic = api.get(f"/job/{body['job_id']}").json()
    assert classic["status"] == "completed"
    assert fetch_image(classic["image_url"]).size == (64, 64)
    assert classic["created_at"] and classic["completed_at"]
    for bad in (
        {"prompt": "x", "model": "tiny-sd", "steps": 500},  # the model's limits, as on /v1/jobs
        {"prompt": "x", "model": "tiny-sd", "guidance_scale": 35},
        {"prompt": "x", "model": "sdxl", "width": 4096},
    ):
        r = api.post("/generate", json=bad)
        assert r.status_code == 422, bad
        assert r.json() == api.post("/v1/jobs", json=bad).json()
    health = api.get("/health").json()
    assert health["status"] == "healthy" and health["workers"] >= 1


@pytest.fixture(scope="session")
def celery_only_python() -> Path:
    """A venv with only celery and redis (and packaging, which kombu 5.7 imports), at the
    versions Kiln runs: built once, then kept in ~/.cache/kiln-tests for later runs."""
    from importlib.metadata import version

    pins = [f"{name}=={version(name)}" for name in ("celery", "kombu", "redis", "packaging")]
    venv = Path.home() / ".cache" / "kiln-tests" / ("celery-only-" + "-".join(pins))
    python = venv / "bin" / "python"
    if not (venv / "ready").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *pins], check=True, timeout=300)
        (venv / "ready").touch()
    return python


def test_celery_task_api_from_a_process_without_kiln(
    stack: Stack, api: KilnHTTP, celery_only_python: Path
) -> None:
    code = textwrap.dedent(f"""
        import json, sys
        from celery import Celery
        try:
            import app, tasks  # noqa: F401
            sys.exit("kiln is importable here")
        except ImportError:
            pass
        broker = "{stack.env["KILN_BROKER_URL"]}"
        client = Celery(broker=broker, backend=broker)
        res = client.send_task("kiln.generate",
                               kwargs={{"prompt": "a red fox", "model": "tiny-sd", "steps": 4,
                                        "seed": 5}},
                               queue="gen.tiny-sd")
        print(json.dumps(res.get(timeout=120)))
    """)
    out = subprocess.run(
        [str(celery_only_python), "-c", code], capture_output=True, text=True, timeout=180, cwd="/"
    )
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout.strip().splitlines()[-1])
    assert record["status"] == "succeeded" and record["seeds"] == [5]
    assert api.get(f"/v1/jobs/{record['id']}").json()["status"] == "succeeded"


def test_celery_helper_for_kiln_installs(stack: Stack, api: KilnHTTP) -> None:
    from tasks.jobs.celery_door import send_generate
    from tasks.messaging.app import make_celery

    app = make_celery(stack.settings)
    res = send_generate(app=app, prompt="a red fox", model="tiny-sd", steps=4, seed=2)
    record = res.get(timeout=120)
    assert record["status"] == "succeeded" and record["id"] == res.id
    # The result names images by key; the API signs a URL when asked.
    assert record["images"][0]["key"] == f"generated/{res.id}/0.png"
    assert "X-Amz-Signature" not in json.dumps(record)
    signed = api.get(f"/v1/jobs/{res.id}").json()["images"][0]["url"]
    assert "X-Amz-Signature" in signed


def test_client_reports_increasing_progress(stack: Stack) -> None:
    seen: list[tuple[int, int]] = []
    result = Kiln(stack.api_url).generate(
        "a red fox", model="tiny-sd", steps=12, seed=3, on_progress=lambda s, n: seen.append((s, n))
    )
    assert result.seeds == [3] and result.images[0][:4] == b"\x89PNG"
    steps = [s for s, _ in seen]
    assert steps and steps == sorted(steps) and seen[-1] == (12, 12)


class NoEventStream(Kiln):
    """A client whose event stream URL the server does not know (a real 404)."""

    def events(self, job_id: str):  # type: ignore[override]
        return super().events(f"{job_id}/missing")


def test_client_polls_when_there_is_no_event_stream(stack: Stack) -> None:
    kiln = NoEventStream(stack.api_url)
    with pytest.raises(KilnClientError) as err:
        next(iter(kiln.events("x")))
    assert err.value.status == 404
    seen: list[tuple[int, int]] = []
    result = kiln.generate(
        "a red fox", model="tiny-sd", steps=12, seed=4, on_progress=lambda s, n: seen.append((s, n))
    )
    assert result.seeds == [4] and result.images[0][:4] == b"\x89PNG"
    steps = [s for s, _ in seen]
    assert steps == sorted(set(steps)) and seen[-1] == (12, 12)


def test_cli_writes_pngs(stack: Stack, tmp_path: Path) -> None:
    out = stack.run_kiln(
        *("generate", "a red fox", "--model", "tiny-sd", "-n", "2", "--seed", "7"),
        *("--steps", "4", "--out", str(tmp_path), "--url", stack.api_url),
    )
    assert out.returncode == 0, out.stderr
    pngs = sorted(tmp_path.glob("*.png"))
    assert [p.name.rsplit("-", 1)[1] for p in pngs] == ["7.png", "8.png"]
    assert "seed 7" in out.stdout and "step" in out.stderr  # the progress bar
    job_id = pngs[0].name.rsplit("-", 1)[0]
    show = stack.run_kiln("jobs", "show", job_id, "--url", stack.api_url)
    assert '"succeeded"' in show.stdout
    cancel = stack.run_kiln("jobs", "cancel", job_id, "--url", stack.api_url)
    assert cancel.returncode != 0 and "409" in cancel.stderr


def test_docs_and_openapi(api: KilnHTTP) -> None:
    spec = api.get("/openapi.json").json()
    for path in (
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/images/generations",
        "/generate",
        "/job/{job_id}",
        "/health",
        "/v1/models",
    ):
        assert path in spec["paths"], path
    page = api.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert api.get("/docs/assets/swagger-ui-bundle.js").status_code == 200


def test_client_takes_image_bytes_a_pil_mask_and_job_references(stack: Stack) -> None:
    kiln = Kiln(stack.api_url)
    buf = io.BytesIO()
    Image.radial_gradient("L").resize((64, 48)).convert("RGB").save(buf, "JPEG")
    first = kiln.generate(
        "a red fox", model="tiny-sd", steps=3, seed=6, image=buf.getvalue(), strength=0.5
    )
    p = first.job["params"]
    assert (p["mode"], p["strength"], p["image"]["source"]) == ("img2img", 0.5, "data_url")
    assert p["image"]["sha256"] == hashlib.sha256(buf.getvalue()).hexdigest()
    assert Image.open(io.BytesIO(first.images[0])).size == (64, 48)

    mask = Image.new("L", (64, 48), 0)
    mask.paste(255, (16, 16, 48, 32))
    second = kiln.generate(
        "a window", model="tiny-sd", steps=3, seed=6, image=f"job:{first.job['id']}:0", mask=mask
    )
    p = second.job["params"]
    assert (p["mode"], p["image"]["source"]) == ("inpaint", "job")
    assert p["image"]["job"] == first.job["id"]
    ref = {"job": second.job["id"], "index": 0}
    third = kiln.wait(kiln.submit("again", model="tiny-sd", steps=3, image=ref)["id"])
    assert third["status"] == "succeeded" and third["params"]["image"]["job"] == second.job["id"]
    with pytest.raises(KilnClientError) as err:
        kiln.submit("x", model="tiny-sd", image="job:nosuchjob")
    assert err.value.status == 404 and "image" in err.value.fields
    with pytest.raises(ValueError, match="not a PNG, JPEG or WebP"):
        image_field(b"GIF89a...")
