"""Tiny random-weight pipelines of the real architectures, built offline.

``kiln models make-tiny DIR`` writes one folder per recipe with ``save_pretrained``;
the loader opens them with ``from_pretrained`` like any local model. They make
noise, fast, and need no hub: the tokenizers are written from an in-memory
vocabulary.

- ``sd-mini``: SD 1.5 architecture at 64×64 scale (VAE scale factor 2): fastest.
- ``sd15``, ``sdxl``, ``flux``: stand-ins that keep the real VAE scale factor of 8,
  so production request sizes work (attention only at the lowest resolution).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("kiln.pipelines")

RECIPES = ("sd-mini", "sd15", "sdxl", "flux")
CLIP: dict[str, Any] = dict(
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
    hidden_size=32,
    intermediate_size=37,
    num_attention_heads=4,
    num_hidden_layers=2,
    vocab_size=1000,
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


def clip_tokenizer() -> Any:
    """Byte-level CLIP tokenizer, 514 ids, never ``<unk>``."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>", *alphabet, *(c + "</w>" for c in alphabet)]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)


def t5_tokenizer() -> Any:
    from transformers import T5TokenizerFast  # type: ignore[attr-defined]

    chars = "▁abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *((c, -1.0) for c in chars)]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)


def _vae(*, factor8: bool, **extra: Any) -> Any:
    from diffusers import AutoencoderKL

    if factor8:
        return AutoencoderKL(
            latent_channels=4,
            block_out_channels=[8, 16, 32, 32],
            layers_per_block=1,
            norm_num_groups=8,
            down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4,
            sample_size=1024,
            **extra,
        )
    return AutoencoderKL(
        latent_channels=4,
        block_out_channels=[32, 64],
        layers_per_block=1,
        norm_num_groups=32,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        sample_size=64,
        **extra,
    )


def _unet(*, factor8: bool, **extra: Any) -> Any:
    from diffusers import UNet2DConditionModel

    if factor8:
        return UNet2DConditionModel(
            sample_size=32,
            layers_per_block=1,
            block_out_channels=(16, 32, 64),
            norm_num_groups=8,
            down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            **extra,
        )
    return UNet2DConditionModel(
        sample_size=32,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        **extra,
    )


def build_sd(*, factor8: bool) -> Any:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    return StableDiffusionPipeline(
        unet=_unet(factor8=factor8, attention_head_dim=8, cross_attention_dim=32),
        vae=_vae(factor8=factor8),
        text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP)),
        tokenizer=clip_tokenizer(),
        scheduler=EulerDiscreteScheduler(**SD_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_sdxl() -> Any:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet = _unet(
        factor8=True,
        attention_head_dim=(2, 4, 8),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64,
    )
    return StableDiffusionXLPipeline(
        unet=unet,
        vae=_vae(factor8=True),
        text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**CLIP)),
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        scheduler=EulerDiscreteScheduler(**SD_SCHEDULER),
    )


def build_flux() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    )
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=64,
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
        )
    )
    return FluxPipeline(
        transformer=transformer,
        vae=_vae(
            factor8=True,
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.0609,
            scaling_factor=1.5035,
        ),
        text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP)),
        tokenizer=clip_tokenizer(),
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer(),
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )


BUILDERS: dict[str, Callable[[], Any]] = {
    "sd-mini": lambda: build_sd(factor8=False),
    "sd15": lambda: build_sd(factor8=True),
    "sdxl": build_sdxl,
    "flux": build_flux,
}


def _publish(build: Callable[[Path], None], out_dir: Path, marker: str) -> Path:
    """Build into a temp folder beside ``out_dir``, then rename: never half-written."""
    out_dir = Path(out_dir)
    if (out_dir / marker).exists():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, out_dir)
        except OSError:  # another process won the race, or an old folder is in the way
            if not (out_dir / marker).exists():
                shutil.rmtree(out_dir, ignore_errors=True)
                os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def make_tiny(recipe: str, out_dir: Path, *, overwrite: bool = False) -> Path:
    """Write the tiny pipeline ``recipe`` to ``out_dir`` (deterministic weights)."""
    if recipe not in BUILDERS:
        raise ValueError(f"unknown tiny recipe {recipe!r}; choose from {RECIPES}")
    if overwrite:
        shutil.rmtree(out_dir, ignore_errors=True)

    def build(tmp: Path) -> None:
        import torch

        torch.manual_seed(0)
        BUILDERS[recipe]().save_pretrained(tmp)

    path = _publish(build, out_dir, "model_index.json")
    log.info("tiny %s pipeline at %s", recipe, path)
    return path


def make_tiny_lora(recipe: str, out_dir: Path, *, name: str = "style") -> Path:
    """Write ``<out_dir>/<name>.safetensors``: a tiny LoRA for the recipe's denoiser."""
    target = Path(out_dir) / f"{name}.safetensors"
    if target.exists():
        return target

    def build(tmp: Path) -> None:
        import torch
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft import LoraConfig
        from peft.utils import get_peft_model_state_dict

        torch.manual_seed(1)
        pipe = BUILDERS[recipe]()
        denoiser = pipe.transformer if recipe == "flux" else pipe.unet
        denoiser.add_adapter(
            LoraConfig(
                r=4,
                lora_alpha=4,
                init_lora_weights="gaussian",
                target_modules=["to_q", "to_k", "to_v", "to_out.0"],
            )
        )
        with torch.no_grad():
            for pname, p in denoiser.named_parameters():
                if "lora_B" in pname:
                    p.normal_(0, 0.5)
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(denoiser))
        key = "transformer_lora_layers" if recipe == "flux" else "unet_lora_layers"
        type(pipe).save_lora_weights(tmp, weight_name=f"{name}.safetensors", **{key: layers})

    staging = Path(out_dir).parent / f".{Path(out_dir).name}-{name}"
    _publish(build, staging, f"{name}.safetensors")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    os.replace(staging / f"{name}.safetensors", target)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def make_all(models_dir: Path) -> dict[str, Path]:
    """Every recipe to ``models_dir/<recipe>``, a LoRA each to ``models_dir/loras/<recipe>``."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    out = {r: make_tiny(r, Path(models_dir) / r) for r in RECIPES}
    for r in RECIPES:
        out[f"lora:{r}"] = make_tiny_lora(r, Path(models_dir) / "loras" / r)
    return out
