"""SD1 CLIP text-encoder files: every known layout in, one layout out; checked before trusted.

Reading follows one rule: look at the tensors first (names, shapes, dtypes from the header, no data), decide the
layout (`layouts.encoder_layout`) and refuse foreign families by shape, check a declared config against the
tensors with every size bounded by SD1's, check every shape, and only then read the data and check it is finite.

We write one layout: `.safetensors` with `text_model.*` keys (what ComfyUI's CLIPLoader detects and transformers
4.x and 5.x load), fp16 by default, its CLIPTextConfig in the metadata. Swap and bake live in `swap.py`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from transformers import CLIPTextConfig, CLIPTextModel

from .errors import ModelFormatError
from .files import atomic_save_safetensors
from .layouts import (
    CANONICAL_PREFIX,
    config_fields,
    describe_size,
    detect_family,
    encoder_dims,
    encoder_layout,
    is_position_ids,
    refuse_foreign_encoder,
    refuse_unless_sd1,
    shape_of,
    short_list,
    text_config_for,
)
from .weightfile import check_tensors, open_weights, read_json_object

FORMAT_NAME = "robust-erasure-text-encoder"
FORMAT_VERSION = 1
# Metadata key holding everything we record (config, provenance, caller's fields) as one JSON object, so values
# keep their types; `format`, `format_version` and `library_version` are also written flat for other tools.
METADATA_JSON_KEY = "robust_erasure"
_FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.bin")


@dataclass
class EncoderFile:
    """A checked text encoder: canonical `text_model.*` tensors, metadata, the layout it came in, and its config
    (the declared one, checked against the tensors; None when the file declares none)."""

    state_dict: dict[str, torch.Tensor]
    metadata: dict = field(default_factory=dict)
    source_format: str = ""
    config: dict | None = None
    path: str = ""


# ----------------------------------------------------------------------------------------------------------------
# Key layouts of in-memory state dicts
# ----------------------------------------------------------------------------------------------------------------


def _check_aliases(aliases: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> None:
    """AdvUnlearn's training files hold each weight under two names: fine only when both hold the same tensor."""
    differ = [a for a, twin in aliases.items()
              if not (tensors[a].shape == tensors[twin].shape and tensors[a].dtype == tensors[twin].dtype
                      and torch.equal(tensors[a], tensors[twin]))]
    if differ:
        pairs = ", ".join(f"{a!r} vs {aliases[a]!r}" for a in sorted(differ)[:4])
        raise ModelFormatError(
            f"{len(differ)} alias key(s) hold different tensors from their twins ({pairs}); refusing to guess "
            "which one is the trained encoder"
        )


