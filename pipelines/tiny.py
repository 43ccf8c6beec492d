"""Tiny random-weight pipelines of the real architectures, built offline.

``kiln models make-tiny DIR`` writes one folder per recipe with ``save_pretrained``;
the loader opens them with ``from_pretrained`` like any local model. They make noise,
fast, with no hub: tokenizers come from an in-memory vocabulary, weights from a fixed seed.

- ``sd-mini``: SD 1.5 architecture at 64×64 scale (VAE scale factor 2): fastest.
- ``sd15``, ``sdxl``, ``flux``: stand-ins that keep the real VAE scale factor of 8,
  so production request sizes work (attention only at the lowest resolution).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("kiln.pipelines")

RECIPES = ("sd-mini", "sd15", "sdxl", "flux")
SEED = 0
CLIP: dict[str, Any] = dict(
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
    hidden_size=32,
    intermediate_size=37,
    num_attention_heads=4,
    num_hidden_layers=2,
    vocab_size=1000,  # >= the 514 ids of clip_tokenizer()
    projection_dim=32,
    max_position_embeddings=77,
)
SD_SCHEDULER: dict[str, Any] = dict(
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    timestep_spacing="leading",
    steps_offset=1,
)
_SEEDED = threading.Lock()  # the seed is process-global: one seeded build at a time
FLUX_LATENT_CHANNELS = 16  # as the real Flux VAE; packed 2×2 → transformer in_channels 64
# SDXL's second text encoder is wider than its first (as OpenCLIP-G is than CLIP-L):
# single-file loaders tell the two apart in a checkpoint by that width.
CLIP_2: dict[str, Any] = {**CLIP, "hidden_size": 48}


def clip_tokenizer() -> Any:
    """Byte-level CLIP tokenizer, 514 ids, never ``<unk>``."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>", *alphabet, *(c + "</w>" for c in alphabet)]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)


def t5_tokenizer() -> Any:
    """Unigram T5 tokenizer, 46 ids."""
    from transformers import T5TokenizerFast  # type: ignore[attr-defined]

    chars = "▁abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *((c, -1.0) for c in chars)]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)


def _vae(*, factor8: bool, latent_channels: int = 4, **extra: Any) -> Any:
    from diffusers import AutoencoderKL

    blocks = [8, 16, 32, 32] if factor8 else [32, 64]  # scale factor 2 ** (len - 1)
    return AutoencoderKL(
        latent_channels=latent_channels,
        block_out_channels=blocks,
        layers_per_block=1,
        norm_num_groups=8 if factor8 else 32,
        down_block_types=["DownEncoderBlock2D"] * len(blocks),
        up_block_types=["UpDecoderBlock2D"] * len(blocks),
        sample_size=1024 if factor8 else 64,
        **extra,
    )


def _unet(*, factor8: bool, sample_size: int = 64, **extra: Any) -> Any:
    """SD-style UNet, attention only at the lowest level; default size = 8 × sample_size."""
    from diffusers import UNet2DConditionModel

    down = ("DownBlock2D",) * (2 if factor8 else 1) + ("CrossAttnDownBlock2D",)
    return UNet2DConditionModel(
        sample_size=sample_size if factor8 else 32,
        layers_per_block=1,
        block_out_channels=(16, 32, 64) if factor8 else (32, 64),
        norm_num_groups=8 if factor8 else 32,
        down_block_types=down,
        up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (len(down) - 1),
        **extra,
    )


def _sdxl_unet() -> Any:
    return _unet(
        factor8=True,
        sample_size=128,
        attention_head_dim=(2, 4, 8),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1, 2),
        projection_class_embeddings_input_dim=6 * 8 + CLIP["projection_dim"],
        cross_attention_dim=CLIP["hidden_size"] + CLIP_2["hidden_size"],  # both, concatenated
    )


def _flux_transformer() -> Any:
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * FLUX_LATENT_CHANNELS,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # = T5 d_model
        pooled_projection_dim=CLIP["hidden_size"],
        guidance_embeds=False,  # schnell
        axes_dims_rope=[4, 6, 6],  # sums to the head dim; even each
    )


DENOISERS: dict[str, Callable[[], Any]] = {
    "sd-mini": lambda: _unet(factor8=False, attention_head_dim=8, cross_attention_dim=32),
    "sd15": lambda: _unet(factor8=True, attention_head_dim=8, cross_attention_dim=32),
    "sdxl": _sdxl_unet,
    "flux": _flux_transformer,
}
PIPELINES = {
    "sd-mini": "StableDiffusionPipeline",
    "sd15": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "flux": "FluxPipeline",
}


