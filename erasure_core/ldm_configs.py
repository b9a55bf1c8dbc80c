"""diffusers -> ldm (original Stable Diffusion) configs and VAE keys, as ComfyUI's model classes take them.

Pure dict -> dict: nothing here imports ComfyUI, so the translations are tested without a server
(tests/test_ldm_configs.py); `nodes/_native.py` only builds ComfyUI objects from what these return.
ComfyUI's stock loaders recognise the standard model sizes only; its classes take custom configs, so the configs
are read off the SDModel's own diffusers modules (any SD1-architecture size: the demo model, SD1.5).
Unsupported layouts are refused with an `ErasureError` naming what was found.
"""

from __future__ import annotations

from typing import Mapping

from .errors import ErasureError

# ComfyUI's ldm modules hard-code GroupNorm(32) (openaimodel.ResBlock, attention.SpatialTransformer,
# diffusionmodules.model.Normalize). Every model the nodes build (the demo model, SD1.x) uses 32; another count
# is refused here rather than patched into ComfyUI's classes for the whole process.
COMFY_GROUP_NORM_GROUPS = 32

# diffusers beta_schedule -> ComfyUI's name for the same betas
SCHEDULES = {"scaled_linear": "linear", "linear": "sqrt_linear", "squaredcos_cap_v2": "squaredcos_cap_v2"}


def _get(config: Mapping, key: str, default=None):
    value = config.get(key, default)
    return default if value is None else value


