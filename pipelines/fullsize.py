"""Full-size SDXL and FLUX.1-schnell architectures with random weights, from configs.

No hub access: the configs of the published models are typed in here, the weights are
random, and the tokenizers are the tiny offline ones (the text encoders still see real
sequence lengths: 77 CLIP tokens, 256 T5 tokens). Same compute per image as the real
models. Every module is constructed inside ``torch.device(<device>)`` with the target
dtype as the default: each parameter is allocated on the device and initialised there
by the device's own kernels, never on the CPU and never cast afterwards (the CPU holds
nothing but the Python objects). ``"meta"`` builds the architecture without memory, so
``build("flux-schnell", torch.bfloat16, "meta")`` checks the shapes on any machine.

The ``-smoke`` architectures are the same classes with tiny configs (the same pipeline
classes, text encoders, VAE kinds and code paths), for the GPU proof's smoke mode on a
CPU: ``build(name, dtype, device)`` serves both, and ``random_init: <name>`` in
models.yaml makes a worker build them the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

SDXL_UNET: dict[str, Any] = dict(
    act_fn="silu",
    addition_embed_type="text_time",
    addition_embed_type_num_heads=64,
    addition_time_embed_dim=256,
    attention_head_dim=[5, 10, 20],
    block_out_channels=[320, 640, 1280],
    cross_attention_dim=2048,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    projection_class_embeddings_input_dim=2816,
    sample_size=128,
    transformer_layers_per_block=[1, 2, 10],
    use_linear_projection=True,
)
VAE_4CH: dict[str, Any] = dict(
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=4,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.13025,
    force_upcast=True,
)
CLIP_L: dict[str, Any] = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    max_position_embeddings=77,
    vocab_size=49408,
    projection_dim=768,
    hidden_act="quick_gelu",
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
)
CLIP_BIG_G: dict[str, Any] = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_attention_heads=20,
    num_hidden_layers=32,
    max_position_embeddings=77,
    vocab_size=49408,
    projection_dim=1280,
    hidden_act="gelu",
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
)
FLUX_TRANSFORMER: dict[str, Any] = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=False,
    axes_dims_rope=[16, 56, 56],
)
FLUX_VAE: dict[str, Any] = dict(
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=16,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    norm_num_groups=32,
    sample_size=1024,
    use_quant_conv=False,
    use_post_quant_conv=False,
    shift_factor=0.1159,
    scaling_factor=0.3611,
)
T5_XXL: dict[str, Any] = dict(
    vocab_size=32128,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    is_encoder_decoder=False,
)


@contextlib.contextmanager
def _materialize(device: str, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly on ``device`` in ``dtype``: no CPU init, no cast copy.

    ``device="meta"`` builds the architecture without memory (to check configs on a
    machine without a GPU). Only modules go in here: schedulers compute their tables
    in fp32 on the CPU.
    """
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def _module(make: Callable[[], Any], device: str, dtype: torch.dtype) -> Any:
    with _materialize(device, dtype):
        module = make()
    return module.eval().requires_grad_(False)


def build_full_sdxl(dtype: torch.dtype, device: str = "cuda") -> Any:
    """SDXL base 1.0 architecture (UNet 2.57B, CLIP-L + OpenCLIP bigG, 4-channel VAE)."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pipelines.tiny import SD_SCHEDULER, clip_tokenizer

    return StableDiffusionXLPipeline(
        unet=_module(lambda: UNet2DConditionModel(**SDXL_UNET), device, dtype),
        vae=_module(lambda: AutoencoderKL(**VAE_4CH), device, dtype),
        text_encoder=_module(lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L)), device, dtype),
        text_encoder_2=_module(
            lambda: CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIG_G)), device, dtype
        ),
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        scheduler=EulerDiscreteScheduler(**SD_SCHEDULER),
    )


def build_full_flux_schnell(dtype: torch.dtype, device: str = "cuda") -> Any:
    """FLUX.1-schnell architecture (transformer 11.9B, CLIP-L + T5-XXL encoder, 16-ch VAE)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from pipelines.tiny import clip_tokenizer, t5_tokenizer

    return FluxPipeline(
        transformer=_module(lambda: FluxTransformer2DModel(**FLUX_TRANSFORMER), device, dtype),
        vae=_module(lambda: AutoencoderKL(**FLUX_VAE), device, dtype),
        text_encoder=_module(lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L)), device, dtype),
        tokenizer=clip_tokenizer(),
        text_encoder_2=_module(lambda: T5EncoderModel(T5Config(**T5_XXL)), device, dtype),
        tokenizer_2=t5_tokenizer(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
    )


