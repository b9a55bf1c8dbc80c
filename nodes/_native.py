"""Native ComfyUI MODEL, CLIP and VAE built from an `erasure_core` SDModel (diffusers modules of any size).

ComfyUI's stock loaders only recognise the standard model sizes. Its classes take custom configs, which
`erasure_core.ldm_configs` translates from the SDModel's own diffusers configs (pure dicts, tested without a
server); this module only builds the ComfyUI objects:
- UNet: an SD1 model config subclass carrying the ldm `unet_config` (with the VAE's latent scale and the noise
  schedule), and the weights mapped with ComfyUI's own `comfy.utils.unet_to_diffusers`.
- VAE: `comfy.sd.VAE(sd, config=...)` with the ldm ddconfig and the diffusers -> ldm key conversion.
- CLIP: `sd1_clip.SDClipModel(textmodel_json_config=<dict>)` with the shipped CLIP tokenizer.
Every build checks that all weights found a place (no missing or unused keys); tests/comfy/inprocess_checks.py
compares the MODEL's outputs with the diffusers UNet's.
"""

from __future__ import annotations

import functools
import logging

import torch

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.utils
import folder_paths

from erasure_core.ldm_configs import (comfy_clip_config, diffusers_vae_to_ldm, ldm_sampling_settings,
                                      ldm_unet_config, ldm_vae_config)

from ._errors import NodeError, user_errors

LOG = logging.getLogger("robust_erasure")


# ----------------------------------------------------------------------------------------------------------------
# UNet
# ----------------------------------------------------------------------------------------------------------------

# diffusers prediction_type -> ComfyUI model type
PREDICTION_MODEL_TYPES = {"epsilon": comfy.model_base.ModelType.EPS,
                          "v_prediction": comfy.model_base.ModelType.V_PREDICTION}


def _model_config(unet_config: dict, scale_factor: float, scheduler):
    """An SD1 model config carrying a custom unet_config, latent scale and noise schedule."""

    class _LatentFormat(comfy.latent_formats.SD15):
        def __init__(self):
            super().__init__(scale_factor=scale_factor)

    settings = ldm_sampling_settings(scheduler.config)
    prediction = scheduler.config.get("prediction_type", "epsilon")
    model_type = PREDICTION_MODEL_TYPES.get(prediction)
    if model_type is None:
        raise NodeError(f"prediction type {prediction!r} is not supported")

    class RobustErasureSD1(comfy.supported_models.SD15):
        unet_extra_config = {}
        latent_format = _LatentFormat
        sampling_settings = settings

        def model_type(self, state_dict, prefix=""):
            return model_type

    return RobustErasureSD1(unet_config)


def native_model(sd_model, name: str):
    """A ComfyUI MODEL (ModelPatcher) holding the SDModel's UNet."""
    unet = sd_model.unet
    unet_config = ldm_unet_config(unet.config)
    scale = float(sd_model.vae.config.scaling_factor) if sd_model.vae is not None else 0.18215
    config = _model_config(unet_config, scale, sd_model.scheduler)
    config.set_inference_dtype(torch.float32, None)
    mapping = comfy.utils.unet_to_diffusers(unet_config)  # diffusers key -> ldm key
    state = unet.state_dict()
    ldm = {}
    for diffusers_key, ldm_key in mapping.items():
        if diffusers_key in state:
            ldm[ldm_key] = state[diffusers_key].detach().to(torch.float32, copy=True)
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


def native_vae(sd_model, name: str):
    """A ComfyUI VAE holding the SDModel's AutoencoderKL."""
    vae = sd_model.vae
    if vae is None:
        raise NodeError(f"{name} has no VAE")
    blocks = list(vae.config.block_out_channels)
    config = ldm_vae_config(vae.config)
    ldm = diffusers_vae_to_ldm(
        {k: v.detach().to(torch.float32, copy=True) for k, v in vae.state_dict().items()}, len(blocks)
    )
    out = comfy.sd.VAE(sd=ldm, config=config)
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
    config = comfy_clip_config(c.to_dict())
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
    with torch.inference_mode(False), user_errors(name):
        return native_model(sd_model, name), native_clip(sd_model, name), native_vae(sd_model, name)