def _uniform(value, what: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ErasureError(f"the UNet uses different {what} per block ({list(value)}); not supported")
        value = value[0]
    return int(value)


def _check_groups(config: Mapping, what: str) -> None:
    groups = int(_get(config, "norm_num_groups", COMFY_GROUP_NORM_GROUPS))
    if groups != COMFY_GROUP_NORM_GROUPS:
        raise ErasureError(f"the {what} uses GroupNorm with {groups} groups; ComfyUI's modules hard-code "
                           f"{COMFY_GROUP_NORM_GROUPS}, so it cannot be built as a native ComfyUI model")


def ldm_unet_config(config: Mapping) -> dict:
    """ComfyUI's ldm `unet_config` for the config of a diffusers UNet2DConditionModel of the SD1 architecture."""
    if config.get("addition_embed_type") or config.get("class_embed_type") or config.get("encoder_hid_dim"):
        raise ErasureError("the UNet has extra conditioning inputs (SDXL-style); only SD1-architecture UNets load")
    _check_groups(config, "UNet")
    down = list(config["down_block_types"])
    up = list(config["up_block_types"])
    levels = len(down)
    layers = _uniform(config["layers_per_block"], "layers per block")
    depth = _uniform(_get(config, "transformer_layers_per_block", 1), "transformer depths")
    attn = [t == "CrossAttnDownBlock2D" for t in down]
    if any(t not in ("CrossAttnDownBlock2D", "DownBlock2D") for t in down) or up != [
        "CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)
    ]:
        raise ErasureError(f"UNet blocks {down} / {up} are not an SD1-style layout")
    heads = _uniform(config.get("num_attention_heads") or config["attention_head_dim"], "attention head counts")
    mid = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid not in ("UNetMidBlock2DCrossAttn", None):
        raise ErasureError(f"UNet mid block {mid!r} is not supported")
    channels = [int(ch) for ch in config["block_out_channels"]]
    model_channels = channels[0]
    if any(ch % model_channels for ch in channels):
        raise ErasureError(f"UNet channels {channels} are not multiples of the first")
    return {
        "use_checkpoint": False,
        "image_size": int(config["sample_size"]),
        "in_channels": int(config["in_channels"]),
        "out_channels": int(config["out_channels"]),
        "model_channels": model_channels,
        "num_res_blocks": [layers] * levels,
        "channel_mult": [ch // model_channels for ch in channels],
        "transformer_depth": [depth if a else 0 for a in attn for _ in range(layers)],
        "transformer_depth_output": [depth if a else 0 for a in attn for _ in range(layers + 1)],
        "transformer_depth_middle": depth if mid else -2,
        "use_spatial_transformer": True,
        "legacy": False,
        "context_dim": int(config["cross_attention_dim"]),
        "num_heads": heads,
        "num_head_channels": -1,
        "use_linear_in_transformer": bool(config.get("use_linear_projection", False)),
        "adm_in_channels": None,
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    }


def ldm_sampling_settings(scheduler_config: Mapping) -> dict:
    """ComfyUI's `sampling_settings` (beta schedule and its range) for a diffusers scheduler config."""
    schedule = SCHEDULES.get(scheduler_config["beta_schedule"])
    if schedule is None:
        raise ErasureError(f"noise schedule {scheduler_config['beta_schedule']!r} is not supported")
    return {
        "beta_schedule": schedule,
        "linear_start": float(scheduler_config["beta_start"]),
        "linear_end": float(scheduler_config["beta_end"]),
        "timesteps": int(scheduler_config["num_train_timesteps"]),
    }


def ldm_vae_config(config: Mapping) -> dict:
    """ComfyUI's VAE config ({"params": {"ddconfig", "embed_dim"}}) for a diffusers AutoencoderKL config."""
    if not config.get("mid_block_add_attention", True) or config.get("use_quant_conv", True) is False:
        raise ErasureError("VAE variant not supported (mid attention and quant convs are required)")
    _check_groups(config, "VAE")
    blocks = [int(b) for b in config["block_out_channels"]]
    ch = blocks[0]
    ddconfig = {
        "double_z": True,
        "z_channels": int(config["latent_channels"]),
        "resolution": int(config["sample_size"]),
        "in_channels": int(config["in_channels"]),
        "out_ch": int(config["out_channels"]),
        "ch": ch,
        "ch_mult": [b // ch for b in blocks],
        "num_res_blocks": int(config["layers_per_block"]),
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    return {"params": {"ddconfig": ddconfig, "embed_dim": int(config["latent_channels"])}}


def diffusers_vae_to_ldm(state: Mapping, levels: int) -> dict:
    """Rename a diffusers AutoencoderKL state dict to ldm keys, for any number of levels (ComfyUI's own
    converter assumes SD's four). Attention projections become the 1x1 convolutions ldm uses."""
    renames = [("conv_shortcut.", "nin_shortcut."), ("conv_norm_out.", "norm_out.")]
    for i in range(levels):
        renames += [
            (f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."),
            (f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."),
            (f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{levels - 1 - i}.block."),
            (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{levels - 1 - i}.upsample."),
        ]
    for i in range(2):
        renames.append((f"mid_block.resnets.{i}.", f"mid.block_{i + 1}."))
    attn = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out."),
            ("query.", "q."), ("key.", "k."), ("value.", "v."), ("proj_attn.", "proj_out.")]
    out = {}
    for key, tensor in state.items():
        new = key
        for src, dst in renames:
            new = new.replace(src, dst)
        if "mid_block.attentions.0." in new:
            new = new.replace("mid_block.attentions.0.", "mid.attn_1.")
            for src, dst in attn:
                new = new.replace(src, dst)
            if new.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")) and tensor.ndim == 2:
                tensor = tensor.reshape(*tensor.shape, 1, 1)
        out[new] = tensor
    return out


def comfy_clip_config(config: Mapping) -> dict:
    """The `textmodel_json_config` ComfyUI's SDClipModel takes, for a transformers CLIPTextConfig (as a dict)."""
    if config["hidden_act"] not in ("quick_gelu", "gelu"):
        raise ErasureError(f"text encoder activation {config['hidden_act']!r} is not supported by ComfyUI")
    width = int(config["hidden_size"])
    return {
        "hidden_size": width,
        "intermediate_size": int(config["intermediate_size"]),
        "num_hidden_layers": int(config["num_hidden_layers"]),
        "num_attention_heads": int(config["num_attention_heads"]),
        "max_position_embeddings": int(config["max_position_embeddings"]),
        "hidden_act": str(config["hidden_act"]),
        "vocab_size": int(config["vocab_size"]),
        "eos_token_id": int(config["eos_token_id"]),
        "bos_token_id": int(config["bos_token_id"]),
        "pad_token_id": int(config["pad_token_id"]),
        "layer_norm_eps": float(config["layer_norm_eps"]),
        "projection_dim": width,
        "model_type": "clip_text_model",
    }
