"""Key layouts and model families, decided from names and shapes alone (pure: dicts in, dicts out; no I/O).

Text encoders come in several key layouts (ours, transformers 4/5, AdvUnlearn's training files, SD1 checkpoints,
ComfyUI); all map to one canonical layout, `text_model.*`. A file is accepted as an SD 1.x text encoder only if its
shapes are a CLIP text transformer no larger than SD1's ViT-L/14 (768 wide, 12 layers, 49,408 tokens, 77
positions) and any config it declares matches its tensors exactly, so no size is ever taken from a config alone.
Whole checkpoints are told apart by family (SD1, SD2, SDXL, SD3, Flux...).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from .errors import ModelFormatError

CANONICAL_PREFIX = "text_model."
# Source prefixes, longest first, each mapped to the canonical `text_model.` prefix.
LAYOUT_PREFIXES = (
    ("text_encoder.text_model.", "advunlearn-pt"),
    ("cond_stage_model.transformer.text_model.", "sd1-checkpoint"),
    ("cond_stage_model.transformer.", "sd1-checkpoint-old"),
    ("clip_l.transformer.text_model.", "comfyui"),
    ("clip_l.transformer.", "comfyui-old"),
    ("text_model.", "text_model"),
    ("", "transformers5"),
)
# The parts of a CLIPTextModel below `text_model.`: a key outside these is not an encoder weight.
ENCODER_PARTS = ("embeddings.", "encoder.", "final_layer_norm.")
# CLIP's projection head and logit scale ride along in ComfyUI's clip_l; SD1 conditioning never uses them.
IGNORED_EXTRAS = ("clip_l.transformer.text_projection.weight", "clip_l.logit_scale")
# AdvUnlearn's training script registers the encoder's parts a second time on its wrapper, so its .pt files hold
# `embedding.*`, `encoder.*` and `final_layer_norm.*` aliases beside `text_encoder.text_model.*`.
ADVUNLEARN_ALIASES = {
    "embedding.": "text_encoder.text_model.embeddings.",
    "encoder.": "text_encoder.text_model.encoder.",
    "final_layer_norm.": "text_encoder.text_model.final_layer_norm.",
}
KNOWN_LAYOUTS = (
    "Known layouts: text_model.* (ours, transformers, diffusers), embeddings./encoder./final_layer_norm. "
    "(transformers 5), text_encoder.text_model.* (AdvUnlearn .pt), cond_stage_model.transformer.* "
    "(SD1 checkpoints), clip_l.transformer.* (ComfyUI)."
)
# SD 1.x's text encoder, CLIP ViT-L/14: the upper bound of every size we accept.
SD1_WIDTH, SD1_LAYERS, SD1_VOCAB, SD1_POSITIONS = 768, 12, 49408, 77
SD1_SUPPORTED = (
    "Supported: SD 1.x text encoders (CLIP ViT-L/14: 768 wide, 12 layers, vocabulary 49408, 77 positions) and "
    "smaller encoders of the same design."
)
CONFIG_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers",
    "num_attention_heads", "max_position_embeddings", "hidden_act", "layer_norm_eps", "bos_token_id",
    "eos_token_id", "pad_token_id",
)
# transformers' activation names (transformers.activations.ACT2FN) that a CLIP text encoder may use.
ACTIVATIONS = ("quick_gelu", "gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_accurate", "relu",
               "silu", "swish")
_SD1_TEXT_CONFIG_FILE = Path(__file__).resolve().parent / "configs" / "sd1_text_encoder.json"


def short_list(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" ... and {len(keys) - limit} more" if len(keys) > limit else "")


def is_position_ids(key: str) -> bool:
    # A buffer (0..76), not a weight; transformers 5 does not even save it.
    return key.endswith(("embeddings.position_ids", "embedding.position_ids"))


def canonical_key(key: str) -> tuple[str, str] | None:
    """(canonical key, layout name) for one source key, or None when it is no encoder weight."""
    for prefix, layout in LAYOUT_PREFIXES:
        if key.startswith(prefix):
            rest = key[len(prefix):]
            if rest.startswith(ENCODER_PARTS):
                return CANONICAL_PREFIX + rest, layout
    return None


@dataclass(frozen=True)
class EncoderLayout:
    """How a state dict's keys map to the canonical layout. `keys`: canonical -> source key; `aliases`: alias
    source key -> the source key it must equal (AdvUnlearn training files)."""

    name: str
    keys: dict[str, str]
    aliases: dict[str, str]


def _foreign_keys_message(keys: list[str]) -> str | None:
    if any(k.startswith("clip_g.") for k in keys):
        return "found ComfyUI's clip_g (SDXL's second text encoder, OpenCLIP bigG)"
    if any(k.split(".")[-2:] == ["text_projection", "weight"] for k in keys):
        return "found a CLIP text encoder with a projection head (SDXL's text_encoder_2 layout)"
    return None


def encoder_layout(keys: Iterable[str]) -> EncoderLayout:
    """The one layout of an encoder state dict's keys; unexpected keys and mixed layouts are refused, naming them."""
    keys = [k for k in keys if not is_position_ids(k) and k not in IGNORED_EXTRAS]
    by_layout: dict[str, dict[str, str]] = {}
    unexpected = []
    for key in keys:
        mapped = canonical_key(key)
        if mapped is None:
            unexpected.append(key)
        else:
            by_layout.setdefault(mapped[1], {})[mapped[0]] = key
    aliases = {}
    if "advunlearn-pt" in by_layout:
        aliases, unexpected = _advunlearn_aliases(keys, by_layout, unexpected)
    if unexpected:
        found = _foreign_keys_message(unexpected)
        raise ModelFormatError(
            f"not a CLIP text encoder state dict: {len(unexpected)} unexpected key(s): {short_list(unexpected)}. "
            + (f"{found[0].upper()}{found[1:]}. {SD1_SUPPORTED} " if found else "") + KNOWN_LAYOUTS
        )
    if not by_layout:
        raise ModelFormatError("no text encoder weights found (the state dict is empty or holds only buffers)")
    if len(by_layout) > 1:
        counts = ", ".join(f"{len(v)} in layout {k!r}" for k, v in sorted(by_layout.items()))
        raise ModelFormatError(
            f"the text encoder keys mix layouts ({counts}); a file holds one encoder in one layout, so refusing to "
            "guess which keys belong to it. Save each encoder on its own."
        )
    (name, mapping), = by_layout.items()
    return EncoderLayout(name, mapping, aliases)


