"""Family rules: what each diffusers architecture takes, and its defaults.

Torch-free on purpose: the API validates requests against these rules without
loading torch. The worker uses the same rules to build each pipeline call.
"""

from __future__ import annotations

from dataclasses import dataclass

from config.errors import UnknownFamily

# Request-facing scheduler names → diffusers scheduler class and extra config.
SCHEDULERS: dict[str, tuple[str, dict[str, object]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
    ),
    "unipc": ("UniPCMultistepScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", {}),
}
UNET_SCHEDULERS = ("dpmpp_2m", "dpmpp_2m_karras", "euler", "euler_a", "ddim", "unipc", "pndm")
FLOW_SCHEDULERS = ("flow_euler",)

# What a request asks of the pipeline: text alone, or an init image to redraw (img2img),
# or an init image and a mask whose white part is redrawn (inpaint).
MODES = ("text", "img2img", "inpaint")


@dataclass(frozen=True, kw_only=True)
class Family:
    name: str
    pipeline_class: str
    size_multiple: int
    width: int
    height: int
    steps: int
    guidance_scale: float
    scheduler: str
    schedulers: tuple[str, ...]
    min_size: int = 64
    max_size: int = 2048
    max_steps: int = 150
    negative_prompt: bool = True
    guidance: bool = True  # False: guidance is fixed (schnell) and requests may not set it
    max_sequence_length: int | None = None
    text_encoders: int = 1
    # Image inputs: the diffusers classes built from the loaded pipeline with
    # ``from_pipe`` (same components, no second copy of the weights); "" = not offered.
    img2img_class: str = ""
    inpaint_class: str = ""
    strength: float = 0.75  # how much of an init image is redrawn, when a request omits it

    @property
    def modes(self) -> tuple[str, ...]:
        """The request modes this family runs: ``text`` and those with a class."""
        derived = {"img2img": self.img2img_class, "inpaint": self.inpaint_class}
        return ("text", *(m for m, cls in derived.items() if cls))

    def mode_class(self, mode: str) -> str:
        """The pipeline class for ``mode`` (``text``: the family's own)."""
        classes = {
            "text": self.pipeline_class,
            "img2img": self.img2img_class,
            "inpaint": self.inpaint_class,
        }
        return classes.get(mode, "")


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            name="sd15",
            pipeline_class="StableDiffusionPipeline",
            img2img_class="StableDiffusionImg2ImgPipeline",
            inpaint_class="StableDiffusionInpaintPipeline",
            size_multiple=8,
            width=512,
            height=512,
            steps=30,
            guidance_scale=7.5,
            scheduler="dpmpp_2m",
            schedulers=UNET_SCHEDULERS,
        ),
        Family(
            name="sdxl",
            pipeline_class="StableDiffusionXLPipeline",
            img2img_class="StableDiffusionXLImg2ImgPipeline",
            inpaint_class="StableDiffusionXLInpaintPipeline",
            strength=0.5,
            size_multiple=8,
            width=1024,
            height=1024,
            steps=30,
            guidance_scale=5.0,
            scheduler="euler",
            schedulers=UNET_SCHEDULERS,
            text_encoders=2,
        ),
        Family(
            name="flux-schnell",
            pipeline_class="FluxPipeline",
            img2img_class="FluxImg2ImgPipeline",
            inpaint_class="FluxInpaintPipeline",
            strength=0.85,
            size_multiple=16,
            width=1024,
            height=1024,
            steps=4,
            guidance_scale=0.0,
            scheduler="flow_euler",
            schedulers=FLOW_SCHEDULERS,
            max_steps=50,
            negative_prompt=False,
            guidance=False,
            max_sequence_length=256,
            text_encoders=2,
        ),
        Family(
            name="flux-dev",
            pipeline_class="FluxPipeline",
            img2img_class="FluxImg2ImgPipeline",
            inpaint_class="FluxInpaintPipeline",
            strength=0.85,
            size_multiple=16,
            width=1024,
            height=1024,
            steps=28,
            guidance_scale=3.5,
            scheduler="flow_euler",
            schedulers=FLOW_SCHEDULERS,
            negative_prompt=False,
            max_sequence_length=512,
            text_encoders=2,
        ),
        Family(
            name="generic",
            pipeline_class="DiffusionPipeline",
            size_multiple=8,
            width=512,
            height=512,
            steps=30,
            guidance_scale=7.5,
            scheduler="",
            schedulers=(),
        ),
    )
}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise UnknownFamily(
            f"unknown family {name!r}; known: {', '.join(sorted(FAMILIES))}"
        ) from None
