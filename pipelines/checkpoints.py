"""Single-file checkpoints: what a ``.safetensors`` file in its family's original layout
(A1111, ComfyUI, Civitai, Black Forest Labs) holds, read from its header alone.

Torch-free: ``kiln models add`` and the API use it without loading a tensor. The keys
tell the families apart (the same marks diffusers' ``single_file_utils`` checks):

- SDXL: the second text encoder, OpenCLIP, under ``conditioner.embedders.1.model.``
  (or the UNet's added embedding ``model.diffusion_model.label_emb.``);
- SD 1.5: the CLIP text encoder under ``cond_stage_model.transformer.`` (SD 2.x keeps
  an OpenCLIP one under ``cond_stage_model.model.``: a family Kiln does not serve);
- Flux: the transformer's ``double_blocks.`` (bare, as Black Forest Labs ships it, or
  under ``model.diffusion_model.``); a guidance embedding ``guidance_in.`` marks dev.

A pickle (``.ckpt``, ``.pt``, ``.bin``) is refused: loading one runs whatever code it
holds. :data:`CONVERT_HINT` is the one line that turns one into safetensors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from config.errors import CheckpointError
from config.models import ModelSpec

SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
# The first bytes of a pickle: protocol 2+ opcode, or the zip archive of torch.save.
PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")
CONVERT_HINT = (
    'python -c "import sys, torch, safetensors.torch as st; sd = torch.load(sys.argv[1], '
    "weights_only=True); sd = sd.get('state_dict', sd); st.save_file({k: v.contiguous() "
    'for k, v in sd.items() if isinstance(v, torch.Tensor)}, sys.argv[2])" IN.ckpt OUT.safetensors'
)
# What a file's keys are, by family kind; a model entry's family belongs to one kind.
KINDS = {"sd15": "sd15", "sdxl": "sdxl", "flux-schnell": "flux", "flux-dev": "flux"}
UNET = "model.diffusion_model."
# The parts of a pipeline a file of each kind may hold, by the key prefix of each
# (Flux files from Black Forest Labs hold the transformer only, its keys bare).
PARTS: dict[str, dict[str, tuple[str, ...]]] = {
    "sd15": {
        "unet": (UNET,),
        "vae": ("first_stage_model.",),
        "text_encoder": ("cond_stage_model.transformer.",),
    },
    "sdxl": {
        "unet": (UNET,),
        "vae": ("first_stage_model.",),
        "text_encoder": ("conditioner.embedders.0.transformer.",),
        "text_encoder_2": ("conditioner.embedders.1.model.",),
    },
    "flux": {
        "transformer": (UNET + "double_blocks.", "double_blocks."),
        "vae": ("vae.",),
        "text_encoder": ("text_encoders.clip_l.transformer.",),
        "text_encoder_2": ("text_encoders.t5xxl.transformer.",),
    },
}


@dataclass(frozen=True)
class Checkpoint:
    """A single-file checkpoint's header: its tensor names, and what they make it."""

    path: Path
    keys: frozenset[str]
    size: int  # bytes on disk

    @property
    def family(self) -> str | None:
        """``sd15``, ``sdxl``, ``flux-schnell`` or ``flux-dev``; None when unknown."""
        return detect_family(self.keys)

    @property
    def kind(self) -> str | None:
        family = self.family
        return KINDS.get(family) if family else None

    def parts(self) -> tuple[str, ...]:
        """The pipeline components this file holds (``unet``, ``vae``, ...)."""
        kind = self.kind
        if kind is None:
            return ()
        return tuple(
            part
            for part, prefixes in PARTS[kind].items()
            if any(k.startswith(prefixes) for k in self.keys)
        )


def _has(keys: Iterable[str], *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in keys)


