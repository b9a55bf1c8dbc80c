"""Native ComfyUI MODEL, CLIP and VAE built from an `erasure_core` SDModel (diffusers modules of any size).

ComfyUI's stock loaders only recognise the standard model sizes. Its classes take custom configs, so we build
them from the SDModel's own configs:
- UNet: an ldm `unet_config` read off the diffusers UNet's config, an SD1 model config subclass carrying it
  (with the VAE's latent scale), and the weights mapped with ComfyUI's own `comfy.utils.unet_to_diffusers`.
- VAE: `comfy.sd.VAE(sd, config=...)` with an ldm ddconfig and a diffusers -> ldm key conversion written here
  for any number of levels (ComfyUI's own converter assumes SD's four).
- CLIP: `sd1_clip.SDClipModel(textmodel_json_config=<dict>)` with the shipped CLIP tokenizer.
ComfyUI's ldm modules hard-code GroupNorm(32); a model trained with another group count is built with that
count (a construction-time override of ComfyUI's GroupNorm class, undone right after). Every build checks that
all weights found a place (no missing or unused keys); numerical equivalence with the diffusers modules is not
checked here (TODO: a test comparing outputs).
"""

from __future__ import annotations

import contextlib
import functools
import logging

import torch

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.utils
import folder_paths

from ._errors import NodeError

LOG = logging.getLogger("robust_erasure")


@contextlib.contextmanager
def _group_norm_groups(groups: int):
    """While building ComfyUI modules, make its GroupNorm classes use `groups` instead of their hard-coded 32."""
    if groups == 32:
        yield
        return
    holders = [comfy.ops.disable_weight_init, comfy.ops.manual_cast]
    saved = [(h, h.__dict__.get("GroupNorm")) for h in holders]

    def override(base):
        class GroupNorm(base):
            def __init__(self, num_groups, num_channels, *args, **kwargs):
                super().__init__(groups, num_channels, *args, **kwargs)

        return GroupNorm

    try:
        for holder, original in saved:
            if original is not None:
                setattr(holder, "GroupNorm", override(original))
        yield
    finally:
        for holder, original in saved:
            if original is not None:
                setattr(holder, "GroupNorm", original)


# ----------------------------------------------------------------------------------------------------------------
# UNet
# ----------------------------------------------------------------------------------------------------------------


