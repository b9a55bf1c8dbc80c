"""SD1 CLIP text-encoder files: every known layout in, one layout out; strict checks; swap and bake.

The one layout we write: a `.safetensors` file whose keys are `text_model.*` (what ComfyUI's CLIPLoader detects
and what transformers 4.x and 5.x both load), fp16 by default, with metadata that carries the CLIPTextConfig, so
no `config.json` is needed to load it.
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
from .io import atomic_save_safetensors

CANONICAL_PREFIX = "text_model."
FORMAT_NAME = "robust-erasure-text-encoder"
FORMAT_VERSION = 1
# Metadata key holding everything we record (config, provenance, caller's fields) as one JSON object, so values
# keep their types; `format`, `format_version` and `library_version` are also written flat for other tools.
METADATA_JSON_KEY = "robust_erasure"

# Source prefixes, longest first, each mapped to the canonical `text_model.` prefix.
_LAYOUT_PREFIXES = (
    ("text_encoder.text_model.", "advunlearn-pt"),
    ("cond_stage_model.transformer.text_model.", "sd1-checkpoint"),
    ("cond_stage_model.transformer.", "sd1-checkpoint-old"),
    ("clip_l.transformer.text_model.", "comfyui"),
    ("clip_l.transformer.", "comfyui-old"),
    ("text_model.", "text_model"),
    ("", "transformers5"),
)
# The parts of a CLIPTextModel below `text_model.`: a key outside these is not an encoder weight.
_ENCODER_PARTS = ("embeddings.", "encoder.", "final_layer_norm.")
# CLIP's projection head and logit scale ride along in ComfyUI's clip_l; SD1 conditioning never uses them.
_IGNORED_EXTRAS = ("clip_l.transformer.text_projection.weight", "clip_l.logit_scale")
# Architecture fields of CLIPTextConfig that we record; the same names exist in transformers 4.x and 5.x.
_CONFIG_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "projection_dim",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
    "hidden_act",
    "layer_norm_eps",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)
_SD1_TEXT_CONFIG_FILE = Path(__file__).resolve().parent / "configs" / "sd1_text_encoder.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


@dataclass
class EncoderFile:
    """A text encoder read from disk: canonical `text_model.*` tensors, metadata, and the layout it came in."""

    state_dict: dict[str, torch.Tensor]
    metadata: dict = field(default_factory=dict)
    source_format: str = ""
    config: dict | None = None
    path: str = ""


# ----------------------------------------------------------------------------------------------------------------
# Key layouts
# ----------------------------------------------------------------------------------------------------------------


def _short_list(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" ... and {len(keys) - limit} more" if len(keys) > limit else "")


def _canonical_key(key: str) -> tuple[str, str] | None:
    """(canonical key, layout name) for one source key, or None when it is no encoder weight."""
    for prefix, layout in _LAYOUT_PREFIXES:
        if key.startswith(prefix):
            rest = key[len(prefix):]
            if rest.startswith(_ENCODER_PARTS):
                return CANONICAL_PREFIX + rest, layout
    return None


def _is_position_ids(key: str) -> bool:
    # A buffer (0..76), not a weight; transformers 5 does not even save it.
    return key.endswith("embeddings.position_ids")


def normalize_with_layout(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """`normalize_encoder_keys`, also returning the layout(s) found (e.g. "sd1-checkpoint", "advunlearn-pt")."""
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    layouts: set[str] = set()
    unexpected = []
    for key, tensor in state_dict.items():
        if _is_position_ids(key) or key in _IGNORED_EXTRAS:
            continue
        mapped = _canonical_key(key)
        if mapped is None or not isinstance(tensor, torch.Tensor):
            unexpected.append(key)
            continue
        canon, layout = mapped
        layouts.add(layout)
        if canon in out:
            _check_duplicate(canon, origin[canon], key, out[canon], tensor)
            continue
        out[canon] = tensor
        origin[canon] = key
    if unexpected:
        raise ModelFormatError(
            f"not a CLIP text encoder state dict: {len(unexpected)} unexpected key(s): {_short_list(unexpected)}. "
            "Known layouts: text_model.* (ours, transformers, diffusers), embeddings./encoder./final_layer_norm. "
            "(transformers 5), text_encoder.text_model.* (AdvUnlearn .pt), cond_stage_model.transformer.* "
            "(SD1 checkpoints), clip_l.transformer.* (ComfyUI)."
        )
    if not out:
        raise ModelFormatError("no text encoder weights found (the state dict is empty or holds only buffers)")
    # An AdvUnlearn training file also carries bare aliases of its weights: name it by its main layout.
    return out, "advunlearn-pt" if "advunlearn-pt" in layouts else "+".join(sorted(layouts))


def _check_duplicate(canon: str, first_key: str, second_key: str, first: torch.Tensor, second: torch.Tensor):
    """AdvUnlearn's training files hold the same weights under two names: fine only when they are identical."""
    same = first.shape == second.shape and first.dtype == second.dtype and torch.equal(first, second)
    if not same:
        raise ModelFormatError(
            f"keys {first_key!r} and {second_key!r} both name {canon!r} but hold different tensors "
            f"({tuple(first.shape)} {first.dtype} vs {tuple(second.shape)} {second.dtype}); "
            "refusing to guess which one is the trained encoder"
        )


