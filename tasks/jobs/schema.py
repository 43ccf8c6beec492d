"""The job schema: one marshmallow schema for every front door and the Celery task.

Field checks live on the schema; checks that depend on the model (sizes, steps,
family rules, schedulers, LoRAs) are applied by :func:`validate_job` against the
registry. Both end in ``InvalidInput`` keyed by field name (``config.errors.invalid_input``),
which every door turns into its error shape (``422 {"error": {"code", "message",
"fields"}}`` on the native door).
"""

from __future__ import annotations

import secrets
from typing import Any

from marshmallow import (
    EXCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates_schema,
)

from config.errors import InvalidInput, invalid_input
from pipelines.batch import MAX_SEED
from pipelines.registry import Registry
from tasks.jobs.inputs import RULE as IMAGE_RULE
from tasks.jobs.inputs import ImageInput, image_mode
from tasks.jobs.records import JOB_ID, JOB_ID_RULE
from tasks.jobs.storage import CONTENT_TYPES

MAX_PROMPT = 2000
# Numeric bounds are the model's own (models.yaml ``limits``, shown by GET /v1/models):
# no door adds ranges of its own, so a bad value gets the same reason on every door.
PER_MODEL = "{} of the model (GET /v1/models)"


class LoraSchema(Schema):
    class Meta:
        unknown = RAISE

    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    weight = fields.Float(load_default=1.0, validate=validate.Range(min=-4, max=4), allow_nan=False)


class JobSchema(Schema):
    """A text-to-image job. Every field but ``prompt`` has a per-model default."""

    class Meta:
        unknown = RAISE
        ordered = True

    prompt = fields.String(
        required=True,
        validate=validate.Length(max=MAX_PROMPT),
        metadata={"example": "a red fox in the snow, golden hour"},
    )
    negative_prompt = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(max=MAX_PROMPT)
    )
    model = fields.String(
        load_default=None,
        validate=validate.Length(min=1, max=200),
        metadata={"example": "tiny-sd", "description": "See GET /v1/models; default: the first"},
    )
    width = fields.Integer(
        load_default=None,
        strict=True,
        metadata={"example": 64, "description": PER_MODEL.format("min_size to max_size")},
    )
    height = fields.Integer(
        load_default=None,
        strict=True,
        metadata={"example": 64, "description": PER_MODEL.format("min_size to max_size")},
    )
    steps = fields.Integer(
        load_default=None,
        strict=True,
        metadata={"example": 4, "description": PER_MODEL.format("1 to max_steps")},
    )
    guidance_scale = fields.Float(
        load_default=None,
        allow_nan=False,
        metadata={"description": PER_MODEL.format("limits.guidance_scale")},
    )
    scheduler = fields.String(load_default=None, validate=validate.Length(min=1, max=64))
    seed = fields.Integer(
        load_default=None,
        allow_none=True,
        strict=True,
        validate=validate.Range(min=0, max=MAX_SEED),
        metadata={"example": 0, "description": "image i gets seed + i; absent: random"},
    )
    n = fields.Integer(
        load_default=1,
        strict=True,
        metadata={"description": "number of images; " + PER_MODEL.format("1 to max_n")},
    )
    loras = fields.List(
        fields.Nested(LoraSchema), load_default=list, validate=validate.Length(max=16)
    )
    webhook_url = fields.Url(
        load_default=None, allow_none=True, schemes={"http", "https"}, require_tld=False
    )
    output_format = fields.String(
        load_default=None,
        validate=validate.OneOf(list(CONTENT_TYPES)),
        metadata={"example": "png", "description": "png (default) | jpeg | webp"},
    )
    output_compression = fields.Integer(
        load_default=None,
        allow_none=True,
        strict=True,
        validate=validate.Range(min=0, max=100),
        metadata={"description": "jpeg, webp: 100 (default) keeps most detail; lower: smaller"},
    )

    image = ImageInput(
        metadata={
            "description": f"init image (img2img, inpaint): {IMAGE_RULE}; sets the size "
            "(rounded down to the model's multiple) unless width/height are given"
        }
    )
    mask = ImageInput(
        metadata={"description": "inpaint mask, the image's size: white (or transparent) = redraw"}
    )
    strength = fields.Float(
        load_default=None,
        allow_nan=False,
        validate=validate.Range(min=0, max=1, min_inclusive=False),
        metadata={"description": "share of the image redrawn, (0, 1]; default per family"},
    )

    @validates_schema
    def _seed_range(self, data: dict[str, Any], **_: Any) -> None:
        seed, n = data.get("seed"), data.get("n") or 1
        if seed is not None and seed + n - 1 > MAX_SEED:
            raise ValidationError(f"seed + n - 1 must be <= {MAX_SEED}", "seed")


