"""The job schema and the model rules every door shares."""

import pytest

from config.errors import InvalidInput
from config.settings import DEFAULT_MODELS_FILE
from pipelines.registry import Registry
from tasks.jobs.schema import MAX_SEED, load_job

REG = Registry.from_file(DEFAULT_MODELS_FILE)


def load(**payload):
    return load_job(payload, REG)


def fields_of(**payload) -> dict:
    with pytest.raises(InvalidInput) as info:
        load(**payload)
    return info.value.fields


def test_defaults_come_from_the_model() -> None:
    p = load(prompt="a red fox", model="tiny-sd")
    assert (p["width"], p["height"], p["steps"]) == (64, 64, 8)
    assert p["scheduler"] == "dpmpp_2m"
    assert p["n"] == 1 and len(p["seeds"]) == 1


def test_seed_zero_is_a_seed_and_images_count_up() -> None:
    p = load(prompt="x", model="tiny-sd", seed=0, n=3)
    assert p["seeds"] == [0, 1, 2]
    assert load(prompt="x", model="tiny-sd", seed=2**32 - 1)["seeds"] == [2**32 - 1]


def test_random_seed_when_absent() -> None:
    seeds = {load(prompt="x", model="tiny-sd")["seed"] for _ in range(5)}
    assert len(seeds) > 1


def test_default_model_is_the_first() -> None:
    assert load(prompt="x")["model"] == "tiny-sd"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 2001}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "x", "model": "nope"}, "model"),
        ({"prompt": "x", "width": 65}, "width"),
        ({"prompt": "x", "height": 16}, "height"),
        ({"prompt": "x", "width": 4096}, "width"),
        ({"prompt": "x", "steps": 0}, "steps"),
        ({"prompt": "x", "steps": 151}, "steps"),
        ({"prompt": "x", "steps": "4"}, "steps"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "n": 9}, "n"),
        ({"prompt": "x", "seed": -1}, "seed"),
        ({"prompt": "x", "seed": MAX_SEED + 1}, "seed"),
        ({"prompt": "x", "seed": 1.5}, "seed"),
        ({"prompt": "x", "guidance_scale": 31}, "guidance_scale"),
        ({"prompt": "x", "scheduler": "warp"}, "scheduler"),
        ({"prompt": "x", "loras": [{"name": "nope"}]}, "loras"),
        ({"prompt": "x", "webhook_url": "ftp://x"}, "webhook_url"),
        ({"prompt": "x", "colour": "red"}, "colour"),
        ({"prompt": "x", "model": "flux-schnell", "negative_prompt": "blur"}, "negative_prompt"),
        ({"prompt": "x", "model": "flux-schnell", "width": 1000}, "width"),
        ({"prompt": "x", "model": "flux-schnell", "guidance_scale": 3.5}, "guidance_scale"),
    ],
)
def test_every_bound_names_its_field(payload: dict, field: str) -> None:
    assert field in fields_of(**payload)


def test_non_object_payload() -> None:
    with pytest.raises(InvalidInput):
        load_job(["a"], REG)


IMAGE = "data:image/png;base64,iVBORw0KGgo="


def test_an_image_makes_img2img_and_a_mask_inpainting_with_the_family_strength() -> None:
    p = load(prompt="x", model="tiny-sd", image=IMAGE)
    assert p["mode"] == "img2img" and p["strength"] == 0.75
    assert p["width"] is None and p["height"] is None  # the image gives the size
    p = load(prompt="x", model="sdxl", image={"job": "abc"}, mask=IMAGE, strength=0.3)
    assert p["mode"] == "inpaint" and p["strength"] == 0.3
    assert p["image"] == {"job": "abc", "index": 0}
    assert load(prompt="x", model="tiny-sd")["mode"] == "text"


def test_a_family_without_image_modes_names_the_image_field() -> None:
    from config.models import parse_model
    from pipelines.registry import Registry

    reg = Registry({"plain": parse_model({"name": "plain", "family": "generic", "source": "/x"})})
    with pytest.raises(InvalidInput) as info:
        load_job({"prompt": "x", "image": IMAGE}, reg)
    assert "image" in info.value.fields


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"mask": IMAGE}, "mask"),
        ({"strength": 0.5}, "strength"),
        ({"image": IMAGE, "strength": 0}, "strength"),
        ({"image": {"key": "inputs/a/image.png"}}, "image"),  # keys: the Celery door only
        ({"image": {"job": "../x"}}, "image"),
        ({"image": "ftp://x/y.png"}, "image"),
    ],
)
def test_bad_image_fields_are_named(payload: dict, field: str) -> None:
    assert field in fields_of(prompt="x", model="tiny-sd", **payload)


def test_the_celery_door_takes_bucket_keys_under_inputs_and_generated_only() -> None:
    ok = load_job(
        {"prompt": "x", "model": "tiny-sd", "image": {"key": "inputs/j1/image.png"}}, REG, task=True
    )
    assert ok["image"] == {"key": "inputs/j1/image.png"}
    with pytest.raises(InvalidInput) as info:
        load_job(
            {"prompt": "x", "model": "tiny-sd", "image": {"key": "secrets/x.png"}}, REG, task=True
        )
    assert "image" in info.value.fields
