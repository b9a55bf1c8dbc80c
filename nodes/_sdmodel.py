"""An `erasure_core` SDModel from ComfyUI's MODEL, CLIP and VAE.

The UNet is ComfyUI's own module behind a diffusers-style adaptor (`_model_unet.ComfyUNet`): one UNet in
memory, in ComfyUI's dtype, under ComfyUI's model management. The text encoder is a transformers CLIPTextModel
holding the CLIP's effective weights (ComfyUI's CLIP layers add in place, so autograd cannot run through them);
the VAE, needed only by probes that generate images, a diffusers copy of ComfyUI's (SD1.5: 84M parameters).
The demo model carries its diffusers modules with it (see demo.py) and reuses them.
"""

from __future__ import annotations

import torch

import comfy.supported_models
from comfy_api.v0_0_2 import io

from ._clip_encoder import clip_to_text_encoder, sd1_clip_part
from ._errors import NodeError
from ._model_unet import ComfyUNet
from ._native import PREDICTION_MODEL_TYPES


def _check_sd1_model(model, node: str):
    if model is None:
        raise NodeError(f"{node}: no MODEL connected")
    config = getattr(model.model, "model_config", None)
    if not isinstance(config, comfy.supported_models.SD15):
        raise NodeError(
            f"{node} works on Stable Diffusion 1.x models, but this MODEL is {type(config).__name__} "
            f"({type(model.model).__name__}). SDXL, SD2, SD3, Flux and other families are not supported."
        )


_PREDICTION_NAMES = {model_type: name for name, model_type in PREDICTION_MODEL_TYPES.items()}


def _prediction_type(model) -> str:
    """The diffusers name of what the MODEL's UNet predicts (SD1 checkpoints: epsilon; v fine-tunes exist)."""
    return _PREDICTION_NAMES.get(model.model.model_type, "epsilon")


def _vae_from_comfy(vae, node: str):
    """A diffusers AutoencoderKL holding a ComfyUI SD1 VAE's weights."""
    from erasure_core import loading

    with torch.inference_mode(False):
        tensors = {loading.VAE_PREFIX + k: v.detach().to("cpu", torch.float32, copy=True)
                   for k, v in vae.first_stage_model.state_dict().items()}
        try:
            return loading.vae_from_ldm_state(tensors)
        except Exception as err:  # noqa: BLE001 - any failure here means "not an SD1 VAE"
            raise NodeError(f"{node}: the VAE is not an SD1-style KL autoencoder ({err})") from err


def sd_model_from_comfy(model, clip, node: str, vae=None, resolution: int = 0):
    """An SDModel whose UNet is the MODEL's, whose text encoder is the CLIP's (effective weights) and whose VAE
    is `vae`'s (when given; training needs none, probes that generate images do), working at `resolution` px
    (0: the model's native size).

    Nothing in ComfyUI's objects changes value: the text encoder and VAE are fresh copies, and the UNet is
    ComfyUI's own module, frozen (its inference-mode tensors re-created as normal ones, same values).
    """
    from erasure_core.models import SDModel, load_clip_tokenizer, make_scheduler

    _check_sd1_model(model, node)
    sd1_clip_part(clip, node)
    with torch.inference_mode(False):
        text_encoder = clip_to_text_encoder(clip)
        base = getattr(model.model, "robust_erasure_sd_model", None)
        if base is not None and not model.patches:
            unet, scheduler, tokenizer, name = base.unet, base.scheduler, base.tokenizer, base.name
            # The demo's own VAE unless another is connected: it is tiny, and it gives the latent scale.
            from_demo = vae is None or getattr(vae, "robust_erasure_from_demo", False)
            diffusers_vae = base.vae if from_demo else None
        else:
            unet, scheduler, tokenizer, name = (
                ComfyUNet(model), make_scheduler(prediction_type=_prediction_type(model)),
                load_clip_tokenizer(), "comfyui-model")
            diffusers_vae = None
        if vae is not None and diffusers_vae is None:
            diffusers_vae = _vae_from_comfy(vae, node)
    width = text_encoder.config.hidden_size
    if unet.config.cross_attention_dim != width:
        raise NodeError(f"{node}: the MODEL expects {unet.config.cross_attention_dim}-wide text conditioning but "
                        f"the CLIP's text encoder is {width} wide; connect the CLIP that belongs to this MODEL")
    sd_model = SDModel(tokenizer, text_encoder, unet, diffusers_vae, scheduler, name=name, source="comfyui")
    if resolution:
        sd_model = sd_model.at_resolution(int(resolution))
    return sd_model.freeze()


def resolution_input():
    """The optional working resolution of the nodes that sample latents (Erase, Probe, Report)."""
    return io.Int.Input("resolution", default=0, min=0, max=4096, step=8, optional=True,
                        tooltip="Work at this many pixels square; 0: the model's native size (512 for SD1.5). "
                                "Lower is much faster, e.g. 128 to try a workflow on a CPU")


__all__ = ["sd_model_from_comfy", "resolution_input"]