def _advunlearn_aliases(keys, by_layout, unexpected):
    """Split AdvUnlearn's wrapper aliases off; each must have its `text_encoder.text_model.*` twin."""
    aliases = {}
    for key in keys:
        prefix = next((p for p in ADVUNLEARN_ALIASES if key.startswith(p)), None)
        if prefix is not None and not key.startswith("text_encoder."):
            aliases[key] = ADVUNLEARN_ALIASES[prefix] + key[len(prefix):]
    orphans = [k for k, twin in aliases.items() if twin not in set(keys)]
    if orphans:
        raise ModelFormatError(
            f"AdvUnlearn training file: alias key(s) {short_list(orphans)} have no text_encoder.text_model.* twin; "
            "the file is incomplete or not from AdvUnlearn's training script"
        )
    for layout in list(by_layout):
        if layout != "advunlearn-pt":
            for canon, key in list(by_layout[layout].items()):
                if key in aliases:
                    del by_layout[layout][canon]
            if not by_layout[layout]:
                del by_layout[layout]
    return aliases, [k for k in unexpected if k not in aliases]


def normalize_layout(state: Mapping) -> tuple[dict, str]:
    """(canonical -> value, layout name) for a state dict of tensors or shapes; aliases are not compared here."""
    layout = encoder_layout(state)
    return {canon: state[key] for canon, key in layout.keys.items()}, layout.name


# ----------------------------------------------------------------------------------------------------------------
# Sizes and family of an encoder, from canonical shapes
# ----------------------------------------------------------------------------------------------------------------


