"""Translation between ComfyUI objects (CLIP, MODEL, VAE, IMAGE) and what `erasure_core` works on.

Only the node files import this module, and only inside a running ComfyUI. The rules it enforces:
- A CLIP's effective weights (its own patches applied) are read through ComfyUI's own loader, then copied into
  ordinary tensors OUTSIDE inference mode, so autograd works on them (ComfyUI runs every node inside
  torch.inference_mode(), and inference tensors cannot be saved for backward).
- Training never touches ComfyUI's CLIP module (its layers add in place): `erasure_core` trains a transformers
  CLIPTextModel holding the same weights, and the result comes back as "set" patches on a `clip.clone()`, so
  the input CLIP stays bit-identical.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path

import torch

import comfy.model_management
import comfy.sd1_clip
import comfy.utils
import folder_paths

from erasure_core.errors import ErasureCancelled, ErasureError

LOG = logging.getLogger("robust_erasure")
CLIP_L_PREFIX = "clip_l.transformer."
TEXT_ENCODERS = "text_encoders"


# ----------------------------------------------------------------------------------------------------------------
# Errors, progress and cancellation
# ----------------------------------------------------------------------------------------------------------------


class NodeError(ValueError):
    """An error the user caused; ComfyUI shows its message on the node."""


@contextlib.contextmanager
def user_errors(node: str):
    """Turn `erasure_core`'s user-facing errors into clear node errors (the message, prefixed with the node)."""
    try:
        yield
    except ErasureCancelled:
        raise
    except ErasureError as err:
        raise NodeError(f"{node}: {err}") from err


def should_cancel() -> bool:
    """The `should_cancel` callback for `erasure_core`: True once the user pressed Cancel in ComfyUI."""
    return bool(comfy.model_management.processing_interrupted())


def raise_if_cancelled():
    """Re-raise ComfyUI's own interrupt (clears the flag) so the queue reports the run as interrupted."""
    comfy.model_management.throw_exception_if_processing_interrupted()


class Progress:
    """A `progress(step, total, logs)` callback that drives ComfyUI's progress bar and checks Cancel."""

    def __init__(self, total: int, on_logs=None):
        self.bar = comfy.utils.ProgressBar(max(1, int(total)))
        self.on_logs = on_logs

    def __call__(self, step: int, total: int, logs: dict | None = None):
        self.bar.update_absolute(int(step), int(total))
        if self.on_logs is not None and logs:
            self.on_logs(int(step), int(total), logs)


# ----------------------------------------------------------------------------------------------------------------
# File names
# ----------------------------------------------------------------------------------------------------------------

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_file_stem(name: str, what: str = "file name") -> str:
    """A file name stem that cannot leave its folder: no separators, no '..', no leading dots, <= 100 chars.

    Refuses (instead of silently rewriting) a name that tries to name another folder, so the user sees why.
    """
    raw = (name or "").strip()
    if not raw:
        raise NodeError(f"the {what} is empty")
    if "/" in raw or "\\" in raw or ".." in raw or raw.startswith("~") or ":" in raw or "\x00" in raw:
        raise NodeError(
            f"the {what} {raw!r} names a path; give a plain file name (letters, digits, '.', '_', '-'): files are "
            f"only written into ComfyUI's models/{TEXT_ENCODERS} folder"
        )
    stem = raw[: -len(".safetensors")] if raw.lower().endswith(".safetensors") else raw
    stem = _SAFE.sub("_", stem).strip("._")[:100]
    if not stem:
        raise NodeError(f"the {what} {raw!r} has no usable characters")
    return stem


def text_encoder_output_path(name: str, overwrite: bool = False) -> Path:
    """A path inside the first models/text_encoders folder for `name` (sanitised), never outside it.

    Without `overwrite`, an existing file gets a numbered sibling (name_00001.safetensors...).
    """
    folder = Path(folder_paths.get_folder_paths(TEXT_ENCODERS)[0]).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    stem = safe_file_stem(name)
    path = (folder / f"{stem}.safetensors").resolve()
    counter = 1
    while path.exists() and not overwrite:
        path = (folder / f"{stem}_{counter:05d}.safetensors").resolve()
        counter += 1
    if path.parent != folder:
        raise NodeError(f"refusing to write {path}: outside {folder}")
    return path


def text_encoder_input_path(name: str) -> Path:
    """The full path of a file listed in models/text_encoders (the name must be one ComfyUI lists)."""
    if name not in folder_paths.get_filename_list(TEXT_ENCODERS):
        raise NodeError(f"{name!r} is not a file in ComfyUI's models/{TEXT_ENCODERS} folder")
    return Path(folder_paths.get_full_path_or_raise(TEXT_ENCODERS, name))


# ----------------------------------------------------------------------------------------------------------------
# CLIP <-> transformers CLIPTextModel
# ----------------------------------------------------------------------------------------------------------------


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

    part = sd1_clip_part(clip)
    tm = part.transformer.text_model
    token = tm.embeddings.token_embedding.weight
    layer0 = tm.encoder.layers[0]
    special = getattr(part, "special_tokens", {}) or {}
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
        bos_token_id=int(special.get("start", 49406)),
        eos_token_id=int(special.get("end", 49407)),
        pad_token_id=int(special.get("pad", 49407)),
    )


def clip_text_state(clip) -> dict[str, torch.Tensor]:
    """The CLIP's effective SD1 text-encoder weights (its patches applied), keys `text_model.*`, as ordinary
    fp32 tensors that own their memory (safe to train on; the CLIP is never modified)."""
    from erasure_core.encoders import normalize_encoder_keys

    sd1_clip_part(clip)
    clip.load_model()  # ComfyUI applies this clone's patches to the shared module weights
    with torch.inference_mode(False):
        raw = {
            k: v.detach().to("cpu", torch.float32, copy=True)
            for k, v in clip.cond_stage_model.state_dict().items()
            if k.startswith(CLIP_L_PREFIX)
        }
        return {k: v.clone() for k, v in normalize_encoder_keys(raw).items()}


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


# ----------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------


def image_to_nchw(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [N, H, W, C] in [0, 1] -> erasure_core images [N, 3, H, W] float32."""
    if image.ndim == 3:
        image = image[None]
    x = image[..., :3].permute(0, 3, 1, 2).float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


def nchw_to_image(images: torch.Tensor) -> torch.Tensor:
    """erasure_core images [N, 3, H, W] -> ComfyUI IMAGE [N, H, W, 3] float32 in [0, 1]."""
    return images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).contiguous().cpu()


def pil_to_image(pil_images) -> torch.Tensor:
    import numpy as np

    arrays = [np.asarray(p.convert("RGB"), dtype=np.float32) / 255.0 for p in pil_images]
    return torch.from_numpy(np.stack(arrays))
