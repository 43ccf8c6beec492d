"""``POST /v1/images/edits``: OpenAI's image edits, served by Kiln's img2img and inpainting.

The official SDK sends a multipart form:

    client.images.edit(model="tiny-sd", image=open("cat.png", "rb"),
                       mask=open("mask.png", "rb"), prompt="a cat in a hat")

``image`` (PNG, JPEG or WebP) is required; ``mask`` is optional and follows OpenAI's
convention, a PNG whose transparent pixels mark what to redraw (a black-and-white mask
with white for "redraw" works too). Without a mask the whole image is redrawn
(img2img) with the model's default ``strength``. ``prompt``, ``model``, ``n``, ``size``,
``response_format``, ``output_format`` and ``user`` are OpenAI's; Kiln's extras
(``strength``, ``steps``, ``seed``, ``guidance_scale``, ``negative_prompt``,
``scheduler``) may ride along as form fields. The answer is the same as
``/v1/images/generations``, and so are the errors (400 naming ``param``).
"""

from __future__ import annotations

from typing import Any

from flask import request
from flask.views import MethodView

from app.forms import form_payload
from app.openai_api import (
    EXTRAS,
    OPENAI_FIELDS,
    ImagesRequestSchema,
    ImagesResponseSchema,
    OpenAIErrorSchema,
    answer,
    blp,
)
from config.errors import InvalidInput
from tasks.jobs.inputs import ImageInput

FILES = ("image", "mask")


class EditsRequestSchema(ImagesRequestSchema):
    """The edit form: the generation request plus the image, its mask and strength."""

    class Meta(ImagesRequestSchema.Meta):
        fields: tuple[str, ...] = (*OPENAI_FIELDS, "user", *FILES, "strength", *EXTRAS)

    error_messages = {
        "unknown": "unknown parameter; this endpoint takes "
        + ", ".join((*OPENAI_FIELDS, "user", *FILES, "strength", *EXTRAS))
    }

    image = ImageInput(required=True)
    mask = ImageInput()


def form_body(required: list[str], **properties: str) -> Any:
    """Documents a multipart form body (``binary``: a file part)."""
    props = {
        name: {"type": "string", "format": "binary"} if kind == "binary" else {"type": kind}
        for name, kind in properties.items()
    }
    schema = {"type": "object", "required": required, "properties": props}
    return blp.doc(
        requestBody={"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    )


def answers(view: Any) -> Any:
    """The answers of both image-input doors: images, or OpenAI-shaped errors."""
    for status, why in (
        (504, "Still running; code is the id"),
        (503, "Busy or broker unavailable"),
        (413, "Upload too large"),
        (400, "Invalid request"),
    ):
        view = blp.alt_response(status, schema=OpenAIErrorSchema, description=why)(view)
    return blp.response(200, ImagesResponseSchema)(view)


@blp.route("/edits")
class Edits(MethodView):
    @form_body(
        ["image", "prompt"],
        image="binary",
        mask="binary",
        prompt="string",
        model="string",
        n="integer",
        size="string",
        strength="number",
        response_format="string",
    )
    @answers
    def post(self) -> Any:
        """Edit an image: img2img, or inpainting with a mask (synchronous)

        A multipart form with image (and optional mask), prompt, model, n, size,
        response_format, output_format and strength.
        """
        return edit(EditsRequestSchema())


class VariationsRequestSchema(EditsRequestSchema):
    """A variation: the image redrawn at the family's strength, with no prompt or mask."""

    class Meta(EditsRequestSchema.Meta):
        fields = tuple(f for f in EditsRequestSchema.Meta.fields if f not in ("prompt", "mask"))

    error_messages = {"unknown": "unknown parameter; this endpoint takes " + ", ".join(Meta.fields)}


@blp.route("/variations")
class Variations(MethodView):
    @form_body(
        ["image"],
        image="binary",
        model="string",
        n="integer",
        size="string",
        response_format="string",
    )
    @answers
    def post(self) -> Any:
        """Variations of an image: img2img with no prompt (synchronous)

        A multipart form with image, model, n, size and response_format; every model
        whose family runs img2img takes it.
        """
        return edit(VariationsRequestSchema())


def edit(schema: EditsRequestSchema) -> Any:
    """Load the form, check its images, run the job and answer like a generation."""
    if request.mimetype != "multipart/form-data":
        raise InvalidInput(
            "send a multipart/form-data body with an image file part",
            fields={"image": ["missing: send multipart/form-data"]},
        )
    data = schema.load(form_payload(schema, request))
    data.setdefault("prompt", "")
    return answer(data)