def _table_shape(shapes: Mapping[str, tuple], key: str) -> tuple[int, int]:
    shape = shapes.get(CANONICAL_PREFIX + key)
    if shape is None:
        raise ModelFormatError(f"text encoder weights lack {CANONICAL_PREFIX + key!r}, so its shape cannot be read")
    if len(shape) != 2 or min(shape) < 1:
        raise ModelFormatError(f"{CANONICAL_PREFIX + key} has shape {tuple(shape)}; it must be a 2-D table "
                               "(rows x width) with at least one row")
    return int(shape[0]), int(shape[1])


def layer_count(keys: Iterable[str]) -> int:
    prefix = CANONICAL_PREFIX + "encoder.layers."
    indices = set()
    for key in keys:
        if key.startswith(prefix):
            index = key[len(prefix):].split(".", 1)[0]
            if not index.isdigit() or len(index) > 4:
                raise ModelFormatError(f"text encoder key {key!r} has no layer number")
            indices.add(int(index))
    return max(indices) + 1 if indices else 0


def encoder_dims(shapes: Mapping[str, tuple]) -> dict:
    """{"width", "layers", "vocab", "positions", "intermediate"} of canonical `text_model.*` shapes."""
    vocab, width = _table_shape(shapes, "embeddings.token_embedding.weight")
    positions, position_width = _table_shape(shapes, "embeddings.position_embedding.weight")
    if position_width != width:
        raise ModelFormatError(f"the token table is {width} wide but the position table {position_width}; "
                               "the file mixes parts of different encoders")
    fc1 = shapes.get(CANONICAL_PREFIX + "encoder.layers.0.mlp.fc1.weight")
    return {"width": width, "layers": layer_count(shapes), "vocab": vocab, "positions": positions,
            "intermediate": int(fc1[0]) if fc1 is not None and len(fc1) == 2 else None}


def describe_size(dims: Mapping) -> str:
    return "width {width}, {layers} layers, vocabulary {vocab}".format(**dims)


def refuse_foreign_encoder(dims: Mapping, where: str) -> None:
    """Refuse an encoder that is not SD 1.x's (or a smaller one of its design), naming what was found."""
    width, layers = dims["width"], dims["layers"]
    if width == 1024:
        found = f"an SD 2.x OpenCLIP-H text encoder ({width} wide, {layers} layers)"
    elif width == 1280:
        found = f"an SDXL text_encoder_2 (OpenCLIP bigG, {width} wide, {layers} layers)"
    elif width > SD1_WIDTH:
        found = f"a text encoder {width} wide, wider than SD 1.x's {SD1_WIDTH}"
    elif layers > SD1_LAYERS or layers < 1:
        found = f"a text encoder with {layers} layers (SD 1.x's has {SD1_LAYERS})"
    elif dims["vocab"] != SD1_VOCAB:
        found = f"a vocabulary of {dims['vocab']} tokens (SD 1.x's CLIP tokenizer has {SD1_VOCAB})"
    elif dims["positions"] != SD1_POSITIONS:
        found = f"{dims['positions']} token positions (SD 1.x's encoder has {SD1_POSITIONS})"
    elif dims["intermediate"] is not None and not 1 <= dims["intermediate"] <= 8 * width:
        found = f"an MLP {dims['intermediate']} wide for a {width}-wide encoder"
    else:
        return
    raise ModelFormatError(f"{where}: found {found}. {SD1_SUPPORTED}")


# ----------------------------------------------------------------------------------------------------------------
# Configs: declared ones checked against the tensors; missing ones inferred by SD1's convention
# ----------------------------------------------------------------------------------------------------------------


def sd1_text_config(**changes) -> dict:
    """SD1's text-encoder config (configs/sd1_text_encoder.json, CLIP ViT-L/14) with `changes` applied: the one
    place its values are written down. Smaller encoders of the same design (the demo model's, the tiny test
    models) are SD1's with a few sizes changed."""
    unknown = sorted(set(changes) - set(CONFIG_FIELDS))
    if unknown:
        raise ValueError(f"not a text-encoder config field: {', '.join(unknown)} (known: {', '.join(CONFIG_FIELDS)})")
    return {**json.loads(_SD1_TEXT_CONFIG_FILE.read_text(encoding="utf-8")), **changes}