def detect_family(keys: Iterable[str]) -> str | None:
    """The Kiln family of an original-layout state dict's key names, or None."""
    keys = list(keys)
    if _has(keys, "double_blocks.", UNET + "double_blocks."):
        return "flux-dev" if _has(keys, "guidance_in.", UNET + "guidance_in.") else "flux-schnell"
    if _has(keys, "conditioner.embedders.1.", UNET + "label_emb."):
        return "sdxl"
    if _has(keys, "cond_stage_model.model."):
        return None  # SD 2.x (OpenCLIP text encoder)
    if _has(keys, "cond_stage_model.transformer.", UNET + "input_blocks."):
        return "sd15"
    return None


def is_single_file(source: str) -> bool:
    """Whether a model source names one file (a checkpoint) rather than a folder or hub id."""
    return source.lower().endswith((SUFFIX, *PICKLE_SUFFIXES))


def refuse_pickle(path: Path) -> None:
    """A pickle, by name or by its first bytes, is refused with the way to convert it."""
    head = b""
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError:
        pass
    if path.suffix.lower() in PICKLE_SUFFIXES or head.startswith(PICKLE_MAGIC):
        raise CheckpointError(
            f"{path}: a pickle checkpoint ({path.suffix or 'pickle bytes'}): loading one runs "
            f"any code it holds, so Kiln loads only .safetensors; convert it once, where you "
            f"trust it: {CONVERT_HINT}"
        )


def read_checkpoint(path: Path | str) -> Checkpoint:
    """The header of a ``.safetensors`` file (no tensor is read), or a ``CheckpointError``
    that names the file: missing, a pickle, not safetensors."""
    from safetensors import SafetensorError, safe_open

    path = Path(path).expanduser()
    if path.is_dir():
        raise CheckpointError(
            f"{path}: a folder, not a checkpoint file; a diffusers folder is a models.yaml "
            "entry's source as it is"
        )
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    refuse_pickle(path)
    if path.suffix.lower() != SUFFIX:
        raise CheckpointError(f"{path}: a single-file checkpoint must be a {SUFFIX} file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            keys = frozenset(f.keys())
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    return Checkpoint(path=path, keys=keys, size=path.stat().st_size)


def check_checkpoint(path: Path | str, family: str | None = None) -> Checkpoint:
    """Read the file and check that its keys are of ``family`` (when given); a file of
    no known family, or of another one, is a ``CheckpointError`` naming both."""
    ckpt = read_checkpoint(path)
    found = ckpt.family
    if found is None:
        raise CheckpointError(
            f"{ckpt.path}: its keys are of no family Kiln serves from one file "
            f"({', '.join(KINDS)}); an SD 2.x, SD3 or other checkpoint needs a diffusers folder"
        )
    if family is None:
        return ckpt
    if family not in KINDS:
        raise CheckpointError(
            f"{ckpt.path}: family {family!r} is not served from one file; "
            f"single-file families: {', '.join(KINDS)}"
        )
    if found != family:
        raise CheckpointError(
            f"{ckpt.path}: family {family} was given, but the file's keys are {found} "
            f"({_mark(found)})"
        )
    if KINDS[family] not in PARTS or not ckpt.parts():
        raise CheckpointError(f"{ckpt.path}: holds no {family} weights")
    return ckpt


def _mark(family: str) -> str:
    return {
        "sdxl": "it has conditioner.embedders.1 / label_emb, SDXL's",
        "sd15": "it has cond_stage_model.transformer, SD 1.5's",
        "flux-dev": "it has double_blocks and a guidance_in embedding, FLUX.1-dev's",
        "flux-schnell": "it has double_blocks and no guidance_in, FLUX.1-schnell's",
    }[family]


def disk_bytes(path: Path) -> int | None:
    """Bytes of a file, or of every file under a folder; None when not on this disk."""
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return None


def weights_path(spec: ModelSpec, models_dir: Path) -> Path | None:
    """Where on this disk an entry's weights are: its tiny stand-in's folder, or its
    source (``{models_dir}`` filled in; a hub id names no local path that exists); None
    for random weights, built on the device."""
    if spec.random_init:
        return None
    if spec.tiny:
        return Path(models_dir) / spec.tiny
    return Path(spec.source.replace("{models_dir}", str(models_dir))).expanduser()