# The smoke sizes: the same architectures, with the tiny configs of pipelines.tiny's
# 64×64 recipes (VAE scale factor 2; attention at the lower level only).
SMOKE_CLIP: dict[str, Any] = dict(
    hidden_size=32,
    intermediate_size=37,
    num_attention_heads=4,
    num_hidden_layers=2,
    max_position_embeddings=77,
    vocab_size=1000,
    projection_dim=32,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
)
SMOKE_SDXL_UNET: dict[str, Any] = dict(
    sample_size=32,
    layers_per_block=1,
    block_out_channels=[32, 64],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
    attention_head_dim=[2, 4],
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    transformer_layers_per_block=[1, 1],
    projection_class_embeddings_input_dim=6 * 8 + 32,
    cross_attention_dim=64,  # the two text encoders' hidden sizes
    norm_num_groups=32,
)
SMOKE_VAE: dict[str, Any] = dict(
    block_out_channels=[32, 64],
    layers_per_block=1,
    latent_channels=4,
    down_block_types=["DownEncoderBlock2D"] * 2,
    up_block_types=["UpDecoderBlock2D"] * 2,
    norm_num_groups=32,
    sample_size=64,
)
SMOKE_FLUX_TRANSFORMER: dict[str, Any] = dict(
    patch_size=1,
    in_channels=16,  # 4 × the VAE's 4 latent channels (2×2 packing)
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    guidance_embeds=False,
    axes_dims_rope=[4, 6, 6],
)
SMOKE_T5: dict[str, Any] = dict(
    vocab_size=64,
    d_model=32,
    d_kv=8,
    d_ff=37,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=8,
    is_encoder_decoder=False,
)


def build_smoke_sdxl(dtype: torch.dtype, device: str = "cpu") -> Any:
    """The SDXL pipeline classes with tiny configs (CLIP pair, text-time UNet, 4-ch VAE)."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pipelines.tiny import SD_SCHEDULER, clip_tokenizer

    vae = dict(SMOKE_VAE, scaling_factor=0.13025, force_upcast=True)
    return StableDiffusionXLPipeline(
        unet=_module(lambda: UNet2DConditionModel(**SMOKE_SDXL_UNET), device, dtype),
        vae=_module(lambda: AutoencoderKL(**vae), device, dtype),
        text_encoder=_module(lambda: CLIPTextModel(CLIPTextConfig(**SMOKE_CLIP)), device, dtype),
        text_encoder_2=_module(
            lambda: CLIPTextModelWithProjection(CLIPTextConfig(**SMOKE_CLIP)), device, dtype
        ),
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        scheduler=EulerDiscreteScheduler(**SD_SCHEDULER),
    )


def build_smoke_flux_schnell(dtype: torch.dtype, device: str = "cpu") -> Any:
    """The FLUX pipeline classes with tiny configs (CLIP + T5 encoder, MMDiT, VAE)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from pipelines.tiny import clip_tokenizer, t5_tokenizer

    vae = dict(
        SMOKE_VAE,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1159,
        scaling_factor=0.3611,
    )
    return FluxPipeline(
        transformer=_module(
            lambda: FluxTransformer2DModel(**SMOKE_FLUX_TRANSFORMER), device, dtype
        ),
        vae=_module(lambda: AutoencoderKL(**vae), device, dtype),
        text_encoder=_module(lambda: CLIPTextModel(CLIPTextConfig(**SMOKE_CLIP)), device, dtype),
        tokenizer=clip_tokenizer(),
        text_encoder_2=_module(lambda: T5EncoderModel(T5Config(**SMOKE_T5)), device, dtype),
        tokenizer_2=t5_tokenizer(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
    )


BUILDERS: dict[str, Callable[[torch.dtype, str], Any]] = {
    "sdxl": build_full_sdxl,
    "flux-schnell": build_full_flux_schnell,
}
ARCHITECTURES: dict[str, Callable[[torch.dtype, str], Any]] = {
    **BUILDERS,
    "sdxl-smoke": build_smoke_sdxl,
    "flux-schnell-smoke": build_smoke_flux_schnell,
}
FAMILIES = {"sdxl": "sdxl", "flux-schnell": "flux-schnell"}  # architecture → model family


def family_of(name: str) -> str:
    return FAMILIES[name.removesuffix("-smoke")]


def build(name: str, dtype: torch.dtype, device: str, *, seed: int = 0) -> Any:
    """The architecture ``name`` with random weights from ``seed``, made on ``device``."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}")
    if device != "meta":
        torch.manual_seed(seed)  # seeds the CPU and every CUDA generator
    pipe = ARCHITECTURES[name](dtype, device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