def normalize_encoder_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Canonical `text_model.*` keys from any known encoder layout; `position_ids` buffers are dropped.

    Duplicate aliases (AdvUnlearn .pt files) are dropped only when they hold identical tensors. Any key that is
    not part of a CLIP text encoder raises ModelFormatError naming it.
    """
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
# Configs and shapes
# ----------------------------------------------------------------------------------------------------------------


def _config_dict(config: CLIPTextConfig | Mapping) -> dict:
    source = config.to_dict() if isinstance(config, CLIPTextConfig) else dict(config)
    if source.get("model_type") == "clip" and "text_config" in source:
        source = source["text_config"]  # a full CLIPConfig: take its text half
    return {k: source[k] for k in _CONFIG_FIELDS if k in source}


def _layer_count(state: Mapping[str, torch.Tensor]) -> int:
    prefix = CANONICAL_PREFIX + "encoder.layers."
    indices = {int(k[len(prefix):].split(".", 1)[0]) for k in state if k.startswith(prefix)}
    return max(indices) + 1 if indices else 0


def _required(state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise ModelFormatError(f"text encoder weights lack {key!r}, so its shape cannot be determined")
    return state[key]


def encoder_shape(obj) -> dict:
    """{"width", "layers", "vocab", "positions"} of a state dict (any layout), CLIPTextModel or config."""
    if isinstance(obj, CLIPTextModel):
        obj = obj.config
    if isinstance(obj, (CLIPTextConfig, dict)) and not _looks_like_state(obj):
        cfg = _config_dict(obj)
        return {
            "width": cfg.get("hidden_size"),
            "layers": cfg.get("num_hidden_layers"),
            "vocab": cfg.get("vocab_size"),
            "positions": cfg.get("max_position_embeddings"),
        }
    state = _as_canonical_state(obj)
    tokens = _required(state, CANONICAL_PREFIX + "embeddings.token_embedding.weight")
    positions = _required(state, CANONICAL_PREFIX + "embeddings.position_embedding.weight")
    return {
        "width": int(tokens.shape[1]),
        "layers": _layer_count(state),
        "vocab": int(tokens.shape[0]),
        "positions": int(positions.shape[0]),
    }


def _looks_like_state(obj) -> bool:
    return isinstance(obj, Mapping) and any(isinstance(v, torch.Tensor) for v in obj.values())


def _sd1_text_config_template() -> dict:
    return json.loads(_SD1_TEXT_CONFIG_FILE.read_text(encoding="utf-8"))


def infer_text_config(state_dict: Mapping[str, torch.Tensor], reference=None) -> CLIPTextConfig:
    """A CLIPTextConfig from tensor shapes (width, depth, vocabulary, positions, MLP width).

    Shapes cannot tell the number of attention heads or the activation: those come from `reference` (a
    CLIPTextModel or CLIPTextConfig of the same shape) when given, else from the SD1 convention (64-wide heads,
    quick_gelu; exact for SD 1.x's ViT-L/14 encoder).
    """
    state = _as_canonical_state(state_dict)
    shape = encoder_shape(state)
    fc1 = _required(state, CANONICAL_PREFIX + "encoder.layers.0.mlp.fc1.weight")
    if reference is not None:
        check_encoder_fits(state, reference)
        base = _config_dict(reference.config if isinstance(reference, CLIPTextModel) else reference)
    else:
        base = _sd1_text_config_template()
        base["num_attention_heads"] = max(1, shape["width"] // 64) if shape["width"] % 64 == 0 else 1
    base.update(
        vocab_size=shape["vocab"],
        hidden_size=shape["width"],
        num_hidden_layers=shape["layers"],
        max_position_embeddings=shape["positions"],
        intermediate_size=int(fc1.shape[0]),
    )
    if reference is None:
        base["projection_dim"] = shape["width"]  # unused by CLIPTextModel; kept consistent with the width
    return CLIPTextConfig(**base)


def check_encoder_fits(state_or_config, target) -> None:
    """Raise ModelFormatError, naming both shapes, if an encoder's width, depth or vocabulary differs from the
    target's (a CLIPTextModel, CLIPTextConfig, config dict or state dict)."""
    have, want = encoder_shape(state_or_config), encoder_shape(target)
    keys = ("width", "layers", "vocab")
    if any(have[k] != want[k] for k in keys if have[k] is not None and want[k] is not None):
        raise ModelFormatError(
            "the text encoder does not fit: it has width {width}, {layers} layers, vocabulary {vocab}; ".format(**have)
            + "the target has width {width}, {layers} layers, vocabulary {vocab}. ".format(**want)
            + "Robust encoders only fit models with the same CLIP text encoder (SD 1.4/1.5 and their fine-tunes "
            "use CLIP ViT-L/14: width 768, 12 layers, vocabulary 49408)."
        )


# ----------------------------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------------------------


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFormatError(
            f"cannot read {path} as safetensors ({err}); the file is truncated, still downloading, or not a "
            "safetensors file. Download it again."
        ) from err


def load_pickled_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .bin/.pt/.ckpt pickle, unpickled with weights_only=True (no arbitrary code)."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise _pickle_error(path, err) from err
        obj = _torch_load_no_mmap(path)  # legacy (non-zip) pickles cannot be memory-mapped
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad pickles; all mean "unreadable"
        raise _pickle_error(path, err) from err
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # Lightning/ldm .ckpt wrapper
    if not isinstance(obj, Mapping):
        raise ModelFormatError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _torch_load_no_mmap(path: Path):
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise _pickle_error(path, err) from err


def _pickle_error(path: Path, err: Exception) -> ModelFormatError:
    return ModelFormatError(
        f"cannot read {path} as a PyTorch weights file ({type(err).__name__}: {str(err).splitlines()[0][:300]}). "
        "It is truncated, corrupt, or holds Python objects other than tensors (only weights_only=True loading "
        "is allowed). Convert it to .safetensors or download it again."
    )


def read_state_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, safetensors metadata) of a weights file: .safetensors, or a pickle read with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path} does not exist or is not a file")
    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path)
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        return load_pickled_state(path), {}
    raise ModelFormatError(f"{path}: unknown weights file type {path.suffix!r}; use .safetensors, .bin, .pt or .ckpt")


