"""A prompt goes from REST through gen.tiny-sd to a PNG in S3, and back by URL."""

from __future__ import annotations

import boto3
import numpy as np

from harness.http import KilnHTTP, fetch_image
from harness.stack import Stack


def s3_client(stack: Stack):
    env = stack.env
    return boto3.client(
        "s3",
        endpoint_url=env["KILN_S3_ENDPOINT_URL"],
        aws_access_key_id=env["KILN_S3_ACCESS_KEY"],
        aws_secret_access_key=env["KILN_S3_SECRET_KEY"],
        region_name="us-east-1",
    )


def test_job_goes_from_rest_to_a_png_in_s3(api: KilnHTTP, stack: Stack) -> None:
    job = api.submit(prompt="a red fox", model="tiny-sd", width=64, height=64, steps=4, seed=0)
    assert job["status"] == "queued"
    assert job["seeds"] == [0]

    done = api.wait(job["id"])
    assert done["status"] == "succeeded", done
    image = done["images"][0]
    assert image["key"] == f"generated/{job['id']}/0.png"
    assert image["seed"] == 0

    png = fetch_image(image["url"])
    assert png.size == (64, 64)
    assert "a red fox" in png.text["parameters"]

    head = s3_client(stack).head_object(Bucket=stack.env["KILN_S3_BUCKET"], Key=image["key"])
    assert head["ContentLength"] > 0


def test_same_seed_gives_same_pixels(api: KilnHTTP) -> None:
    job = dict(prompt="a lighthouse", model="tiny-sd", width=64, height=64, steps=4, seed=1234)
    a, b = api.run(**job), api.run(**job)
    pa = np.asarray(fetch_image(a["images"][0]["url"]))
    pb = np.asarray(fetch_image(b["images"][0]["url"]))
    assert np.array_equal(pa, pb)
    c = api.run(**{**job, "seed": 1235})
    assert not np.array_equal(pa, np.asarray(fetch_image(c["images"][0]["url"])))


def test_random_seed_is_drawn_and_returned(api: KilnHTTP) -> None:
    done = api.run(prompt="a kite", model="tiny-sd", steps=2, n=2)
    assert done["status"] == "succeeded"
    seeds = done["seeds"]
    assert len(seeds) == 2 and seeds[1] == seeds[0] + 1
    assert [im["seed"] for im in done["images"]] == seeds


def test_invalid_input_is_a_422_naming_the_field(api: KilnHTTP) -> None:
    r = api.post("/v1/jobs", json={"prompt": "x", "model": "tiny-sd", "width": 65})
    assert r.status_code == 422
    assert "width" in r.json()["error"]["fields"]
    r = api.post("/v1/jobs", json={"prompt": "x", "model": "no-such-model"})
    assert r.status_code == 422 and "model" in r.json()["error"]["fields"]


def test_unknown_job_is_a_404(api: KilnHTTP) -> None:
    r = api.get("/v1/jobs/does-not-exist")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


def test_models_and_health(api: KilnHTTP) -> None:
    models = api.get("/v1/models").json()["data"]
    assert {m["id"] for m in models} >= {"tiny-sd", "sd15", "sdxl", "flux-schnell"}
    assert all(m["stand_in"] for m in models)
    assert api.get("/healthz").json()["status"] == "ok"