def config_fields(config: Mapping) -> dict:
    """The CLIPTextConfig fields we record, from a config dict (a full CLIPConfig gives its text half)."""
    if not isinstance(config, Mapping):
        raise ModelFormatError(f"a text encoder config must be a JSON object, not {type(config).__name__}")
    if config.get("model_type") == "clip" and isinstance(config.get("text_config"), Mapping):
        config = config["text_config"]
    return {k: config[k] for k in CONFIG_FIELDS if k in config}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _field_problems(cfg: Mapping) -> list[str]:
    problems = []
    for name in ("vocab_size", "hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers",
                 "num_attention_heads", "max_position_embeddings"):
        if name in cfg and not (_is_int(cfg[name]) and cfg[name] >= 1):
            problems.append(f"{name}={cfg[name]!r} (must be a positive integer)")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if cfg.get(name) is not None and not (_is_int(cfg[name]) and 0 <= cfg[name] < SD1_VOCAB):
            problems.append(f"{name}={cfg[name]!r} (must be a token id below {SD1_VOCAB})")
    if "hidden_act" in cfg and cfg["hidden_act"] not in ACTIVATIONS:
        problems.append(f"hidden_act={cfg['hidden_act']!r} (must be one of {', '.join(ACTIVATIONS)})")
    eps = cfg.get("layer_norm_eps", 1e-5)
    if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps) and 0 < eps < 1):
        problems.append(f"layer_norm_eps={eps!r} (must be a small positive number)")
    return problems