def _decode_metadata(raw: dict) -> tuple[dict, dict | None]:
    """(metadata, config) from a safetensors header written by `save_encoder` (or any other tool)."""
    metadata = dict(raw)
    if METADATA_JSON_KEY in raw:
        try:
            metadata = {**raw, **json.loads(raw[METADATA_JSON_KEY])}
        except json.JSONDecodeError as err:
            raise ModelFormatError(f"encoder metadata {METADATA_JSON_KEY!r} is not valid JSON: {err}") from err
        metadata.pop(METADATA_JSON_KEY, None)
    config = metadata.get("config")
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except json.JSONDecodeError:
            config = None
    return metadata, config if isinstance(config, dict) else None


def _folder_weights(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin", "model.bin"):
        if (folder / name).is_file():
            return folder / name
    if (folder / "model.safetensors.index.json").exists() or (folder / "pytorch_model.bin.index.json").exists():
        raise ModelFormatError(f"{folder}: sharded text encoder weights are not supported; merge them first")
    raise ModelFormatError(
        f"{folder} holds no text encoder weights (looked for model.safetensors, pytorch_model.bin)"
    )


def _read_folder(folder: Path) -> EncoderFile:
    if (folder / "model_index.json").is_file():
        folder = folder / "text_encoder"  # a whole diffusers pipeline: take its text encoder
    weights = _folder_weights(folder)
    config = None
    if (folder / "config.json").is_file():
        config = _config_dict(json.loads((folder / "config.json").read_text(encoding="utf-8")))
    tensors, raw_meta = read_state_file(weights)
    state, layout = normalize_with_layout(tensors)
    kind = "hf-folder-safetensors" if weights.suffix == ".safetensors" else "hf-folder-bin"
    return EncoderFile(state, dict(raw_meta), f"{kind}({layout})", config, str(folder))


def _encoder_part_of_checkpoint(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The text encoder of a full SD single-file checkpoint; other families are refused."""
    from .loading import detect_family, refuse_unless_sd1

    family = detect_family(tensors)
    if family in ("text-encoder", "unknown") and not any(k.startswith("model.diffusion_model.") for k in tensors):
        return tensors
    refuse_unless_sd1(family, tensors, path, allow_inpainting=True)
    return {k: v for k, v in tensors.items() if k.startswith("cond_stage_model.")}


def read_encoder(path: str | Path) -> EncoderFile:
    """Read a text encoder from any supported file or folder, with canonical keys (not yet shape-checked).

    Files: ours, any `text_model.*`/transformers-5 safetensors, AdvUnlearn .pt, ComfyUI clip_l, or an SD1
    single-file checkpoint (its encoder is taken). Folders: a transformers/diffusers `text_encoder` folder,
    a published AdvUnlearn folder (config.json + pytorch_model.bin), or a whole diffusers pipeline folder.
    """
    path = Path(path)
    if path.is_dir():
        return _read_folder(path)
    tensors, raw_meta = read_state_file(path)
    tensors = _encoder_part_of_checkpoint(tensors, path)
    state, layout = normalize_with_layout(tensors)
    metadata, config = _decode_metadata(raw_meta)
    source = "robust-erasure" if metadata.get("format") == FORMAT_NAME else layout
    return EncoderFile(state, metadata, source, config, str(path))


# ----------------------------------------------------------------------------------------------------------------
# Building models
# ----------------------------------------------------------------------------------------------------------------


def _model_key_map(model: CLIPTextModel) -> dict[str, str]:
    """canonical key -> the model's own state_dict key (transformers 4.x keeps `text_model.`, 5.x drops it)."""
    return {
        (k if k.startswith(CANONICAL_PREFIX) else CANONICAL_PREFIX + k): k
        for k in model.state_dict()
        if not _is_position_ids(k)
    }


def strict_check(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size], what: str = "text encoder"):
    """Raise ModelFormatError listing missing, extra and misshaped keys; never allow a partial load."""
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    misshaped = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k])})"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    ]
    if missing or extra or misshaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_short_list(missing)}")
        if extra:
            parts.append(f"{len(extra)} unexpected: {_short_list(extra)}")
        if misshaped:
            parts.append(f"{len(misshaped)} misshaped: {_short_list(misshaped, 4)}")
        raise ModelFormatError(
            f"the {what} weights do not match the expected architecture: " + "; ".join(parts)
            + ". The file is truncated, from another model family, or was saved with the wrong config."
        )


