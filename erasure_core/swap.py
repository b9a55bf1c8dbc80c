"""Put a robust text encoder into a model: `swap_text_encoder` (a diffusers pipeline in memory) and `bake` (a new
SD1.x single-file checkpoint on disk). Both refuse an encoder that does not fit the model, naming both shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch
from transformers import CLIPTextModel

from .encoders import (
    EncoderFile,
    as_encoder_file,
    check_encoder_fits,
    check_encoder_state,
    encoder_hash,
    load_robust_text_encoder,
    state_dict_from_text_encoder,
    strict_check,
)
from .errors import ModelFormatError
from .files import atomic_save_safetensors
from .layouts import config_fields, detect_family, encoder_layout, refuse_unless_sd1
from .weightfile import FLOAT_DTYPES, check_tensors, open_weights


def swap_text_encoder(pipe, path_or_model):
    """Put a robust encoder (a path, EncoderFile or CLIPTextModel) into a diffusers StableDiffusionPipeline.

    Refuses an encoder whose width/depth/vocabulary differs from the pipeline's, or that is not an SD 1.x
    encoder; keeps the pipeline's device and dtype. Returns the pipeline (changed in place).
    """
    current = pipe.text_encoder
    if isinstance(path_or_model, CLIPTextModel):
        check_encoder_state(state_dict_from_text_encoder(path_or_model), config_fields(path_or_model.config.to_dict()),
                            "the robust text encoder")
        check_encoder_fits(path_or_model, current)
        encoder = path_or_model
    else:
        encoder = load_robust_text_encoder(path_or_model, reference=current.config)
    encoder = encoder.to(device=current.device, dtype=current.dtype).eval()
    encoder.requires_grad_(False)
    pipe.register_modules(text_encoder=encoder)
    return pipe


def _checkpoint_encoder_keys(specs: Mapping) -> dict[str, str]:
    """canonical key -> checkpoint key for the text encoder of an SD1 single-file checkpoint."""
    keys = [k for k in specs if k.startswith("cond_stage_model.")]
    if not keys:
        raise ModelFormatError("the checkpoint has no cond_stage_model.transformer.* text encoder keys")
    return encoder_layout(keys).keys


def _robust_encoder(encoder) -> tuple[dict[str, torch.Tensor], dict]:
    """(checked canonical state, provenance record) of what is being baked in."""
    if isinstance(encoder, CLIPTextModel):
        state = state_dict_from_text_encoder(encoder)
        check_encoder_state(state, config_fields(encoder.config.to_dict()), "the robust text encoder")
        return state, {"hash": encoder_hash(state)}
    checked = as_encoder_file(encoder)
    record = {"hash": encoder_hash(checked.state_dict)}
    if isinstance(encoder, (str, Path)):
        record = {"file": Path(encoder).name, **record,
                  **{k: v for k, v in checked.metadata.items() if k != "config"}}
    elif isinstance(encoder, EncoderFile):
        record.update({k: v for k, v in encoder.metadata.items() if k != "config"})
    return checked.state_dict, record


def bake(checkpoint: str | Path, encoder, out: str | Path) -> Path:
    """Write a new SD1.x single-file checkpoint (.safetensors) with `encoder` (path, EncoderFile, CLIPTextModel
    or state dict) in place of its text encoder.

    The encoder keys keep the source's prefix style and each replaced tensor's dtype; every other tensor is
    byte-identical; the source's safetensors metadata is kept (plus one key recording the baked encoder).
    A .ckpt source is read with weights_only=True; its non-tensor entries (global_step...) are not carried over.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    if out.suffix.lower() != ".safetensors":
        raise ModelFormatError(f"bake writes .safetensors only, not {out.name!r}")
    robust, record = _robust_encoder(encoder)
    with open_weights(checkpoint) as source:
        refuse_unless_sd1(detect_family(source.specs), source.specs, checkpoint, allow_inpainting=True)
        key_map = _checkpoint_encoder_keys(source.specs)
        base = {canon: source.specs[key] for canon, key in key_map.items()}
        check_encoder_fits(robust, {canon: spec.shape for canon, spec in base.items()})
        strict_check(robust, {canon: spec.shape for canon, spec in base.items()}, "robust text encoder")
        odd = sorted(k for k, spec in base.items() if spec.dtype not in FLOAT_DTYPES)
        if odd:
            raise ModelFormatError(f"{checkpoint}: its text encoder tensor {key_map[odd[0]]!r} is "
                                   f"{base[odd[0]].dtype}, not a float type; the checkpoint is not a plain SD1 file")
        tensors, metadata = source.read(check=False), dict(source.metadata)
    replaced = {key_map[c]: robust[c].detach().to("cpu", tensors[key_map[c]].dtype).contiguous() for c in key_map}
    check_tensors(replaced, "the robust text encoder in the checkpoint's dtype")
    baked = {**tensors, **replaced}
    if checkpoint.suffix.lower() != ".safetensors":
        baked = _unshare(baked)
    metadata["robust_erasure_baked_encoder"] = json.dumps(record, default=str)
    atomic_save_safetensors(baked, out, metadata=metadata)
    return out


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pickled checkpoints may hold tensors sharing storage (safetensors refuses them): give each its own."""
    seen: set[int] = set()
    out = {}
    for key, tensor in tensors.items():
        ptr = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if ptr in seen and tensor.numel() else tensor
        seen.add(ptr)
    return out