class JobTaskSchema(JobSchema):
    """What ``kiln.generate`` takes: the job schema plus the ids the API adds."""

    class Meta:
        unknown = EXCLUDE

    job_id = fields.String(
        load_default=None, validate=validate.Regexp(JOB_ID, error=f"must be {JOB_ID_RULE}")
    )
    seeds = fields.List(
        fields.Integer(validate=validate.Range(min=0, max=MAX_SEED)), load_default=None
    )
    owner = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))
    image = ImageInput(keys=True)
    mask = ImageInput(keys=True)


def size_errors(
    model: Any, width: int | None, height: int | None, n: int = 1
) -> dict[str, list[str]]:
    """The model's rules for a size (each side given: its multiple and bounds; both: the
    pixel budget of a batch of ``n``), by field name; empty when it meets them."""
    errors: dict[str, list[str]] = {}
    mult = model.family.size_multiple
    for name, value in (("width", width), ("height", height)):
        if value is None:
            continue
        if value % mult:
            errors.setdefault(name, []).append(f"must be a multiple of {mult}, got {value}")
        if not model.min_size <= value <= model.max_size:
            errors.setdefault(name, []).append(
                f"must be between {model.min_size} and {model.max_size} for {model.name}, "
                f"got {value}"
            )
    budget = model.spec.limits.max_pixels_per_batch
    if width and height and width * height * min(n, model.spec.max_batch) > budget:
        errors.setdefault("n", []).append(f"{n} images of {width}x{height} exceed {budget} pixels")
    return errors


def the_size(model: Any, data: dict[str, Any]) -> tuple[int | None, int | None]:
    """The size a job asks: the one it names or the model's default; with an image and
    no size, none yet (it comes from the image, ``Inputs.check``)."""
    width, height = data.get("width"), data.get("height")
    if image_mode(data) == "text" or (width is None) != (height is None):
        width = model.width if width is None else width
        height = model.height if height is None else height
    return width, height


def rule_errors(data: dict[str, Any], model: Any) -> dict[str, list[str]]:
    """Every rule of ``model`` that the fields present in ``data`` break, by field name:
    each rule applies to what was given (a field the schema refused is absent)."""
    fam, lim, name = model.family, model.spec.limits, model.name
    errors: dict[str, list[str]] = {}

    def err(field: str, msg: str) -> None:
        errors.setdefault(field, []).append(msg)

    mode = image_mode(data)
    prompt = data.get("prompt")
    if data.get("mask") is not None and data.get("image") is None:
        err("mask", "needs an image to go with it")
    if mode != "text" and mode not in fam.modes:
        err("image", f"{fam.name} models take no image ({mode}); {name} runs text only")
    if prompt is not None and not prompt and mode == "text":
        err("prompt", "must not be empty (only an image's variation may have no prompt)")
    if data.get("strength") is not None and mode == "text":
        err("strength", "applies only with an image")
    steps = model.steps if data.get("steps") is None else data["steps"]
    if not 1 <= steps <= model.max_steps:
        err("steps", f"must be between 1 and {model.max_steps} for {name}, got {steps}")
    if prompt is not None and len(prompt) > lim.max_prompt_chars:
        err("prompt", f"must be at most {lim.max_prompt_chars} characters for {name}")
    if data.get("negative_prompt") is not None and not fam.negative_prompt:
        err("negative_prompt", f"{fam.name} models take no negative prompt")
    guidance = data.get("guidance_scale")
    if guidance is not None and not fam.guidance:
        if guidance != model.guidance_scale:
            err("guidance_scale", f"{fam.name} uses a fixed guidance of {model.guidance_scale}")
    elif guidance is not None and not lim.min_guidance <= guidance <= lim.max_guidance:
        err(
            "guidance_scale",
            f"must be between {lim.min_guidance} and {lim.max_guidance} for {name}, got {guidance}",
        )
    scheduler = data.get("scheduler")
    if scheduler and scheduler not in model.schedulers:
        err("scheduler", f"unknown scheduler {scheduler!r}; choose from {list(model.schedulers)}")
    n = 1 if data.get("n") is None else data["n"]
    sized = size_errors(model, *the_size(model, data), n)
    if not 1 <= n <= lim.max_n:
        err("n", f"must be between 1 and {lim.max_n} for {name}, got {n}")
        sized.pop("n", None)  # one reason for n at a time
    for field_name, reasons in sized.items():
        errors.setdefault(field_name, []).extend(reasons)
    loras = data.get("loras") or []
    if len(loras) > lim.max_loras:
        err("loras", f"at most {lim.max_loras} LoRAs, got {len(loras)}")
    for lo in loras:
        if model.spec.lora(lo["name"]) is None:
            known = [x.name for x in model.spec.loras]
            err("loras", f"unknown LoRA {lo['name']!r} for {name}; available: {known}")
    if len({lo["name"] for lo in loras}) != len(loras):
        err("loras", "each LoRA may appear once")
    output_format = data.get("output_format") or "png"
    if data.get("output_compression") is not None and output_format == "png":
        err("output_compression", "applies to jpeg and webp only (png is lossless)")
    return errors