def build(recipe: str) -> Any:
    """The recipe's pipeline, in memory, with weights from the current torch seed."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel

    cls = getattr(diffusers, PIPELINES[recipe])
    denoiser = DENOISERS[recipe]()
    text = CLIPTextModel(CLIPTextConfig(**CLIP))
    if recipe in ("sd-mini", "sd15"):
        return cls(
            unet=denoiser,
            vae=_vae(factor8=recipe == "sd15"),
            text_encoder=text,
            tokenizer=clip_tokenizer(),
            scheduler=diffusers.EulerDiscreteScheduler(**SD_SCHEDULER),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    if recipe == "sdxl":
        from transformers import CLIPTextModelWithProjection

        return cls(
            unet=denoiser,
            vae=_vae(factor8=True, scaling_factor=0.13025),
            text_encoder=text,
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_2)),
            tokenizer=clip_tokenizer(),
            tokenizer_2=clip_tokenizer(),
            scheduler=diffusers.EulerDiscreteScheduler(**SD_SCHEDULER),
        )
    from transformers import T5Config, T5EncoderModel

    # vocab_size >= the 46 ids of t5_tokenizer(); d_model = the transformer's joint_attention_dim
    t5: dict[str, Any] = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4)
    vae = _vae(
        factor8=True,
        latent_channels=FLUX_LATENT_CHANNELS,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1159,
        scaling_factor=0.3611,
    )
    return cls(
        transformer=denoiser,
        vae=vae,
        text_encoder=text,
        tokenizer=clip_tokenizer(),
        text_encoder_2=T5EncoderModel(T5Config(relative_attention_num_buckets=8, **t5)),
        tokenizer_2=t5_tokenizer(),
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
    )


def _check(recipe: str) -> None:
    if recipe not in RECIPES:
        raise ValueError(f"unknown tiny recipe {recipe!r}; choose from {', '.join(RECIPES)}")


def make_tiny(recipe: str, out_dir: Path, *, overwrite: bool = False) -> Path:
    """Write the tiny pipeline ``recipe`` to ``out_dir`` (same weights every time).

    Skipped when ``out_dir/model_index.json`` exists (unless ``overwrite``). Built in
    a temporary folder beside ``out_dir`` and renamed into place, so a half-written
    folder never looks complete, and two processes racing both end with one good copy.
    """
    import torch

    _check(recipe)
    out_dir = Path(out_dir)
    if (out_dir / "model_index.json").exists() and not overwrite:
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        with _SEEDED, torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            pipe = build(recipe)
        pipe.save_pretrained(tmp)
        _move_into_place(tmp, out_dir, overwrite=overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("tiny %s pipeline at %s", recipe, out_dir)
    return out_dir


def _move_into_place(tmp: Path, out_dir: Path, *, overwrite: bool) -> None:
    old = tmp.with_name(f"{tmp.name}-old")
    if overwrite or not (out_dir / "model_index.json").exists():
        with contextlib.suppress(FileNotFoundError):  # a folder to replace, or a partial one
            os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)  # atomic
    except OSError:  # another process won the race: keep its identical copy
        if not (out_dir / "model_index.json").exists():
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def make_tiny_lora(recipe: str, out_dir: Path, *, name: str = "style") -> Path:
    """Write ``<out_dir>/<name>.safetensors``: a tiny random LoRA for the recipe's denoiser.

    Attention projections (``to_q/to_k/to_v/to_out.0``), rank 4, non-zero ``lora_B``,
    so it visibly changes the image. Written under a temporary name and renamed.
    """
    import diffusers
    import torch
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    _check(recipe)
    out_dir = Path(out_dir)
    target = out_dir / f"{name}.safetensors"
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out_dir))
    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    lora = LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=targets)
    try:
        with _SEEDED, torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED + 1)
            denoiser = DENOISERS[recipe]()
            denoiser.add_adapter(lora)
            with torch.no_grad():
                for pname, p in denoiser.named_parameters():
                    if "lora_B" in pname:  # peft starts them at zero: a no-op LoRA
                        p.normal_(0.0, 0.5)
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(denoiser))
        key = "transformer_lora_layers" if recipe == "flux" else "unet_lora_layers"
        cls = getattr(diffusers, PIPELINES[recipe])
        cls.save_lora_weights(tmp, weight_name=f"{name}.safetensors", **{key: layers})
        os.replace(tmp / f"{name}.safetensors", target)  # atomic; identical if raced
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# The stand-ins written as single-file checkpoints too (``make-tiny --single-file``):
# recipe → file name. sd15, not sd-mini: the stand-in with the real VAE scale factor.
CHECKPOINTS = {"sd15": "sd15", "sdxl": "sdxl", "flux": "flux"}


def make_checkpoint(recipe: str, models_dir: Path) -> Path:
    """``<models_dir>/checkpoints/<recipe>.safetensors``: the stand-in of ``recipe`` in
    its family's original layout (LDM, or BFL + ComfyUI for Flux), its folder as the
    ``config``. Skipped when the file exists."""
    from pipelines.original_layout import write_checkpoint

    if recipe not in CHECKPOINTS:
        raise ValueError(
            f"no single-file stand-in for {recipe!r}; choose from {', '.join(CHECKPOINTS)}"
        )
    models_dir = Path(models_dir)
    out = models_dir / "checkpoints" / f"{CHECKPOINTS[recipe]}.safetensors"
    if out.exists():
        return out
    folder = make_tiny(recipe, models_dir / recipe)
    return write_checkpoint(folder, recipe, out)


def make_all(models_dir: Path) -> dict[str, Path]:
    """Every recipe to ``models_dir/<recipe>`` (keys: recipes) and a LoRA each to
    ``models_dir/loras/<recipe>/style.safetensors`` (keys: ``lora:<recipe>``)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    models_dir = Path(models_dir)
    out = {r: make_tiny(r, models_dir / r) for r in RECIPES}
    for r in RECIPES:
        out[f"lora:{r}"] = make_tiny_lora(r, models_dir / "loras" / r)
    return out
