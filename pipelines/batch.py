"""One pipeline call for many images of one compatibility key.

Prompts, negative prompts and seeds may differ within a call; everything in
:class:`Params` must be equal. Each image has its own ``torch.Generator``, so an
image made in a batch is the image its seed makes alone. A model with batch buckets
(compiled graphs, one per bucket) has each call padded up to the next bucket with
copies of its last image, which are dropped from the result.

Image inputs run on pipelines derived from the loaded one (``LoadedModel.pipe_for``):
``img2img`` redraws each item's init image, ``inpaint`` only the white part of its mask,
and the pixels outside the mask are put back exactly. The mode and the strength are
part of :class:`Params`, so text and image requests never share a call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from config.errors import InvalidInput
from pipelines import compiling
from pipelines.registry import Model

MAX_SEED = 2**64 - 1


@dataclass(frozen=True, kw_only=True)
class Params:
    """Everything that must be equal within one pipeline call (hashable: the batch key)."""

    width: int
    height: int
    steps: int
    guidance_scale: float
    scheduler: str
    loras: tuple[tuple[str, float], ...] = ()
    mode: str = "text"  # "text", "img2img" or "inpaint" (families.MODES)
    strength: float = 1.0  # share of the init image redrawn (image modes only)


@dataclass(frozen=True)
class Item:
    """One image: its prompt, negative prompt (``None``: none) and seed; in the image
    modes, its init image (PIL, already ``width``×``height``) and inpaint mask (``L``)."""

    prompt: str
    negative_prompt: str | None
    seed: int
    image: Any = None
    mask: Any = None


def check_inputs(model: Model, params: Params, items: Sequence[Item]) -> None:
    """Raise ``InvalidInput`` naming the argument and the bad value."""
    fam = model.family
    for name in ("width", "height"):
        value = getattr(params, name)
        if value < fam.size_multiple or value % fam.size_multiple:
            raise InvalidInput(
                f"`{name}` must be a positive multiple of {fam.size_multiple}, got {value}",
                fields={name: [value]},
            )
    if params.steps < 1:
        raise InvalidInput(
            f"`steps` must be >= 1, got {params.steps}", fields={"steps": [params.steps]}
        )
    if params.mode not in fam.modes:
        raise InvalidInput(
            f"{fam.name} takes no `image` ({params.mode}); its modes: {', '.join(fam.modes)}",
            fields={"image": [params.mode]},
        )
    if params.mode != "text" and not 0 < params.strength <= 1:
        raise InvalidInput(
            f"`strength` must be in (0, 1], got {params.strength}",
            fields={"strength": [params.strength]},
        )
    if not items:
        raise InvalidInput("`items` is empty", fields={"items": []})
    for item in items:
        if not 0 <= item.seed <= MAX_SEED:
            raise InvalidInput(
                f"`seed` must be in [0, 2**64-1], got {item.seed}", fields={"seed": [item.seed]}
            )
        if item.negative_prompt is not None and not fam.negative_prompt:
            raise InvalidInput(
                f"{fam.name} takes no `negative_prompt`, got {item.negative_prompt!r}",
                fields={"negative_prompt": ["-"]},
            )
        _check_images(params, item)


def _check_images(params: Params, item: Item) -> None:
    size = (params.width, params.height)
    wanted = {"text": (), "img2img": ("image",), "inpaint": ("image", "mask")}[params.mode]
    for name in ("image", "mask"):
        value = getattr(item, name)
        if (value is not None) != (name in wanted):
            raise InvalidInput(
                f"`{name}` is {'missing' if value is None else 'not taken'} in {params.mode} mode",
                fields={name: [params.mode]},
            )
        if value is not None and value.size != size:
            raise InvalidInput(
                f"`{name}` is {value.size[0]}x{value.size[1]}, the call is {size[0]}x{size[1]}",
                fields={name: [list(value.size)]},
            )


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``n`` images (``n`` itself past the last or none)."""
    return next((b for b in buckets if b >= n), n)


def pad_to_bucket(items: Sequence[Item], buckets: Sequence[int]) -> list[Item]:
    """``items`` and copies of the last one, up to :func:`bucket_for` of their count."""
    items = list(items)
    return items + [items[-1]] * (bucket_for(len(items), buckets) - len(items))


