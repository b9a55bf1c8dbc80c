"""A ComfyUI SD1 CLIP <-> a transformers CLIPTextModel, in both directions, without changing the CLIP.

Only the node files import this module, and only inside a running ComfyUI. The rules it enforces:
- A CLIP's effective weights (its own patches applied) are computed from its patcher's patches
  (`_patched_weights`), never read back after loading, and come out as ordinary tensors made OUTSIDE inference
  mode, so autograd works on them (ComfyUI runs every node inside torch.inference_mode(), and inference tensors
  cannot be saved for backward).
- Training never touches ComfyUI's CLIP module (its layers add in place): `erasure_core` trains a transformers
  CLIPTextModel holding the same weights, and the result comes back as "set" patches on a `clip.clone()`, so
  the input CLIP stays bit-identical.
"""

from __future__ import annotations

import torch

import comfy.sd1_clip

from ._errors import NodeError, user_errors
from ._patched_weights import effective_weights

CLIP_L_PREFIX = "clip_l.transformer."


def sd1_clip_part(clip, node: str = "this node"):
    """ComfyUI's SD1 CLIP-L module of a CLIP, or a NodeError saying what kind of CLIP it is instead."""
    if clip is None:
        raise NodeError(f"{node}: no CLIP connected")
    cond = clip.cond_stage_model
    part = getattr(cond, "clip_l", None)
    kind = type(cond).__name__
    if not isinstance(cond, comfy.sd1_clip.SD1ClipModel) or getattr(cond, "clip", None) != "clip_l" or part is None:
        encoders = sorted(n for n, _ in cond.named_children())
        raise NodeError(
            f"{node} works on Stable Diffusion 1.x CLIPs (one CLIP-L text encoder), but this CLIP is a {kind} "
            f"with text encoders {encoders}. SDXL, SD2, SD3, Flux and other families are not supported."
        )
    return part


def _activation_name(mlp) -> str:
    import comfy.clip_model

    for name, fn in comfy.clip_model.ACTIVATIONS.items():
        if mlp.activation is fn:
            return name
    return "quick_gelu"


def clip_text_config(clip):
    """A transformers CLIPTextConfig describing the CLIP's SD1 text encoder (read off ComfyUI's module)."""
    from transformers import CLIPTextConfig

    from erasure_core.layouts import sd1_text_config

    part = sd1_clip_part(clip)
    tm = part.transformer.text_model
    token = tm.embeddings.token_embedding.weight
    layer0 = tm.encoder.layers[0]
    special = getattr(part, "special_tokens", {}) or {}
    sd1 = sd1_text_config()  # its special tokens when the CLIP does not name them
    return CLIPTextConfig(
        vocab_size=int(token.shape[0]),
        hidden_size=int(token.shape[1]),
        intermediate_size=int(layer0.mlp.fc1.weight.shape[0]),
        projection_dim=int(token.shape[1]),
        num_hidden_layers=len(tm.encoder.layers),
        num_attention_heads=int(layer0.self_attn.heads),
        max_position_embeddings=int(tm.embeddings.position_embedding.weight.shape[0]),
        hidden_act=_activation_name(layer0.mlp),
        layer_norm_eps=float(tm.final_layer_norm.eps),
        bos_token_id=int(special.get("start", sd1["bos_token_id"])),
        eos_token_id=int(special.get("end", sd1["eos_token_id"])),
        pad_token_id=int(special.get("pad", sd1["pad_token_id"])),
    )


def clip_text_state(clip) -> dict[str, torch.Tensor]:
    """The CLIP's effective SD1 text-encoder weights (its own patches applied, see _patched_weights), keys
    `text_model.*`, as ordinary fp32 tensors that own their memory (safe to train on; the CLIP is never
    modified or loaded)."""
    from erasure_core.encoders import normalize_encoder_keys

    sd1_clip_part(clip)
    with torch.inference_mode(False):
        return normalize_encoder_keys(effective_weights(clip.patcher, CLIP_L_PREFIX))


def clip_to_text_encoder(clip):
    """A transformers CLIPTextModel (fp32, trainable tensors) holding the CLIP's effective weights."""
    from erasure_core.encoders import text_encoder_from_state

    config = clip_text_config(clip)
    state = clip_text_state(clip)
    with torch.inference_mode(False):
        return text_encoder_from_state(state, config, torch.float32)


def clip_with_encoder(clip, encoder_or_state, node: str = "this node"):
    """A clone of `clip` whose SD1 text encoder holds `encoder_or_state` (a CLIPTextModel or a `text_model.*`
    state dict), as "set" patches: the input CLIP and its module are left untouched.

    Refuses (naming both shapes) an encoder that does not fit, and checks that every key was applied.
    """
    from erasure_core.encoders import check_encoder_fits, normalize_encoder_keys, state_dict_from_text_encoder

    part = sd1_clip_part(clip, node)
    if isinstance(encoder_or_state, torch.nn.Module):
        state = state_dict_from_text_encoder(encoder_or_state)
    else:
        state = normalize_encoder_keys(encoder_or_state)
    with user_errors(node):
        check_encoder_fits(state, clip_text_config(clip))
    own = {k: v for k, v in part.transformer.state_dict().items() if k.startswith("text_model.")}
    own.pop("text_model.embeddings.position_ids", None)
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    bad = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or extra or bad:
        raise NodeError(
            f"{node}: the text encoder's weights do not match this CLIP: {len(missing)} missing {missing[:3]}, "
            f"{len(extra)} unexpected {extra[:3]}, {len(bad)} misshaped {bad[:3]}"
        )
    patches = {CLIP_L_PREFIX + k: ("set", (v.detach().to("cpu", torch.float32).contiguous(),)) for k, v in state.items()}
    out = clip.clone()
    applied = set(out.add_patches(patches, 1.0, 1.0))
    if applied != set(patches):
        raise NodeError(f"{node}: ComfyUI did not accept {len(set(patches) - applied)} of the encoder's weights")
    return out
