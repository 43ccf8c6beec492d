"""Diffusers weights in their family's original layout, and Flux back again.

The original layouts are those of the files people download: Stability's LDM layout
for SD 1.5 and SDXL (UNet under ``model.diffusion_model.``, VAE under
``first_stage_model.``, CLIP text encoders under ``cond_stage_model.transformer.`` or
``conditioner.embedders.N.``), and Black Forest Labs' for the Flux transformer
(``double_blocks``, ``single_blocks``, fused q/k/v), packed with its VAE and text
encoders as ComfyUI's all-in-one files do (``vae.``, ``text_encoders.clip_l.``,
``text_encoders.t5xxl.``).

Each model is a table of renames built from its config (``*_names``: diffusers name →
original name, block indices from ``layers_per_block`` and the block types), plus the
few tensors that change shape: VAE attention projections (1×1 convolutions in LDM),
OpenCLIP's fused ``in_proj`` and transposed projection, Flux's fused q/k/v and its
final modulation (shift and scale in the other order). :func:`flux_from_original`
reads a Flux transformer back, with its sizes from the config (diffusers' own reader
assumes FLUX.1's width, 3072).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

UNET = "model.diffusion_model."
RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
PREFIXES = {
    "sd15": {"vae": "first_stage_model.", "text_encoder": "cond_stage_model.transformer."},
    "sdxl": {
        "vae": "first_stage_model.",
        "text_encoder": "conditioner.embedders.0.transformer.",
        "text_encoder_2": "conditioner.embedders.1.model.",
    },
    "flux": {
        "vae": "vae.",
        "text_encoder": "text_encoders.clip_l.transformer.",
        "text_encoder_2": "text_encoders.t5xxl.transformer.",
    },
}
Tensors = dict[str, Any]


def _rename(key: str, table: Mapping[str, str]) -> str | None:
    """``key`` with the longest matching diffusers prefix of ``table`` replaced."""
    for old in sorted(table, key=len, reverse=True):
        if key == old or key.startswith(old + "."):
            return table[old] + key[len(old) :]
    return None


def _block(prefix: str, ldm: str, parts: Mapping[str, str]) -> dict[str, str]:
    return {f"{prefix}.{a}": f"{ldm}.{b}" for a, b in parts.items()}


def unet_names(config: Mapping[str, Any]) -> dict[str, str]:
    """Diffusers UNet module prefixes → LDM ones (under ``model.diffusion_model.``)."""
    layers = int(config["layers_per_block"])
    down, up = config["down_block_types"], config["up_block_types"]
    names = {
        "conv_in": "input_blocks.0.0",
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
        "mid_block.attentions.0": "middle_block.1",
    }
    for r in range(2):
        names.update(_block(f"mid_block.resnets.{r}", f"middle_block.{2 * r}", RESNET))
    for i in range(len(down)):
        for j in range(layers):
            n = 1 + i * (layers + 1) + j
            names.update(_block(f"down_blocks.{i}.resnets.{j}", f"input_blocks.{n}.0", RESNET))
            names[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{n}.1"
        if i < len(down) - 1:
            names[f"down_blocks.{i}.downsamplers.0.conv"] = (
                f"input_blocks.{1 + i * (layers + 1) + layers}.0.op"
            )
    for i, kind in enumerate(up):
        for j in range(layers + 1):
            n = i * (layers + 1) + j
            names.update(_block(f"up_blocks.{i}.resnets.{j}", f"output_blocks.{n}.0", RESNET))
            names[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{n}.1"
        if i < len(up) - 1:
            slot = 2 if "CrossAttn" in kind else 1
            n = i * (layers + 1) + layers
            names[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{n}.{slot}.conv"
    return names


def vae_names(config: Mapping[str, Any]) -> dict[str, str]:
    """Diffusers AutoencoderKL module prefixes → LDM ones."""
    levels, layers = len(config["block_out_channels"]), int(config["layers_per_block"])
    names = {"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}
    for side in ("encoder", "decoder"):
        names.update(
            {
                f"{side}.conv_in": f"{side}.conv_in",
                f"{side}.conv_norm_out": f"{side}.norm_out",
                f"{side}.conv_out": f"{side}.conv_out",
                f"{side}.mid_block.resnets.0": f"{side}.mid.block_1",
                f"{side}.mid_block.resnets.1": f"{side}.mid.block_2",
            }
        )
        names.update(_block(f"{side}.mid_block.attentions.0", f"{side}.mid.attn_1", VAE_ATTENTION))
    for i in range(levels):
        for j in range(layers):
            names[f"encoder.down_blocks.{i}.resnets.{j}"] = f"encoder.down.{i}.block.{j}"
        names[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
        ldm = levels - 1 - i  # LDM counts the decoder's levels from the lowest resolution
        for j in range(layers + 1):
            names[f"decoder.up_blocks.{i}.resnets.{j}"] = f"decoder.up.{ldm}.block.{j}"
        names[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{ldm}.upsample.conv"
    return names


def _renamed(state: Mapping[str, Any], table: Mapping[str, str], prefix: str, what: str) -> Tensors:
    out: Tensors = {}
    for key, value in state.items():
        new = _rename(key, table)
        if new is None:
            raise ValueError(f"{what}: no original name for {key}")
        out[prefix + new] = value
    return out


def unet_to_original(state: Mapping[str, Any], config: Mapping[str, Any]) -> Tensors:
    return _renamed(state, unet_names(config), UNET, "unet")


def vae_to_original(state: Mapping[str, Any], config: Mapping[str, Any], prefix: str) -> Tensors:
    names = vae_names(config)
    for key in [k for k in names if ".resnets." in k]:  # resnet parts keep their names, but one
        names.update(_block(key, names[key], VAE_RESNET))
    out = _renamed(state, names, prefix, "vae")
    for key, value in out.items():  # LDM keeps the mid attention as 1×1 convolutions
        if ".mid.attn_1." in key and key.endswith("weight") and value.ndim == 2:
            out[key] = value[:, :, None, None]
    return out


def clip_to_original(state: Mapping[str, Any], prefix: str) -> Tensors:
    """A transformers CLIP text model under ``prefix`` (its keys under ``text_model.``)."""
    return {
        prefix + (k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v
        for k, v in state.items()
    }


OPEN_CLIP = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def open_clip_to_original(state: Mapping[str, Any], prefix: str) -> Tensors:
    """A CLIP text model with projection in OpenCLIP's layout (SDXL's second encoder)."""
    import torch

    out: Tensors = {}
    layers = {int(k.split(".")[3]) for k in state if k.startswith("text_model.encoder.layers.")}
    for key, ldm in OPEN_CLIP.items():
        out[prefix + ldm] = state[key]
    out[prefix + "text_projection"] = state["text_projection.weight"].T.contiguous()
    for i in layers:
        hf, oc = f"text_model.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for a, b in OPEN_CLIP_LAYER.items():
            for p in ("weight", "bias"):
                out[f"{oc}{b}.{p}"] = state[f"{hf}{a}.{p}"]
        for p in ("weight", "bias"):
            qkv = [state[f"{hf}self_attn.{x}_proj.{p}"] for x in "qkv"]
            out[f"{oc}attn.in_proj_{p}"] = torch.cat(qkv, dim=0)
    return out


# Flux: diffusers name → BFL name, per double block, per single block, and the rest.
FLUX_TOP = {
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "context_embedder": "txt_in",
    "x_embedder": "img_in",
    "proj_out": "final_layer.linear",
}
FLUX_DOUBLE = {
    "norm1.linear": "img_mod.lin",
    "norm1_context.linear": "txt_mod.lin",
    "attn.norm_q": "img_attn.norm.query_norm",
    "attn.norm_k": "img_attn.norm.key_norm",
    "attn.norm_added_q": "txt_attn.norm.query_norm",
    "attn.norm_added_k": "txt_attn.norm.key_norm",
    "ff.net.0.proj": "img_mlp.0",
    "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2",
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
}
FLUX_SINGLE = {
    "norm.linear": "modulation.lin",
    "attn.norm_q": "norm.query_norm",
    "attn.norm_k": "norm.key_norm",
    "proj_out": "linear2",
}
# Fused tensors: BFL name → the diffusers parts concatenated along dim 0, in order.
FLUX_DOUBLE_FUSED: dict[str, tuple[str, ...]] = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
FLUX_SINGLE_FUSED: dict[str, tuple[str, ...]] = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
}
FINAL_MOD = ("norm_out.linear", "final_layer.adaLN_modulation.1")


def _leaf(name: str) -> str:
    """BFL's RMSNorm weights are called ``scale``."""
    return "scale" if name.endswith("_norm") else "weight"