def _heads_by_convention(width: int) -> int:
    # SD1's CLIP uses 64-wide heads; a width that 64 does not divide gets one head (as for tiny test models).
    return max(1, width // 64) if width % 64 == 0 else 1


_SIZE_BOUNDS = {"hidden_size": SD1_WIDTH, "num_hidden_layers": SD1_LAYERS, "vocab_size": SD1_VOCAB,
                "max_position_embeddings": SD1_POSITIONS, "intermediate_size": 8 * SD1_WIDTH,
                "projection_dim": 8 * SD1_WIDTH, "num_attention_heads": SD1_WIDTH}


def text_config_for(dims: Mapping, declared: Mapping | None, where: str) -> dict:
    """A complete CLIPTextConfig dict for an encoder of `dims` (read off its tensors).

    A declared config (our metadata, config.json) is checked field by field and bounded by SD 1.x's sizes, so a
    model built from it is never larger than SD1's encoder; whether the tensors match it exactly is for the
    caller's strict shape check. Sizes it does not declare come from the tensors; heads and activation from
    SD1's convention.
    """
    cfg = config_fields(declared) if declared is not None else {}
    problems = _field_problems(cfg)
    if not problems:
        problems = [f"{k}={cfg[k]} (more than SD 1.x's {bound})" for k, bound in _SIZE_BOUNDS.items()
                    if k in cfg and cfg[k] > bound]
    actual = {"hidden_size": dims["width"], "num_hidden_layers": dims["layers"], "vocab_size": dims["vocab"],
              "max_position_embeddings": dims["positions"], "intermediate_size": dims.get("intermediate")}
    config = {**sd1_text_config(), "projection_dim": dims["width"],
              **{k: v for k, v in actual.items() if v is not None}, **cfg}
    if "num_attention_heads" not in cfg:
        config["num_attention_heads"] = _heads_by_convention(config["hidden_size"])
    if not problems and config["hidden_size"] % config["num_attention_heads"]:
        problems.append(f"num_attention_heads={config['num_attention_heads']} (does not divide the width "
                        f"{config['hidden_size']})")
    if problems:
        raise ModelFormatError(
            f"{where}: the declared text encoder config is not valid for an SD 1.x encoder: {'; '.join(problems)}. "
            "Fix or remove the config (sizes are then read from the tensors)."
        )
    return config


# ----------------------------------------------------------------------------------------------------------------
# Whole-checkpoint families
# ----------------------------------------------------------------------------------------------------------------

UNET_PREFIX = "model.diffusion_model."
CLIP_PREFIX = "cond_stage_model.transformer."
SUPPORTED = (
    "Supported: Stable Diffusion 1.4/1.5 and their fine-tunes (any SD1-architecture size), as a diffusers folder "
    "(model_index.json with unet/, vae/, text_encoder/) or a single-file checkpoint (.safetensors, or .ckpt "
    "loaded with weights_only=True) with model.diffusion_model.*, first_stage_model.* and "
    "cond_stage_model.transformer.* keys."
)
FAMILY_DESCRIPTIONS = {
    "sd1": "a Stable Diffusion 1.x checkpoint",
    "sd1-inpainting": "an SD 1.x inpainting checkpoint (9 UNet input channels): it can take a robust encoder "
    "through bake, but cannot be used for erasure or generation here",
    "sd1-variant": "an SD 1.x-like checkpoint whose UNet does not take 4 latent channels",
    "sd2": "a Stable Diffusion 2.x checkpoint (OpenCLIP ViT-H text encoder, cond_stage_model.model.* keys or a "
    "1024-wide text context)",
    "sdxl": "an SDXL checkpoint (conditioner.embedders.* keys: two text encoders)",
    "sd3": "a Stable Diffusion 3 checkpoint (joint_blocks.* keys)",
    "flux": "a Flux checkpoint (double_blocks.* keys)",
    "text-encoder": "a standalone text encoder, not a whole model",
    "unknown": "no Stable Diffusion 1.x layout",
}


def shape_of(value) -> tuple | None:
    """A tensor's, TensorSpec's or tuple's shape; None for anything else."""
    shape = getattr(value, "shape", value)
    return tuple(shape) if isinstance(shape, (tuple, list)) or type(shape).__name__ == "Size" else None


def detect_family(keys_or_state: Mapping | Iterable[str]) -> str:
    """The model family of a checkpoint's keys (a state dict, a {key: shape} dict, or just the key names).

    Returns one of: "sd1", "sd1-inpainting", "sd1-variant", "sd2", "sdxl", "sd3", "flux", "text-encoder",
    "unknown". With shapes, SD2 files in CLIP layout (1024-wide context) and inpainting UNets are told apart.
    """
    state = keys_or_state if isinstance(keys_or_state, Mapping) else dict.fromkeys(keys_or_state)
    keys = list(state)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("conditioner.embedders."):
        return "sdxl"
    if has("cond_stage_model.model."):
        return "sd2"
    if any("joint_blocks." in k for k in keys):
        return "sd3"
    if any("double_blocks." in k for k in keys):
        return "flux"
    if has(UNET_PREFIX + "input_blocks.") and has(CLIP_PREFIX):
        return _sd1_or_lookalike(state)
    try:
        encoder_layout(keys)
        return "text-encoder"
    except ModelFormatError:
        return "unknown"


def _sd1_or_lookalike(state: Mapping) -> str:
    to_k = next((k for k in state if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight")), None)
    context = shape_of(state[to_k]) if to_k else None
    if context is not None and context[-1] == 1024:
        return "sd2"
    conv_in = shape_of(state.get(UNET_PREFIX + "input_blocks.0.0.weight"))
    if conv_in is not None and len(conv_in) == 4 and conv_in[1] == 9:
        return "sd1-inpainting"
    if conv_in is not None and (len(conv_in) != 4 or conv_in[1] != 4):
        return "sd1-variant"
    return "sd1"


def refuse_unless_sd1(family: str, keys: Iterable[str], path, allow_inpainting: bool = False) -> None:
    """Raise ModelFormatError saying what was found and what is supported, unless `family` is SD1."""
    accepted = {"sd1"} | ({"sd1-inpainting", "sd1-variant"} if allow_inpainting else set())
    if family in accepted:
        return
    sample = ", ".join(sorted(keys)[:4])
    raise ModelFormatError(
        f"{path}: found {FAMILY_DESCRIPTIONS.get(family, family)} (keys such as {sample}). {SUPPORTED}"
    )