def _skeleton(config: CLIPTextConfig):
    """(a CLIPTextModel on the meta device, canonical -> own key map, canonical key -> expected shape)."""
    with torch.device("meta"):
        skeleton = CLIPTextModel(config)  # no random init: every weight is assigned from a state dict
    key_map = _model_key_map(skeleton)
    own = skeleton.state_dict()
    return skeleton, key_map, {canon: own[key].shape for canon, key in key_map.items()}


def text_encoder_from_state(
    state: Mapping[str, torch.Tensor], config: CLIPTextConfig, dtype: torch.dtype = torch.float32
) -> CLIPTextModel:
    """A CLIPTextModel holding exactly `state` (canonical keys), after a strict key and shape check."""
    skeleton, key_map, expected = _skeleton(config)
    strict_check(state, expected)
    # Copies, so the model never shares storage with the caller's tensors (training changes it in place).
    own_state = {key_map[k]: v.detach().to("cpu", dtype, copy=True) for k, v in state.items()}
    model = skeleton
    model.load_state_dict(own_state, strict=True, assign=True)
    _materialize_buffers(model, config)
    return model.eval()


def _materialize_buffers(model: CLIPTextModel, config: CLIPTextConfig) -> None:
    """Recreate non-persistent buffers (position_ids) that `assign=True` left on the meta device."""
    for module in model.modules():
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.is_meta:
                if name != "position_ids":
                    raise ModelFormatError(f"internal: buffer {name!r} has no value after loading")
                module._buffers[name] = torch.arange(config.max_position_embeddings).expand((1, -1))