def normalize_with_layout(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """`normalize_encoder_keys`, also returning the layout found (e.g. "sd1-checkpoint", "advunlearn-pt")."""
    odd = [repr(k) for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if odd:
        raise ModelFormatError(f"a state dict maps names to tensors; these entries do not: {short_list(odd, 4)}")
    layout = encoder_layout(state_dict)
    _check_aliases(layout.aliases, state_dict)
    return {canon: state_dict[key] for canon, key in layout.keys.items()}, layout.name


def normalize_encoder_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Canonical `text_model.*` keys from any known encoder layout; `position_ids` buffers are dropped.
    AdvUnlearn's aliases are dropped only when they equal their twins. Foreign keys and mixed layouts raise."""
    return normalize_with_layout(state_dict)[0]


def state_dict_from_text_encoder(text_encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Canonical `text_model.*` state dict of a CLIPTextModel (transformers 4.x keys have the prefix, 5.x not)."""
    return normalize_encoder_keys(text_encoder.state_dict())


def _as_canonical_state(obj) -> dict[str, torch.Tensor]:
    if isinstance(obj, torch.nn.Module):
        return state_dict_from_text_encoder(obj)
    if isinstance(obj, EncoderFile):
        return obj.state_dict
    return normalize_encoder_keys(obj)


# ----------------------------------------------------------------------------------------------------------------
# Shapes and configs
# ----------------------------------------------------------------------------------------------------------------


def encoder_shape(obj) -> dict:
    """{"width", "layers", "vocab", "positions"} of a state dict (any layout), CLIPTextModel or config."""
    if isinstance(obj, CLIPTextModel):
        obj = obj.config
    if isinstance(obj, CLIPTextConfig) or (isinstance(obj, Mapping) and not _looks_like_state(obj)):
        cfg = config_fields(obj.to_dict() if isinstance(obj, CLIPTextConfig) else obj)
        return {"width": cfg.get("hidden_size"), "layers": cfg.get("num_hidden_layers"),
                "vocab": cfg.get("vocab_size"), "positions": cfg.get("max_position_embeddings")}
    # Canonical shapes (a header) are taken as they are; tensors in any layout are normalised first.
    shapes_only = isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values())
    state = obj if shapes_only else _as_canonical_state(obj)
    dims = encoder_dims({k: shape_of(v) for k, v in state.items()})
    return {k: dims[k] for k in ("width", "layers", "vocab", "positions")}


def _looks_like_state(obj) -> bool:  # tensors, or shapes (tuples) when only a header was read
    return isinstance(obj, Mapping) and any(isinstance(v, (torch.Tensor, tuple, torch.Size)) for v in obj.values())


def check_encoder_fits(state_or_config, target) -> None:
    """Raise ModelFormatError, naming both shapes, if an encoder's width, depth or vocabulary differs from the
    target's (a CLIPTextModel, CLIPTextConfig, config dict or state dict)."""
    have, want = encoder_shape(state_or_config), encoder_shape(target)
    if any(have[k] != want[k] for k in ("width", "layers", "vocab") if have[k] is not None and want[k] is not None):
        raise ModelFormatError(
            f"the text encoder does not fit: it has {describe_size(have)}; the target has {describe_size(want)}. "
            "Robust encoders only fit models with the same CLIP text encoder (SD 1.4/1.5 and their fine-tunes "
            "use CLIP ViT-L/14: width 768, 12 layers, vocabulary 49408)."
        )


def _skeleton(config: CLIPTextConfig):
    """(a CLIPTextModel on the meta device, canonical -> own key map, canonical key -> expected shape)."""
    with torch.device("meta"):
        skeleton = CLIPTextModel(config)  # no random init: every weight is assigned from a state dict
    own = skeleton.state_dict()
    # transformers 4.x keeps the `text_model.` prefix in its own keys, 5.x drops it.
    key_map = {(k if k.startswith(CANONICAL_PREFIX) else CANONICAL_PREFIX + k): k
               for k in own if not is_position_ids(k)}
    return skeleton, key_map, {canon: own[key].shape for canon, key in key_map.items()}


def strict_check(state: Mapping, expected: Mapping[str, torch.Size], what: str = "text encoder"):
    """Raise ModelFormatError listing missing, extra and misshaped keys (`state` holds tensors or shapes)."""
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    misshaped = [f"{k} {shape_of(state[k])} (expected {tuple(expected[k])})"
                 for k in expected if k in state and shape_of(state[k]) != tuple(expected[k])]
    if missing or extra or misshaped:
        parts = [f"{len(missing)} missing: {short_list(missing)}"] if missing else []
        parts += [f"{len(extra)} unexpected: {short_list(extra)}"] if extra else []
        parts += [f"{len(misshaped)} misshaped: {short_list(misshaped, 4)}"] if misshaped else []
        raise ModelFormatError(
            f"the {what} weights do not match the expected architecture: " + "; ".join(parts)
            + ". The file is truncated, from another model family, or was saved with the wrong config."
        )


def checked_config(shapes: Mapping[str, tuple], declared: Mapping | None, where: str) -> dict:
    """The encoder's CLIPTextConfig dict, from canonical shapes alone: foreign families refused, a declared
    config checked and bounded, every key and shape checked. No data is needed, none is allocated."""
    dims = encoder_dims(shapes)
    refuse_foreign_encoder(dims, where)
    config = text_config_for(dims, declared, where)
    strict_check(shapes, _skeleton(CLIPTextConfig(**config))[2])
    return config


def check_encoder_state(state: Mapping[str, torch.Tensor], declared: Mapping | None = None,
                        where: str = "text encoder weights") -> dict:
    """Every check a file gets, for an in-memory canonical state dict; returns its config dict."""
    config = checked_config({k: shape_of(v) for k, v in state.items()}, declared, where)
    check_tensors(state, where)
    return config


def infer_text_config(state_dict: Mapping[str, torch.Tensor], reference=None) -> CLIPTextConfig:
    """A CLIPTextConfig from tensor shapes (width, depth, vocabulary, positions, MLP width).

    Shapes cannot tell the number of attention heads or the activation: those come from `reference` (a
    CLIPTextModel or CLIPTextConfig of the same shape) when given, else from the SD1 convention (64-wide heads,
    quick_gelu; exact for SD 1.x's ViT-L/14 encoder).
    """
    state = _as_canonical_state(state_dict)
    declared = None
    if reference is not None:
        check_encoder_fits(state, reference)
        ref = reference.config if isinstance(reference, CLIPTextModel) else reference
        cfg = config_fields(ref.to_dict() if isinstance(ref, CLIPTextConfig) else ref)
        declared = {k: cfg[k] for k in ("num_attention_heads", "hidden_act", "layer_norm_eps") if k in cfg}
    return CLIPTextConfig(**checked_config({k: shape_of(v) for k, v in state.items()}, declared, "text encoder"))


# ----------------------------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------------------------


def _decode_metadata(raw: Mapping[str, str], where) -> tuple[dict, dict | None]:
    """(metadata, declared config) from a safetensors header written by `save_encoder` (or any other tool)."""
    metadata = dict(raw)
    if METADATA_JSON_KEY in raw:
        try:
            record = json.loads(raw[METADATA_JSON_KEY])
        except json.JSONDecodeError as err:
            raise ModelFormatError(f"{where}: metadata {METADATA_JSON_KEY!r} is not valid JSON: {err}") from err
        if not isinstance(record, dict):
            raise ModelFormatError(f"{where}: metadata {METADATA_JSON_KEY!r} must be a JSON object, not "
                                   f"{type(record).__name__}; the file was not written by this tool")
        metadata = {**raw, **record}
        metadata.pop(METADATA_JSON_KEY, None)
    config = metadata.get("config")
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except json.JSONDecodeError as err:
            raise ModelFormatError(f"{where}: metadata 'config' is not valid JSON: {err}") from err
    if config is not None and not isinstance(config, dict):
        raise ModelFormatError(f"{where}: metadata 'config' must be a JSON object, not {type(config).__name__}")
    return metadata, config


def _read_config_json(folder: Path) -> dict | None:
    path = folder / "config.json"
    if not path.exists():
        return None
    if not path.is_file():
        raise ModelFormatError(f"{path} is not a regular file")
    config = read_json_object(path)
    if "text_config_dict" in config or config.get("architectures") == ["CLIPTextModelWithProjection"]:
        raise ModelFormatError(f"{path}: found a CLIPTextModelWithProjection (SDXL's text_encoder_2 layout); "
                               "only SD 1.x text encoders are supported")
    return config


def _folder_weights(folder: Path) -> Path:
    for name in _FOLDER_WEIGHTS:
        if (folder / name).exists():
            return folder / name
    if (folder / "model.safetensors.index.json").exists() or (folder / "pytorch_model.bin.index.json").exists():
        raise ModelFormatError(f"{folder}: sharded text encoder weights are not supported; merge them first")
    raise ModelFormatError(f"{folder} holds no text encoder weights (looked for {', '.join(_FOLDER_WEIGHTS)})")


def _encoder_keys(specs: Mapping, path: Path) -> list[str]:
    """The keys of the text encoder: all of a standalone file's, or a whole SD1 checkpoint's encoder part."""
    if not any(k.startswith("model.diffusion_model.") or k.startswith("conditioner.") for k in specs):
        if detect_family(specs) in ("text-encoder", "unknown"):
            return list(specs)
    refuse_unless_sd1(detect_family(specs), specs, path, allow_inpainting=True)
    return [k for k in specs if k.startswith("cond_stage_model.")]


def _read_checked(weights_path: Path, declared: dict | None, where: Path):
    """(canonical state, metadata, layout name, checked config) of one weights file."""
    with open_weights(weights_path) as weights:
        layout = encoder_layout(_encoder_keys(weights.specs, where))
        metadata, meta_config = _decode_metadata(weights.metadata, where)
        declared = declared if declared is not None else meta_config
        config = checked_config({c: weights.specs[k].shape for c, k in layout.keys.items()}, declared, str(where))
        data = weights.read(list(layout.keys.values()) + list(layout.aliases))
    _check_aliases(layout.aliases, data)
    state = {canon: data[key] for canon, key in layout.keys.items()}
    return state, metadata, layout.name, config if declared is not None else None


def read_encoder(path: str | Path) -> EncoderFile:
    """Read and check a text encoder from any supported file or folder, with canonical keys.

    Files: ours, any `text_model.*`/transformers-5 safetensors, AdvUnlearn .pt, ComfyUI clip_l, or an SD1
    single-file checkpoint (its encoder is taken). Folders: a transformers/diffusers `text_encoder` folder,
    a published AdvUnlearn folder (config.json + pytorch_model.bin), or a whole diffusers pipeline folder.
    """
    path = Path(path)
    try:
        return _read_encoder(path)
    except ModelFormatError as err:
        if str(path) in str(err):
            raise
        raise ModelFormatError(f"{path}: {err}") from err  # every message names the user's file


def _read_encoder(path: Path) -> EncoderFile:
    if path.is_dir():
        folder = path / "text_encoder" if (path / "model_index.json").is_file() else path
        weights = _folder_weights(folder)
        state, metadata, layout, config = _read_checked(weights, _read_config_json(folder), folder)
        kind = "hf-folder-safetensors" if weights.suffix == ".safetensors" else "hf-folder-bin"
        return EncoderFile(state, metadata, f"{kind}({layout})", config, str(folder))
    state, metadata, layout, config = _read_checked(path, None, path)
    source = "robust-erasure" if metadata.get("format") == FORMAT_NAME else layout
    return EncoderFile(state, metadata, source, config, str(path))


# ----------------------------------------------------------------------------------------------------------------
# Building models
# ----------------------------------------------------------------------------------------------------------------


def text_encoder_from_state(
    state: Mapping[str, torch.Tensor], config: CLIPTextConfig, dtype: torch.dtype = torch.float32
) -> CLIPTextModel:
    """A CLIPTextModel holding exactly `state` (canonical keys), after a strict key and shape check."""
    skeleton, key_map, expected = _skeleton(config)
    strict_check(state, expected)
    # Copies, so the model never shares storage with the caller's tensors (training changes it in place).
    own_state = {key_map[k]: v.detach().to("cpu", dtype, copy=True) for k, v in state.items()}
    skeleton.load_state_dict(own_state, strict=True, assign=True)
    for module in skeleton.modules():  # recreate the non-persistent position_ids that assign=True left on meta
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.is_meta:
                if name != "position_ids":
                    raise ModelFormatError(f"internal: buffer {name!r} has no value after loading")
                module._buffers[name] = torch.arange(config.max_position_embeddings).expand((1, -1))
    return skeleton.eval()


def as_encoder_file(obj) -> EncoderFile:
    """A checked EncoderFile from a path, an EncoderFile (its tensors checked again) or a state dict."""
    if isinstance(obj, EncoderFile):
        check_encoder_state(obj.state_dict, obj.config, obj.path or "text encoder")
        return obj
    if isinstance(obj, Mapping):
        state, layout = normalize_with_layout(obj)
        check_encoder_state(state)
        return EncoderFile(state, {}, layout, None)
    return read_encoder(obj)


def load_robust_text_encoder(
    path: str | Path | EncoderFile | Mapping, reference=None, dtype: torch.dtype = torch.float32
) -> CLIPTextModel:
    """A CLIPTextModel from any supported encoder file or folder (or an EncoderFile / state dict in any
    layout), checked as `read_encoder` checks files. Config: the file's metadata or config.json, else inferred
    from shapes with heads/activation from `reference` (CLIPTextModel or CLIPTextConfig) or the SD1
    convention. If `reference` is given the encoder must fit it (width, depth, vocabulary)."""
    encoder = as_encoder_file(path)
    if not encoder.config:
        return text_encoder_from_state(encoder.state_dict, infer_text_config(encoder.state_dict, reference), dtype)
    config = CLIPTextConfig(**encoder.config)
    if reference is not None:
        check_encoder_fits(config, reference)
    return text_encoder_from_state(encoder.state_dict, config, dtype)


# ----------------------------------------------------------------------------------------------------------------
# Writing files
# ----------------------------------------------------------------------------------------------------------------


def encoder_hash(text_encoder_or_state_dict) -> str:
    """Short sha256 (16 hex) over sorted canonical keys, shapes and fp32 values: identifies a base encoder
    independently of its file layout."""
    state = _as_canonical_state(text_encoder_or_state_dict)
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


def _config_of(obj, state: Mapping[str, torch.Tensor]) -> dict:
    declared = obj.config.to_dict() if isinstance(obj, CLIPTextModel) else getattr(obj, "config", None)
    return config_fields(check_encoder_state(state, declared, "the encoder to save"))


def save_encoder(text_encoder_or_state_dict, path: str | Path, metadata: dict | None = None,
                 dtype: torch.dtype = torch.float16) -> Path:
    """Write an encoder atomically as one `.safetensors` file, keys `text_model.*`, in `dtype` (fp16 default).

    Metadata: format and version, library version, the CLIPTextConfig, plus the caller's `metadata` (concepts,
    method, preset, hyperparameters, base model name, base encoder hash...; any JSON-serialisable values).
    Weights that are not finite, or not finite once cast to `dtype` (fp16 overflows above 65504), are refused.
    """
    from . import __version__

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ModelFormatError(f"encoders are written as .safetensors only, not {path.name!r}")
    obj = text_encoder_or_state_dict
    state = _as_canonical_state(obj)
    config = _config_of(obj, state)
    tensors = {k: v.detach().to("cpu", dtype) for k, v in sorted(state.items())}
    check_tensors(tensors, f"the encoder to save as {str(dtype).replace('torch.', '')}")
    record = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "dtype": str(dtype).replace("torch.", ""),
        **(dict(obj.metadata) if isinstance(obj, EncoderFile) else {}),
        **(metadata or {}),
        "config": config,
    }
    header = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "library_version": __version__,
        METADATA_JSON_KEY: json.dumps(record, default=str),
    }
    atomic_save_safetensors(tensors, path, metadata=header)
    return path


def convert_encoder(src: str | Path, out: str | Path, dtype: torch.dtype = torch.float16,
                    metadata: dict | None = None) -> Path:
    """Read an encoder in any supported layout, check it strictly, and write it in our format."""
    encoder = read_encoder(src)
    model = load_robust_text_encoder(encoder, dtype=torch.float32)
    record = {"converted_from": str(src), "source_format": encoder.source_format, **(metadata or {})}
    return save_encoder(
        EncoderFile(state_dict_from_text_encoder(model), encoder.metadata, encoder.source_format,
                    config_fields(model.config.to_dict())),
        out, metadata=record, dtype=dtype,
    )


def describe_encoder(path: str | Path) -> dict:
    """Metadata and a key summary (count, dtypes, width, layers, vocabulary, parameters) of an encoder, after
    every check a load makes (a file `info` describes is a file that loads)."""
    encoder = read_encoder(path)
    load_robust_text_encoder(encoder)  # the model build too: what `info` accepts, a load accepts
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in encoder.state_dict.values()})
    return {
        "path": str(path),
        "source_format": encoder.source_format,
        "keys": len(encoder.state_dict),
        "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
        "parameters": sum(t.numel() for t in encoder.state_dict.values()),
        **encoder_shape(encoder.state_dict),
        "config": encoder.config,
        "metadata": {k: v for k, v in encoder.metadata.items() if k != "config"},
    }
