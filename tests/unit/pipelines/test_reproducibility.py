"""Seed-exact batching: an image made in a batch is the image its seed makes alone.

CPU, fp32. Batched runs are exactly equal whatever the order or batch size (>= 2);
batch of 1 vs a batch may differ by one 8-bit level (another CPU kernel for batch 1).
"""

import numpy as np
import pytest

from pipelines.batch import Item, Params, run_batch

TARGET = Item("a red fox in the snow", "blurry", 42)
OTHERS = [
    Item("a lighthouse at night", None, 7),
    Item("a bowl of ramen", "text, watermark", 0),
    Item("an astronaut riding a horse", None, 2**32 - 1),
    Item("a red fox in the snow", None, 43),
    Item("isometric city", "low quality", 12345),
]


def params_for(loaded) -> Params:
    m = loaded.model
    return Params(
        width=64, height=64, steps=3, guidance_scale=m.guidance_scale, scheduler=m.scheduler
    )


def no_negative(loaded, items):
    if loaded.model.family.negative_prompt:
        return items
    return [Item(i.prompt, None, i.seed) for i in items]


@pytest.mark.parametrize("name", ["tiny-sd", "sdxl", "flux-schnell"])
def test_batched_image_matches_its_solo_run(loaded_models, name: str) -> None:
    loaded = loaded_models(name)
    params = params_for(loaded)
    target, *others = no_negative(loaded, [TARGET, *OTHERS])

    solo = np.asarray(run_batch(loaded, params, [target])[0]).astype(int)
    batch_a = run_batch(loaded, params, [target, *others])  # target first, batch of 6
    batch_b = run_batch(loaded, params, [*others[:3], target])  # target last, batch of 4
    a = np.asarray(batch_a[0]).astype(int)
    b = np.asarray(batch_b[3]).astype(int)

    assert np.array_equal(a, b), "batched runs differ with order or size"
    assert np.abs(a - solo).max() <= 1, "batch of 1 vs batch differs by more than 1 level"
    # Batch-mates are reproducible too.
    assert np.array_equal(np.asarray(batch_a[1]), np.asarray(batch_b[0]))


@pytest.mark.parametrize("name", ["tiny-sd", "sdxl"])
def test_missing_negative_prompt_is_not_the_empty_string_trap(loaded_models, name) -> None:
    """SDXL zeroes a missing negative prompt; mixing must not change anyone's image."""
    loaded = loaded_models(name)
    params = params_for(loaded)
    none_neg = Item("a red fox", None, 5)
    with_neg = Item("a red fox", "ugly", 6)
    mixed = run_batch(loaded, params, [none_neg, with_neg])
    alone = run_batch(loaded, params, [none_neg, Item("x", None, 1)])
    assert np.array_equal(np.asarray(mixed[0]), np.asarray(alone[0]))


def test_extreme_seeds_are_honoured(loaded_models) -> None:
    loaded = loaded_models("tiny-sd")
    params = params_for(loaded)
    lo, hi = Item("a kite", None, 0), Item("a kite", None, 2**32 - 1)
    first = [np.asarray(im) for im in run_batch(loaded, params, [lo, hi])]
    second = [np.asarray(im) for im in run_batch(loaded, params, [hi, lo])]
    assert not np.array_equal(first[0], first[1])
    assert np.array_equal(first[0], second[1]) and np.array_equal(first[1], second[0])