def _uniform(value, what: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise NodeError(f"the UNet uses different {what} per block ({list(value)}); not supported")
        value = value[0]
    return int(value)


def ldm_unet_config(unet) -> dict:
    """ComfyUI's ldm `unet_config` for a diffusers UNet2DConditionModel of the SD1 architecture."""
    c = unet.config
    if c.get("addition_embed_type") or c.get("class_embed_type") or c.get("encoder_hid_dim"):
        raise NodeError("the UNet has extra conditioning inputs (SDXL-style); only SD1-architecture UNets load")
    down = list(c.down_block_types)
    up = list(c.up_block_types)
    levels = len(down)
    layers = _uniform(c.layers_per_block, "layers per block")
    depth = _uniform(c.get("transformer_layers_per_block", 1) or 1, "transformer depths")
    attn = [t == "CrossAttnDownBlock2D" for t in down]
    if any(t not in ("CrossAttnDownBlock2D", "DownBlock2D") for t in down) or up != [
        "CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)
    ]:
        raise NodeError(f"UNet blocks {down} / {up} are not an SD1-style layout")
    heads = c.num_attention_heads or c.attention_head_dim
    heads = _uniform(heads, "attention head counts")
    mid = c.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid not in ("UNetMidBlock2DCrossAttn", None):
        raise NodeError(f"UNet mid block {mid!r} is not supported")
    model_channels = int(c.block_out_channels[0])
    if any(ch % model_channels for ch in c.block_out_channels):
        raise NodeError(f"UNet channels {list(c.block_out_channels)} are not multiples of the first")
    return {
        "use_checkpoint": False,
        "image_size": int(c.sample_size),
        "in_channels": int(c.in_channels),
        "out_channels": int(c.out_channels),
        "model_channels": model_channels,
        "num_res_blocks": [layers] * levels,
        "channel_mult": [int(ch) // model_channels for ch in c.block_out_channels],
        "transformer_depth": [depth if a else 0 for a in attn for _ in range(layers)],
        "transformer_depth_output": [depth if a else 0 for a in attn for _ in range(layers + 1)],
        "transformer_depth_middle": depth if mid else -2,
        "use_spatial_transformer": True,
        "legacy": False,
        "context_dim": int(c.cross_attention_dim),
        "num_heads": heads,
        "num_head_channels": -1,
        "use_linear_in_transformer": bool(c.use_linear_projection),
        "adm_in_channels": None,
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    }


_SCHEDULES = {"scaled_linear": "linear", "linear": "sqrt_linear", "squaredcos_cap_v2": "squaredcos_cap_v2"}
# diffusers prediction_type -> ComfyUI model type
PREDICTION_MODEL_TYPES = {"epsilon": comfy.model_base.ModelType.EPS,
                          "v_prediction": comfy.model_base.ModelType.V_PREDICTION}


def _model_config(unet_config: dict, scale_factor: float, scheduler):
    """An SD1 model config carrying a custom unet_config, latent scale and noise schedule."""

    class _LatentFormat(comfy.latent_formats.SD15):
        def __init__(self):
            super().__init__(scale_factor=scale_factor)

    sc = scheduler.config
    schedule = _SCHEDULES.get(sc.beta_schedule)
    model_type = PREDICTION_MODEL_TYPES.get(sc.get("prediction_type", "epsilon"))
    if schedule is None or model_type is None:
        raise NodeError(f"noise schedule {sc.beta_schedule!r} / {sc.get('prediction_type')!r} is not supported")

    class RobustErasureSD1(comfy.supported_models.SD15):
        unet_extra_config = {}
        latent_format = _LatentFormat
        sampling_settings = {
            "beta_schedule": schedule,
            "linear_start": float(sc.beta_start),
            "linear_end": float(sc.beta_end),
            "timesteps": int(sc.num_train_timesteps),
        }

        def model_type(self, state_dict, prefix=""):
            return model_type

    return RobustErasureSD1(unet_config)


def native_model(sd_model, name: str):
    """A ComfyUI MODEL (ModelPatcher) holding the SDModel's UNet."""
    unet = sd_model.unet
    unet_config = ldm_unet_config(unet)
    scale = float(sd_model.vae.config.scaling_factor) if sd_model.vae is not None else 0.18215
    config = _model_config(unet_config, scale, sd_model.scheduler)
    config.set_inference_dtype(torch.float32, None)
    mapping = comfy.utils.unet_to_diffusers(unet_config)  # diffusers key -> ldm key
    state = unet.state_dict()
    ldm = {}
    for diffusers_key, ldm_key in mapping.items():
        if diffusers_key in state:
            ldm[ldm_key] = state[diffusers_key].detach().to(torch.float32, copy=True)
    with _group_norm_groups(int(unet.config.norm_num_groups)):
        model = config.get_model(ldm, "")
    expected = model.diffusion_model.state_dict()
    missing = sorted(set(expected) - set(ldm))
    unused = sorted(set(state) - set(mapping))
    if missing or unused:
        raise NodeError(f"{name}: the UNet did not map onto ComfyUI's: missing {missing[:4]}, unused {unused[:4]}")
    model.diffusion_model.load_state_dict(ldm, strict=True)
    device = comfy.model_management.get_torch_device()
    offload = comfy.model_management.unet_offload_device()
    return comfy.model_patcher.ModelPatcher(model.to(offload), load_device=device, offload_device=offload)


# ----------------------------------------------------------------------------------------------------------------
# VAE
# ----------------------------------------------------------------------------------------------------------------


def diffusers_vae_to_ldm(state: dict, levels: int) -> dict:
    """Rename a diffusers AutoencoderKL state dict to ldm keys, for any number of levels."""
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
                tensor = tensor.reshape(*tensor.shape, 1, 1)  # ldm uses 1x1 convolutions there
        out[new] = tensor
    return out


def native_vae(sd_model, name: str):
    """A ComfyUI VAE holding the SDModel's AutoencoderKL."""
    vae = sd_model.vae
    if vae is None:
        raise NodeError(f"{name} has no VAE")
    c = vae.config
    if not c.get("mid_block_add_attention", True) or c.get("use_quant_conv", True) is False:
        raise NodeError(f"{name}: VAE variant not supported (mid attention and quant convs are required)")
    blocks = list(c.block_out_channels)
    ch = int(blocks[0])
    ddconfig = {
        "double_z": True,
        "z_channels": int(c.latent_channels),
        "resolution": int(c.sample_size),
        "in_channels": int(c.in_channels),
        "out_ch": int(c.out_channels),
        "ch": ch,
        "ch_mult": [int(b) // ch for b in blocks],
        "num_res_blocks": int(c.layers_per_block),
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    ldm = diffusers_vae_to_ldm(
        {k: v.detach().to(torch.float32, copy=True) for k, v in vae.state_dict().items()}, len(blocks)
    )
    with _group_norm_groups(int(c.norm_num_groups)):
        out = comfy.sd.VAE(sd=ldm, config={"params": {"ddconfig": ddconfig, "embed_dim": int(c.latent_channels)}})
    expected = set(out.first_stage_model.state_dict())
    if expected != set(ldm):
        raise NodeError(
            f"{name}: the VAE did not map onto ComfyUI's: missing {sorted(expected - set(ldm))[:4]}, "
            f"unused {sorted(set(ldm) - expected)[:4]}"
        )
    ratio = 2 ** (len(blocks) - 1)
    out.downscale_ratio = ratio
    out.upscale_ratio = ratio
    return out


# ----------------------------------------------------------------------------------------------------------------
# CLIP
# ----------------------------------------------------------------------------------------------------------------


def native_clip(sd_model, name: str):
    """A ComfyUI CLIP holding the SDModel's text encoder, with the SDModel's tokenizer files."""
    from erasure_core.encoders import state_dict_from_text_encoder
    from erasure_core.models import TOKENIZER_DIR

    te = sd_model.text_encoder
    c = te.config
    width = int(c.hidden_size)
    config = {
        "hidden_size": width,
        "intermediate_size": int(c.intermediate_size),
        "num_hidden_layers": int(c.num_hidden_layers),
        "num_attention_heads": int(c.num_attention_heads),
        "max_position_embeddings": int(c.max_position_embeddings),
        "hidden_act": str(c.hidden_act),
        "vocab_size": int(c.vocab_size),
        "eos_token_id": int(c.eos_token_id),
        "bos_token_id": int(c.bos_token_id),
        "pad_token_id": int(c.pad_token_id),
        "layer_norm_eps": float(c.layer_norm_eps),
        "projection_dim": width,
        "model_type": "clip_text_model",
    }
    if c.hidden_act not in ("quick_gelu", "gelu"):
        raise NodeError(f"{name}: text encoder activation {c.hidden_act!r} is not supported by ComfyUI")
    tokenizer_dir = getattr(sd_model.tokenizer, "name_or_path", "") or str(TOKENIZER_DIR)
    special = {"start": int(c.bos_token_id), "end": int(c.eos_token_id), "pad": int(c.pad_token_id)}
    tokenizer = functools.partial(
        comfy.sd1_clip.SD1Tokenizer,
        tokenizer=functools.partial(
            comfy.sd1_clip.SDTokenizer,
            tokenizer_path=tokenizer_dir,
            max_length=int(sd_model.tokenizer.model_max_length),
            embedding_size=width,
        ),
    )
    clip_model = functools.partial(
        comfy.sd1_clip.SDClipModel,
        textmodel_json_config=config,
        special_tokens=special,
        return_projected_pooled=False,
        max_length=int(sd_model.tokenizer.model_max_length),
    )
    target = comfy.supported_models_base.ClipTarget(
        tokenizer, functools.partial(comfy.sd1_clip.SD1ClipModel, clip_model=clip_model)
    )
    state = state_dict_from_text_encoder(te)
    clip = comfy.sd.CLIP(
        target=target,
        embedding_directory=folder_paths.get_folder_paths("embeddings"),
        parameters=sum(v.numel() for v in state.values()),
    )
    missing, unexpected = clip.load_sd({k: v.detach().float() for k, v in state.items()})
    missing = [k for k in missing if not k.startswith("text_projection")]
    if missing or unexpected:
        raise NodeError(f"{name}: the text encoder did not load into ComfyUI's CLIP: missing {missing[:4]}, "
                        f"unexpected {list(unexpected)[:4]}")
    # SDClipModel's unused projection head is left uninitialised by load_sd; make it the identity so nothing
    # downstream ever sees garbage.
    proj = clip.cond_stage_model.clip_l.transformer.text_projection
    with torch.no_grad():
        proj.weight.copy_(torch.eye(width, dtype=proj.weight.dtype))
    return clip


def native_parts(sd_model, name: str):
    """(MODEL, CLIP, VAE) for an SDModel."""
    with torch.inference_mode(False):
        return native_model(sd_model, name), native_clip(sd_model, name), native_vae(sd_model, name)
