"""GPU serving options as model options, tested where a CPU can: parsing, buckets and
their padding, fused QKV, random-weight architectures, compiled graphs per bucket."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from config.models import ModelConfigError, parse_model
from harness.pipelines import REGISTRY
from pipelines.batch import Item, Params, bucket_for, pad_to_bucket, run_batch
from pipelines.compiling import compiled_graphs
from pipelines.compiling import options as compile_options
from pipelines.loader import load_model, set_torch_threads, warm_up
from pipelines.registry import resolve

BASE = {"name": "m", "family": "sdxl", "source": "x"}


def test_options_parse_with_their_defaults() -> None:
    spec = parse_model(BASE)
    assert spec.attention == "sdpa" and spec.tf32 and not spec.fuse_qkv
    assert (spec.compile_mode, spec.compile_backend) == ("default", "inductor")
    assert spec.compile_regional and spec.compile_sizes == ()
    assert spec.buckets == ()  # no padding unless compiled or asked
    spec = parse_model({**BASE, "compile": True, "compile_mode": "reduce-overhead"})
    assert spec.buckets == (1, 2, 4) and spec.compile_mode == "reduce-overhead"  # max_batch 4
    spec = parse_model({**BASE, "compile": True, "max_batch": 6})
    assert spec.buckets == (1, 2, 4, 6)
    spec = parse_model({**BASE, "batch_buckets": [2, 8], "max_batch": 8, "fuse_qkv": True})
    assert spec.buckets == (2, 8) and spec.fuse_qkv


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"compile_mode": "fast"}, "compile_mode"),
        ({"compile_backend": "tensorrt"}, "compile_backend"),
        ({"batch_buckets": [4, 2], "max_batch": 4}, "batch_buckets"),
        ({"batch_buckets": [1, 2], "max_batch": 4}, "batch_buckets"),
        ({"batch_buckets": [0, 4]}, "batch_buckets"),
        ({"batch_buckets": "1,2,4"}, "batch_buckets"),
        ({"compile_sizes": [512, 512]}, "compile_sizes"),
        ({"compile_sizes": [[512, 0]]}, "compile_sizes"),
        ({"fuse_qkv": True, "loras": [{"name": "s", "source": "/x"}]}, "fuse_qkv"),
    ],
)
def test_bad_options_name_the_field(extra: dict, match: str) -> None:
    with pytest.raises(ModelConfigError, match=match):
        parse_model({**BASE, **extra})


def test_random_init_needs_no_source() -> None:
    spec = parse_model({"name": "m", "family": "sdxl", "random_init": "sdxl-smoke"})
    assert spec.random_init == "sdxl-smoke" and spec.stand_in


def test_buckets_pad_with_copies_of_the_last_item() -> None:
    items = [Item(f"p{i}", None, i) for i in range(3)]
    assert [bucket_for(n, (1, 2, 4, 8)) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 9]
    assert pad_to_bucket(items, (1, 2, 4, 8)) == [*items, items[-1]]
    assert pad_to_bucket(items, ()) == items


def test_compile_options_follow_the_entry() -> None:
    model = resolve(replace(REGISTRY["sdxl"].spec, compile=True, compile_mode="max-autotune"))
    assert compile_options(model, "cuda:0") == {
        "fullgraph": False,
        "backend": "inductor",
        "mode": "max-autotune",
        "dynamic": False,  # one static graph per bucket
    }
    assert compile_options(model, "cpu")["mode"] == "default"
    eager = resolve(replace(model.spec, compile_backend="eager"))
    assert "mode" not in compile_options(eager, "cpu")


def images_of(loaded, seeds: list[int]) -> list[np.ndarray]:
    params = Params(width=64, height=64, steps=2, guidance_scale=7.5, scheduler="")
    items = [Item("a red fox", None, s) for s in seeds]
    return [np.asarray(im, dtype=np.int16) for im in run_batch(loaded, params, items)]


def test_padded_batches_give_each_seed_its_own_image(loaded_models) -> None:
    loaded = loaded_models("tiny-sd")
    plain = images_of(loaded, [5, 6, 7])
    padded = replace(loaded, model=resolve(replace(loaded.model.spec, batch_buckets=(4, 8))))
    got = images_of(padded, [5, 6, 7])
    assert len(got) == 3  # the padding's image is dropped
    for a, b in zip(plain, got, strict=True):  # same seed, same image (±1 level: kernels)
        assert np.abs(a - b).max() <= 1
    assert np.abs(got[0] - got[1]).max() > 10  # and each seed its own


def test_fused_qkv_gives_the_same_images(tiny_models_dir: Path) -> None:
    model = resolve(replace(REGISTRY["sdxl"].spec, loras=(), dtype="fp32"))
    plain = load_model(model, models_dir=tiny_models_dir, device="cpu")
    fused = load_model(
        resolve(replace(model.spec, fuse_qkv=True)), models_dir=tiny_models_dir, device="cpu"
    )
    attn = next(m for n, m in fused.pipe.unet.named_modules() if n.endswith("attn1"))
    assert getattr(attn, "fused_projections", False)
    for a, b in zip(images_of(plain, [3]), images_of(fused, [3]), strict=True):
        assert np.abs(a - b).max() <= 1


@pytest.mark.parametrize("family", ["sdxl", "flux-schnell"])
def test_random_init_builds_on_the_device_and_generates(family: str, tmp_path: Path) -> None:
    spec = replace(REGISTRY[family].spec, tiny=None, loras=(), random_init=f"{family}-smoke")
    loaded = load_model(resolve(spec), models_dir=tmp_path, device="cpu")
    assert not any(tmp_path.iterdir())  # nothing written: built in memory
    denoiser = loaded.denoiser
    assert {p.device.type for p in denoiser.parameters()} == {"cpu"}
    size = 64
    params = Params(
        width=size, height=size, steps=2, guidance_scale=loaded.model.guidance_scale, scheduler=""
    )
    (image,) = run_batch(loaded, params, [Item("a red fox", None, 1)])
    assert image.size == (size, size)


def test_random_init_refuses_another_family(tmp_path: Path) -> None:
    spec = replace(REGISTRY["sdxl"].spec, tiny=None, loras=(), random_init="flux-schnell-smoke")
    with pytest.raises(ValueError, match="family"):
        load_model(resolve(spec), models_dir=tmp_path, device="cpu")


def test_compiled_buckets_are_made_at_warm_up_and_reused(tmp_path: Path) -> None:
    """Warm-up compiles one graph per bucket; batches of 1 to max_batch then add none."""
    spec = replace(
        REGISTRY["flux-schnell"].spec,
        tiny=None,
        loras=(),
        random_init="flux-schnell-smoke",
        compile=True,
        compile_backend="eager",  # dynamo's graphs without inductor's minutes of codegen
        max_batch=2,
        defaults=replace(REGISTRY["flux-schnell"].spec.defaults, width=64, height=64),
    )
    loaded = load_model(resolve(spec), models_dir=tmp_path, device="cpu")
    before = compiled_graphs()
    warm_up(loaded)
    after_warm_up = compiled_graphs()
    assert after_warm_up > before
    params = Params(width=64, height=64, steps=1, guidance_scale=0.0, scheduler="")
    for n in (2, 1, 2):
        run_batch(loaded, params, [Item("x", None, i) for i in range(n)])
    assert compiled_graphs() == after_warm_up


def test_torch_threads_setting_sets_the_intra_op_threads() -> None:
    before = torch.get_num_threads()
    try:
        set_torch_threads(2)
        assert torch.get_num_threads() == 2
        set_torch_threads(0)  # 0: leave torch's choice alone
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