def flux_pairs(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(diffusers key, BFL key) for every plain (not fused, not swapped) tensor."""
    pairs = []
    for a, b in FLUX_TOP.items():
        pairs += [(f"{a}.weight", f"{b}.weight"), (f"{a}.bias", f"{b}.bias")]
    blocks = [
        (f"transformer_blocks.{i}", f"double_blocks.{i}", FLUX_DOUBLE)
        for i in range(int(config["num_layers"]))
    ] + [
        (f"single_transformer_blocks.{i}", f"single_blocks.{i}", FLUX_SINGLE)
        for i in range(int(config["num_single_layers"]))
    ]
    for d, b, table in blocks:
        for x, y in table.items():
            pairs.append((f"{d}.{x}.weight", f"{b}.{y}.{_leaf(y)}"))
            if not y.endswith("_norm"):
                pairs.append((f"{d}.{x}.bias", f"{b}.{y}.bias"))
    return pairs


def _fused(config: Mapping[str, Any]) -> list[tuple[str, tuple[str, ...], str]]:
    out: list[tuple[str, tuple[str, ...], str]] = []
    for i in range(int(config["num_layers"])):
        out += [
            (f"double_blocks.{i}.{b}", parts, f"transformer_blocks.{i}")
            for b, parts in FLUX_DOUBLE_FUSED.items()
        ]
    for i in range(int(config["num_single_layers"])):
        out += [
            (f"single_blocks.{i}.{b}", parts, f"single_transformer_blocks.{i}")
            for b, parts in FLUX_SINGLE_FUSED.items()
        ]
    return out


def _swap_halves(t: Any) -> Any:
    import torch

    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def flux_to_original(
    state: Mapping[str, Any], config: Mapping[str, Any], prefix: str = UNET
) -> Tensors:
    """A diffusers Flux transformer in BFL's layout (under ``prefix``)."""
    import torch

    out: Tensors = {prefix + b: state[d] for d, b in flux_pairs(config) if d in state}
    for bfl, parts, block in _fused(config):
        for p in ("weight", "bias"):
            out[f"{prefix}{bfl}.{p}"] = torch.cat([state[f"{block}.{x}.{p}"] for x in parts])
    for p in ("weight", "bias"):
        out[f"{prefix}{FINAL_MOD[1]}.{p}"] = _swap_halves(state[f"{FINAL_MOD[0]}.{p}"])
    return out


def flux_from_original(state: Mapping[str, Any], config: Mapping[str, Any]) -> Tensors:
    """A BFL-layout Flux transformer (bare or under ``model.diffusion_model.``) in
    diffusers' names, split by the sizes of ``config``."""
    state = {k.removeprefix(UNET): v for k, v in state.items()}
    inner = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    out: Tensors = {d: state[b] for d, b in flux_pairs(config) if b in state}
    for bfl, parts, block in _fused(config):
        for p in ("weight", "bias"):
            whole = state[f"{bfl}.{p}"]
            sizes = [inner] * 3 + ([whole.shape[0] - 3 * inner] if len(parts) == 4 else [])
            for x, piece in zip(parts, whole.split(sizes, dim=0), strict=True):
                out[f"{block}.{x}.{p}"] = piece.contiguous()  # a view would run other kernels
    for p in ("weight", "bias"):
        out[f"{FINAL_MOD[0]}.{p}"] = _swap_halves(state[f"{FINAL_MOD[1]}.{p}"])
    return out


def pipeline_to_original(pipe: Any, kind: str) -> Tensors:
    """Every weight of a diffusers pipeline of ``kind`` (sd15 | sdxl | flux), named as in
    its family's single-file checkpoints."""
    prefixes = PREFIXES[kind]
    out: Tensors = {}
    if kind == "flux":
        out.update(flux_to_original(pipe.transformer.state_dict(), pipe.transformer.config))
    else:
        out.update(unet_to_original(pipe.unet.state_dict(), pipe.unet.config))
    out.update(vae_to_original(pipe.vae.state_dict(), pipe.vae.config, prefixes["vae"]))
    out.update(clip_to_original(pipe.text_encoder.state_dict(), prefixes["text_encoder"]))
    if kind == "sdxl":
        out.update(
            open_clip_to_original(pipe.text_encoder_2.state_dict(), prefixes["text_encoder_2"])
        )
    elif kind == "flux":  # T5 keeps transformers' names; its tied embedding written twice
        t5 = {k: v.clone() for k, v in pipe.text_encoder_2.state_dict().items()}
        out.update({prefixes["text_encoder_2"] + k: v for k, v in t5.items()})
    return {k: v.detach().contiguous() for k, v in out.items()}


def write_checkpoint(folder: Path, kind: str, out: Path) -> Path:
    """The diffusers pipeline in ``folder`` as one original-layout ``.safetensors`` file
    at ``out`` (written beside it under a temporary name, then renamed)."""
    import diffusers
    from safetensors.torch import save_file

    pipe = diffusers.DiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    tensors = pipeline_to_original(pipe, kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", "kiln_layout": kind})
    tmp.replace(out)
    return out