def run_batch(
    loaded: Any,
    params: Params,
    items: Sequence[Item],
    *,
    on_step: Callable[[int], bool | None] | None = None,
) -> list[Any]:
    """Generate one PIL image per item in ONE pipeline call.

    ``on_step(step)`` is called after each denoising step (1-based); returning True
    stops the remaining steps, raising aborts the call.
    """
    import torch

    model: Model = loaded.model
    # 1. Check inputs, and pad the batch up to the model's bucket (none: as it is).
    check_inputs(model, params, items)
    wanted = len(items)
    items = pad_to_bucket(items, model.spec.buckets)

    # 2. Scheduler and LoRA set for this key (no-ops when already set), and the
    #    pipeline for the mode (text: the loaded one; else derived, sharing weights).
    loaded.set_scheduler(params.scheduler)
    loaded.set_loras(params.loras)
    pipe = loaded.pipe_for(params.mode)

    # 3. One generator per image, on the pipeline's device.
    generators = [torch.Generator(loaded.device).manual_seed(it.seed) for it in items]

    # 4. Step callback: progress, cancellation.
    def callback(p: Any, step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if on_step is not None and on_step(step + 1):
            p._interrupt = True
        return kwargs

    # 5. Family-specific inputs.
    kwargs: dict[str, Any] = dict(
        num_inference_steps=params.steps,
        width=params.width,
        height=params.height,
        generator=generators,
        output_type="pil",
        callback_on_step_end=callback,
    )
    fam = model.family.name
    with torch.inference_mode():
        if fam == "sdxl":
            kwargs.update(_sdxl_embeddings(loaded, params, items))
        elif fam.startswith("flux"):
            kwargs["prompt"] = [it.prompt for it in items]
            limit = model.family.max_sequence_length or 512
            kwargs["max_sequence_length"] = min(limit, pipe.tokenizer_2.model_max_length)
            kwargs["guidance_scale"] = params.guidance_scale
        else:
            kwargs["prompt"] = [it.prompt for it in items]
            kwargs["negative_prompt"] = [it.negative_prompt or "" for it in items]
            kwargs["guidance_scale"] = params.guidance_scale
        kwargs.update(_image_inputs(params, items))
        if params.mode == "img2img" and not model.family.name.startswith("flux"):
            del kwargs["width"], kwargs["height"]  # SD and SDXL take the init image's size

        # 6. Denoise and decode (a compiled model: only with the graphs warm-up made);
        #    the padding's images are dropped.
        compiled = loaded.compiled if model.spec.compile else None
        with compiling.serving(model, compiled, params):
            out = pipe(**kwargs)
    images = list(out.images)[:wanted]

    # 7. Inpainting: the pixels outside each mask are the init image's, exactly.
    if params.mode == "inpaint":
        from pipelines.inputs import keep_outside

        images = [
            keep_outside(im, it.image, it.mask) for im, it in zip(images, items, strict=False)
        ]
    return images


def _image_inputs(params: Params, items: Sequence[Item]) -> dict[str, Any]:
    """The init images, masks and strength of an image-mode call."""
    if params.mode == "text":
        return {}
    out: dict[str, Any] = {"image": [it.image for it in items], "strength": params.strength}
    if params.mode == "inpaint":
        out["mask_image"] = [it.mask for it in items]
    return out


def _sdxl_embeddings(loaded: Any, params: Params, items: Sequence[Item]) -> dict[str, Any]:
    """Encode each request alone and concatenate: a missing negative prompt stays zeros."""
    import torch

    cfg = params.guidance_scale > 1.0
    parts: list[tuple[Any, Any, Any, Any]] = [
        loaded.pipe.encode_prompt(
            prompt=it.prompt,
            device=loaded.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=cfg,
            negative_prompt=it.negative_prompt,
        )
        for it in items
    ]
    pe, npe, ppe, nppe = (list(x) for x in zip(*parts, strict=True))
    out: dict[str, Any] = {
        "prompt_embeds": torch.cat(pe),
        "pooled_prompt_embeds": torch.cat(ppe),
        "guidance_scale": params.guidance_scale,
    }
    if cfg:
        out["negative_prompt_embeds"] = torch.cat(npe)
        out["negative_pooled_prompt_embeds"] = torch.cat(nppe)
    return out