def _resolve_config(encoder: EncoderFile, reference) -> CLIPTextConfig:
    if encoder.config:
        config = CLIPTextConfig(**{**_sd1_text_config_template(), **encoder.config})
        if reference is not None:
            check_encoder_fits(config, reference)
        return config
    return infer_text_config(encoder.state_dict, reference)


def load_robust_text_encoder(
    path: str | Path | EncoderFile | Mapping, reference=None, dtype: torch.dtype = torch.float32
) -> CLIPTextModel:
    """A CLIPTextModel from any supported encoder file or folder (or an EncoderFile / state dict in any
    layout), strictly checked: every key present and shaped right, nothing extra. Config: the file's metadata
    or config.json, else inferred from shapes with heads/activation from `reference` (CLIPTextModel or
    CLIPTextConfig) or the SD1 convention. If `reference` is given the encoder must fit it (width, depth,
    vocabulary)."""
    if isinstance(path, EncoderFile):
        encoder = path
    elif isinstance(path, Mapping):
        encoder = EncoderFile(normalize_encoder_keys(path), {}, "state_dict", None)
    else:
        encoder = read_encoder(path)
    config = _resolve_config(encoder, reference)
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
    if isinstance(obj, CLIPTextModel):
        return _config_dict(obj.config)
    if isinstance(obj, EncoderFile) and obj.config:
        return dict(obj.config)
    return _config_dict(infer_text_config(state))


def save_encoder(text_encoder_or_state_dict, path: str | Path, metadata: dict | None = None,
                 dtype: torch.dtype = torch.float16) -> Path:
    """Write an encoder atomically as one `.safetensors` file, keys `text_model.*`, in `dtype` (fp16 default).

    Metadata: format and version, library version, the CLIPTextConfig, plus the caller's `metadata` (concepts,
    method, preset, hyperparameters, base model name, base encoder hash...; any JSON-serialisable values).
    """
    from . import __version__

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ModelFormatError(f"encoders are written as .safetensors only, not {path.name!r}")
    obj = text_encoder_or_state_dict
    state = _as_canonical_state(obj)
    config = _config_of(obj, state)
    strict_check(state, _skeleton(CLIPTextConfig(**{**_sd1_text_config_template(), **config}))[2])
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
    tensors = {k: v.detach().to("cpu", dtype) for k, v in sorted(state.items())}
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
                    _config_dict(model.config)),
        out, metadata=record, dtype=dtype,
    )


def describe_encoder(path: str | Path) -> dict:
    """Metadata and a key summary (count, dtypes, width, layers, vocabulary, parameters) of an encoder."""
    encoder = read_encoder(path)
    shape = encoder_shape(encoder.state_dict)
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in encoder.state_dict.values()})
    return {
        "path": str(path),
        "source_format": encoder.source_format,
        "keys": len(encoder.state_dict),
        "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
        "parameters": sum(t.numel() for t in encoder.state_dict.values()),
        **shape,
        "config": encoder.config,
        "metadata": {k: v for k, v in encoder.metadata.items() if k != "config"},
    }