def model_for(data: dict[str, Any], registry: Registry) -> Any:
    """The model a job names (the registry's first when it names none)."""
    name = data.get("model") or next(iter(registry))
    if name not in registry:
        raise invalid_input(
            {"model": [f"unknown model {name!r}; available: {', '.join(registry)}"]}
        )
    return registry[name]


def validate_job(data: dict[str, Any], registry: Registry) -> dict[str, Any]:
    """Apply the model's rules and defaults to loaded job data; returns the job params."""
    model = model_for(data, registry)
    errors = rule_errors(data, model)
    if errors:
        raise invalid_input(errors)
    name, fam = model.name, model.family
    width, height = the_size(model, data)
    n = 1 if data.get("n") is None else data["n"]
    guidance = data.get("guidance_scale")
    mode = image_mode(data)
    seeds = data.get("seeds")
    if not seeds or len(seeds) != n:
        seed = data.get("seed")
        if seed is None:
            seed = secrets.randbelow(2**32 - n)
        seeds = [seed + i for i in range(n)]
    loras = data.get("loras") or []
    return {
        "prompt": data["prompt"],
        "negative_prompt": data.get("negative_prompt"),
        "model": name,
        "width": width,
        "height": height,
        "steps": model.steps if data.get("steps") is None else data["steps"],
        "guidance_scale": model.guidance_scale if guidance is None else float(guidance),
        "scheduler": data.get("scheduler") or model.scheduler,
        "n": n,
        "seed": seeds[0],
        "seeds": seeds,
        "loras": [{"name": lo["name"], "weight": float(lo["weight"])} for lo in loras],
        "webhook_url": data.get("webhook_url"),
        "output_format": data.get("output_format") or "png",
        "output_compression": data.get("output_compression"),
        "mode": mode,
        "strength": None if mode == "text" else data.get("strength") or fam.strength,
        "image": data.get("image"),
        "mask": data.get("mask"),
    }


def _with_model_rules(exc: ValidationError, registry: Registry) -> dict[str, Any]:
    """The schema's errors, plus the model's rules broken by the fields that did load,
    so one answer names every bad field (``n: 10**30`` beside a missing prompt)."""
    messages = dict(exc.messages) if isinstance(exc.messages, dict) else {"_schema": exc.messages}
    valid = dict(exc.valid_data or {}) if isinstance(exc.valid_data, dict) else {}
    try:
        more = rule_errors(valid, model_for(valid, registry))
    except InvalidInput as unknown:  # the model itself
        more = dict(unknown.fields)
    except Exception:  # a partial payload the rules cannot read: the schema's errors stand
        more = {}
    for name, reasons in more.items():
        messages.setdefault(name, reasons)
    return messages


def check_image_size(
    params: dict[str, Any], checked: dict[str, Any], registry: Registry
) -> dict[str, Any]:
    """The size an image set (``checked``, from ``Inputs.check`` of ``params``) meets the
    model's size rules as a size the caller named does. A size the image set and the
    rules refuse names ``image``."""
    given = {k for k in ("width", "height") if params.get(k) is not None}
    errors = size_errors(
        registry[checked["model"]], checked["width"], checked["height"], checked.get("n") or 1
    )
    if errors:
        raise invalid_input(
            {("image" if k in {"width", "height"} - given else k): v for k, v in errors.items()}
        )
    return checked


def load_job(payload: Any, registry: Registry, *, task: bool = False) -> dict[str, Any]:
    """Validate a raw payload (dict) into job params; raises ``InvalidInput``."""
    if not isinstance(payload, dict):
        raise invalid_input({"_schema": ["expected a JSON object"]})
    schema = JobTaskSchema() if task else JobSchema()
    try:
        data = schema.load(payload)
    except ValidationError as exc:
        raise invalid_input(_with_model_rules(exc, registry)) from None
    params = validate_job(data, registry)
    if task:
        if data.get("job_id"):
            params["job_id"] = data["job_id"]
        params["owner"] = data.get("owner")
    return params
