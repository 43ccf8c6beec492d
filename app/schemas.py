"""Response schemas (for the OpenAPI spec); request schemas live in ``tasks.jobs.schema``."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from tasks.jobs.schema import JobSchema  # noqa: F401  (re-exported: one schema for all doors)


class ImageSchema(Schema):
    url = fields.String(metadata={"description": "presigned or public URL of the image"})
    key = fields.String(metadata={"example": "generated/<job_id>/0.png"})
    seed = fields.Integer()
    width = fields.Integer()
    height = fields.Integer()
    format = fields.String(metadata={"enum": ["png", "jpeg", "webp"], "example": "png"})


class ApiErrorDetailSchema(Schema):
    code = fields.String()
    message = fields.String()
    fields_ = fields.Dict(data_key="fields", metadata={"description": "messages by field name"})


class ApiErrorSchema(Schema):
    error = fields.Nested(ApiErrorDetailSchema)


class ProgressSchema(Schema):
    step = fields.Integer()
    steps = fields.Integer()
    eta_s = fields.Float(
        allow_none=True, metadata={"description": "seconds left, from its step timings"}
    )


class JobViewSchema(Schema):
    id = fields.String()
    status = fields.String(
        metadata={"enum": ["queued", "running", "succeeded", "failed", "canceled"]}
    )
    model = fields.String()
    params = fields.Dict()
    seeds = fields.List(fields.Integer())
    created_at = fields.Float(allow_none=True)
    started_at = fields.Float(allow_none=True)
    completed_at = fields.Float(allow_none=True)
    progress = fields.Nested(ProgressSchema)
    images = fields.List(fields.Nested(ImageSchema))
    error = fields.Nested(ApiErrorDetailSchema, allow_none=True)
    attempts = fields.Integer()
    webhook = fields.Dict(allow_none=True)
    batch_id = fields.String(allow_none=True)
    batch_size = fields.Integer(allow_none=True)
    batches = fields.List(fields.Dict(), allow_none=True)
    run_s = fields.Float(allow_none=True, metadata={"description": "pipeline seconds"})
    upload_s = fields.Float(allow_none=True, metadata={"description": "encode + upload"})
    worker = fields.String(allow_none=True, metadata={"description": "the worker that ran it"})
    load_wait_s = fields.Float(
        allow_none=True,
        metadata={"description": "seconds it waited for its model to load (none: resident)"},
    )
    queue_position = fields.Integer(
        allow_none=True,
        metadata={"description": "while queued: 1 = next (jobs waiting in workers count)"},
    )
    eta_s = fields.Float(
        allow_none=True, metadata={"description": "seconds until done, queued or running"}
    )
    urls = fields.Dict(keys=fields.String(), values=fields.String())


class ModelSchema(Schema):
    id = fields.String()
    object = fields.String()
    owned_by = fields.String()
    family = fields.String()
    stand_in = fields.Boolean()
    description = fields.String(allow_none=True)
    dtype = fields.String(metadata={"description": "what the workers run (see dtype_source)"})
    dtype_source = fields.String(metadata={"enum": ["workers", "models.yaml"]})
    dtype_configured = fields.String()
    worker_dtypes = fields.Dict(keys=fields.String(), values=fields.Integer())
    defaults = fields.Dict()
    limits = fields.Dict()
    schedulers = fields.List(fields.String())
    negative_prompt = fields.Boolean()
    guidance = fields.Boolean()
    loras = fields.List(fields.String())
    max_batch = fields.Integer()
    queue = fields.String()
    workers = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        metadata={"description": "ready workers holding it, and workers that load it on demand"},
    )
    serving = fields.String(metadata={"enum": ["resident", "on_demand", "none"]})
    load_s = fields.Float(allow_none=True, metadata={"description": "last measured load"})


class ModelListSchema(Schema):
    object = fields.String()
    data = fields.List(fields.Nested(ModelSchema))


class HealthSchema(Schema):
    status = fields.String()
    checks = fields.Dict()


class CancelSchema(Schema):
    id = fields.String()
    status = fields.String(metadata={"enum": ["canceled", "canceling"]})
    was = fields.String(metadata={"enum": ["queued", "running"]})


class JobListQuerySchema(Schema):
    status = fields.String(
        validate=validate.OneOf(["queued", "running", "succeeded", "failed", "canceled"])
    )
    model = fields.String(validate=validate.Length(min=1, max=128))
    limit = fields.Integer(
        load_default=20,
        strict=False,
        validate=validate.Range(min=1, max=100),
        metadata={"description": "jobs per page, 1 to 100"},
    )
    after = fields.String(
        validate=validate.Length(min=1, max=64),
        metadata={"description": "the id of the last job of the page before"},
    )


class JobListSchema(Schema):
    object = fields.String(metadata={"example": "list"})
    data = fields.List(fields.Nested(JobViewSchema), metadata={"description": "newest first"})
    has_more = fields.Boolean()
    next_after = fields.String(
        allow_none=True, metadata={"description": "pass as `after` for the next page"}
    )
