"""Image inputs: img2img and inpainting on every family, seed-exact in batches, with the
pixels outside a mask kept exactly, on pipelines that share the loaded weights."""

from __future__ import annotations

import gc
import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from config.errors import InvalidInput
from pipelines.batch import Item, Params, run_batch
from pipelines.inputs import fit, mask_of, open_image

FAMILIES = ["tiny-sd", "sdxl", "flux-schnell"]


def image_params(loaded, mode: str, strength: float = 0.6) -> Params:
    m = loaded.model
    return Params(
        width=64,
        height=64,
        steps=4,
        guidance_scale=m.guidance_scale,
        scheduler=m.scheduler,
        mode=mode,
        strength=strength,
    )


def init_image() -> Image.Image:
    """A smooth picture with structure (gradients and a square), 64×64."""
    x = np.linspace(0, 255, 64, dtype=np.uint8)
    rgb = np.stack([np.tile(x, (64, 1)), np.tile(x[:, None], (1, 64)), np.full((64, 64), 90)], -1)
    rgb[20:40, 20:40] = (240, 30, 30)
    return Image.fromarray(rgb.astype(np.uint8))


def centre_mask() -> Image.Image:
    m = Image.new("L", (64, 64), 0)
    m.paste(255, (16, 16, 48, 48))
    return mask_of(m, 64, 64)


def items(mode: str, seeds: list[int]) -> list[Item]:
    mask = centre_mask() if mode == "inpaint" else None
    return [Item(f"a cat {s}", None, s, image=init_image(), mask=mask) for s in seeds]


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
@pytest.mark.parametrize("name", FAMILIES)
def test_an_image_request_is_seed_exact_alone_and_among_three_others(loaded_models, name, mode):
    loaded = loaded_models(name)
    params = image_params(loaded, mode)
    target, *others = items(mode, [5, 7, 9, 11])
    solo = np.asarray(run_batch(loaded, params, [target])[0]).astype(int)
    batch = run_batch(loaded, params, [others[0], target, *others[1:]])
    assert len(batch) == 4
    assert np.abs(np.asarray(batch[1]).astype(int) - solo).max() <= 1
    assert not np.array_equal(solo, np.asarray(init_image())), "the image was not redrawn"


@pytest.mark.parametrize("name", FAMILIES)
def test_inpainting_keeps_every_pixel_outside_the_mask(loaded_models, name):
    loaded = loaded_models(name)
    out = run_batch(loaded, image_params(loaded, "inpaint", 1.0), items("inpaint", [1, 2]))
    keep = np.asarray(centre_mask()) == 0
    original = np.asarray(init_image())
    for image in out:
        pixels = np.asarray(image)
        assert np.array_equal(pixels[keep], original[keep])
        assert not np.array_equal(pixels[~keep], original[~keep]), "the mask was not repainted"


@pytest.mark.parametrize("name", FAMILIES)
def test_derived_pipelines_share_the_loaded_weights(loaded_models, name):
    loaded = loaded_models(name)
    for mode in ("img2img", "inpaint"):
        derived = loaded.pipe_for(mode)
        assert type(derived).__name__ == loaded.model.family.mode_class(mode)
        for key, module in loaded.pipe.components.items():
            if hasattr(module, "parameters"):
                assert derived.components[key] is module, f"{mode} copied {key}"
        assert loaded.pipe_for(mode) is derived, "built twice"


def test_the_derived_pipeline_runs_the_scheduler_the_request_asked_for(loaded_models):
    loaded = loaded_models("tiny-sd")
    params = image_params(loaded, "img2img")
    for scheduler in ("euler", "ddim"):
        run_batch(
            loaded, Params(**{**params.__dict__, "scheduler": scheduler}), items("img2img", [1])
        )
        assert loaded.pipe_for("img2img").scheduler is loaded.pipe.scheduler
        assert loaded.scheduler_name == scheduler


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"image": None}, "image"),
        ({"mask": Image.new("L", (64, 64))}, "mask"),
        ({"image": init_image().resize((32, 32))}, "image"),
    ],
)
def test_bad_image_items_name_the_field(loaded_models, change, field):
    loaded = loaded_models("tiny-sd")
    item = Item("x", None, 1, **{"image": init_image(), **change})
    with pytest.raises(InvalidInput) as err:
        run_batch(loaded, image_params(loaded, "img2img"), [item])
    assert field in err.value.fields


def test_a_strength_out_of_range_is_refused(loaded_models):
    loaded = loaded_models("tiny-sd")
    with pytest.raises(InvalidInput) as err:
        run_batch(loaded, image_params(loaded, "img2img", 1.5), items("img2img", [1]))
    assert "strength" in err.value.fields


def png_declaring(width: int, height: int) -> bytes:
    """A real 1×1 PNG whose header is rewritten to declare ``width``×``height``."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def test_a_decompression_bomb_is_refused_from_its_header():
    bomb = png_declaring(100_000, 100_000)
    assert len(bomb) < 100
    with pytest.raises(InvalidInput) as err:
        open_image(bomb, field="image", max_pixels=2048 * 2048)
    assert "image" in err.value.fields


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"not an image at all", "not a PNG"), (b"GIF89a" + bytes(40), "not a PNG")],
)
def test_what_is_not_a_png_jpeg_or_webp_is_refused(data, reason):
    with pytest.raises(InvalidInput, match=reason):
        open_image(data, field="mask", max_pixels=10**6)


def test_a_gif_is_refused_by_name():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "GIF")
    with pytest.raises(InvalidInput, match="GIF"):
        open_image(buf.getvalue(), field="image", max_pixels=10**6)


def test_masks_mark_the_repaint_area_in_white_or_by_transparency():
    white = Image.new("L", (8, 8), 0)
    white.paste(255, (0, 0, 4, 8))
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 255))
    clear.paste((0, 0, 0, 0), (0, 0, 4, 8))
    for mask in (white, clear):
        m = np.asarray(mask_of(mask, 8, 8))
        assert (m[:, :4] == 255).all() and (m[:, 4:] == 0).all()


def test_fit_resizes_to_the_call_size_only_when_it_differs():
    image = init_image()
    assert fit(image, 64, 64).tobytes() == image.tobytes()
    assert fit(image, 32, 48).size == (32, 48)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_building_the_derived_pipelines_grows_memory_by_under_5_percent(tiny_models_dir):
    from harness.pipelines import model_with_lora
    from pipelines.loader import load_model

    loaded = load_model(model_with_lora("sdxl", tiny_models_dir), models_dir=tiny_models_dir)
    run_batch(
        loaded,
        Params(width=64, height=64, steps=2, guidance_scale=5.0, scheduler="euler"),
        [Item("x", None, 1)],
    )
    gc.collect()
    before = rss_bytes()
    for mode in ("img2img", "inpaint"):
        loaded.pipe_for(mode)
    gc.collect()
    grown = rss_bytes() - before
    weights = sum(
        p.numel() * p.element_size()
        for m in loaded.pipe.components.values()
        if hasattr(m, "parameters")
        for p in m.parameters()
    )
    mib = 2**20
    print(f"grew {grown / mib:.2f} MiB; process {before / mib:.0f}; weights {weights / mib:.1f}")
    assert grown < 0.05 * before, "the derived pipelines cost more than 5% of the worker"
    assert grown < weights / 2, "the derived pipelines copied weights"