# ----------------------------------------------------------------------------------------------------------------
# Swap and bake
# ----------------------------------------------------------------------------------------------------------------


def swap_text_encoder(pipe, path_or_model):
    """Put a robust encoder (a path, EncoderFile or CLIPTextModel) into a diffusers StableDiffusionPipeline.

    Refuses an encoder whose width/depth/vocabulary differs from the pipeline's; keeps the pipeline's device and
    dtype. Returns the pipeline (changed in place).
    """
    current = pipe.text_encoder
    if isinstance(path_or_model, CLIPTextModel):
        check_encoder_fits(path_or_model, current)
        encoder = path_or_model
    else:
        encoder = load_robust_text_encoder(path_or_model, reference=current.config)
    encoder = encoder.to(device=current.device, dtype=current.dtype).eval()
    encoder.requires_grad_(False)
    pipe.register_modules(text_encoder=encoder)
    return pipe


def _checkpoint_encoder_keys(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """canonical key -> checkpoint key for the text encoder of an SD1 single-file checkpoint."""
    mapping = {}
    for key in tensors:
        if not key.startswith("cond_stage_model.") or _is_position_ids(key):
            continue
        mapped = _canonical_key(key)
        if mapped is None:
            raise ModelFormatError(f"unexpected text encoder key {key!r} in the checkpoint")
        mapping[mapped[0]] = key
    if not mapping:
        raise ModelFormatError("the checkpoint has no cond_stage_model.transformer.* text encoder keys")
    return mapping


def bake(checkpoint: str | Path, encoder, out: str | Path) -> Path:
    """Write a new SD1.x single-file checkpoint (.safetensors) with `encoder` (path, EncoderFile, CLIPTextModel
    or state dict) in place of its text encoder.

    The encoder keys keep the source's prefix style and each replaced tensor's dtype; every other tensor is
    byte-identical; the source's safetensors metadata is kept (plus one key recording the baked encoder).
    A .ckpt source is read with weights_only=True; its non-tensor entries (global_step...) are not carried over.
    """
    from .loading import detect_family, refuse_unless_sd1

    checkpoint, out = Path(checkpoint), Path(out)
    if out.suffix.lower() != ".safetensors":
        raise ModelFormatError(f"bake writes .safetensors only, not {out.name!r}")
    tensors, metadata = read_state_file(checkpoint)
    refuse_unless_sd1(detect_family(tensors), tensors, checkpoint, allow_inpainting=True)
    key_map = _checkpoint_encoder_keys(tensors)
    robust = _encoder_state_for_bake(encoder)
    source_encoder = {canon: tensors[key] for canon, key in key_map.items()}
    check_encoder_fits(robust, source_encoder)
    strict_check(robust, {canon: tensors[key].shape for canon, key in key_map.items()}, "robust text encoder")
    baked = dict(tensors)
    for canon, key in key_map.items():
        baked[key] = robust[canon].detach().to("cpu", tensors[key].dtype).contiguous()
    if checkpoint.suffix.lower() != ".safetensors":
        baked = _unshare(baked)
    record = _encoder_metadata(encoder)
    metadata = {**metadata, "robust_erasure_baked_encoder": json.dumps(record, default=str)}
    atomic_save_safetensors(baked, out, metadata=metadata)
    return out


def _encoder_state_for_bake(encoder) -> dict[str, torch.Tensor]:
    if isinstance(encoder, (str, Path)):
        encoder = read_encoder(encoder)
    return _as_canonical_state(encoder)


def _encoder_metadata(encoder) -> dict:
    if isinstance(encoder, (str, Path)):
        info = read_encoder(encoder)
        return {"file": Path(encoder).name, "hash": encoder_hash(info.state_dict),
                **{k: v for k, v in info.metadata.items() if k != "config"}}
    return {"hash": encoder_hash(encoder)}


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pickled checkpoints may hold tensors sharing storage (safetensors refuses them): give each its own."""
    seen: set[int] = set()
    out = {}
    for key, tensor in tensors.items():
        ptr = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if ptr in seen and tensor.numel() else tensor
        seen.add(ptr)
    return out
