"""Load an SD1.x model ("demo", "tiny", a diffusers folder or a single-file (ldm layout) checkpoint), offline.

Single files: the UNet, VAE and text-encoder configs are derived from tensor shapes (so any SD1-architecture
size loads, from tiny test models to SD1.5), the ldm -> diffusers key conversion is diffusers' own
(`diffusers.loaders.single_file_utils`), and every load is strict: a missing, extra or misshaped key is an error.
Other families (SDXL, SD2, SD3, Flux...) are refused with what was found.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

from .encoders import (
    EncoderFile,
    infer_text_config,
    load_robust_text_encoder,
    normalize_encoder_keys,
    strict_check,
    text_encoder_from_state,
)
from .errors import ModelFormatError
from .layouts import CLIP_PREFIX, FAMILY_DESCRIPTIONS, SUPPORTED, UNET_PREFIX, detect_family, refuse_unless_sd1
from .models import SDModel, build_tiny_model, load_clip_tokenizer, make_scheduler
from .weightfile import check_tensors, read_json_object, read_state_file

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
VAE_PREFIX = "first_stage_model."
SD1_IMAGE_SIZE = 512  # SD 1.x's native resolution; a single file does not record it

# Family detection (`detect_family`, `refuse_unless_sd1`, `SUPPORTED`) lives in `layouts`: it needs names and
# shapes only, so it runs on a file's header before any data is read.


# ----------------------------------------------------------------------------------------------------------------
# Configs from shapes
# ----------------------------------------------------------------------------------------------------------------


def _first_match(keys: Iterable[str], suffix: str, prefix: str = "") -> str | None:
    return next((k for k in keys if k.startswith(prefix) and k.endswith(suffix)), None)


def _need(tensors: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in tensors:
        raise ModelFormatError(f"the checkpoint lacks {key!r}: it is truncated or not an SD1 layout. {SUPPORTED}")
    return tensors[key]


def _block_indices(tensors: Mapping, prefix: str) -> list[int]:
    return sorted({int(k[len(prefix):].split(".", 1)[0]) for k in tensors if k.startswith(prefix)})


def _ldm_unet_params(tensors: Mapping[str, torch.Tensor]) -> dict:
    """ldm `UNetModel` parameters of an SD1-architecture UNet, read off its tensor shapes."""
    conv_in = _need(tensors, UNET_PREFIX + "input_blocks.0.0.weight")
    model_channels, in_channels = int(conv_in.shape[0]), int(conv_in.shape[1])
    blocks = _block_indices(tensors, UNET_PREFIX + "input_blocks.")
    downsamples = [i for i in blocks if UNET_PREFIX + f"input_blocks.{i}.0.op.weight" in tensors]
    res_blocks = downsamples[0] - 1 if downsamples else blocks[-1]
    levels = (blocks[-1] + 1) // (res_blocks + 1)
    if res_blocks < 1 or levels < 1:
        raise ModelFormatError(f"cannot read the UNet's block layout from its keys. {SUPPORTED}")
    first_block = [UNET_PREFIX + f"input_blocks.{1 + i * (res_blocks + 1)}" for i in range(levels)]
    mult = [int(_need(tensors, f"{b}.0.out_layers.3.weight").shape[0]) // model_channels for b in first_block]
    attention = [2**i for i, b in enumerate(first_block) if f"{b}.1.proj_in.weight" in tensors]
    to_k = _first_match(tensors, "attn2.to_k.weight", UNET_PREFIX)
    proj_in = _first_match(tensors, "proj_in.weight", UNET_PREFIX)
    depth_prefix = proj_in[: -len("proj_in.weight")] + "transformer_blocks." if proj_in else None
    return {
        "in_channels": in_channels,
        "out_channels": int(_need(tensors, UNET_PREFIX + "out.2.weight").shape[0]),
        "model_channels": model_channels,
        "num_res_blocks": res_blocks,
        "channel_mult": mult,
        "attention_resolutions": attention,
        "context_dim": int(tensors[to_k].shape[1]) if to_k else None,
        "transformer_depth": len(_block_indices(tensors, depth_prefix)) if depth_prefix else 1,
        "use_linear_in_transformer": bool(proj_in and tensors[proj_in].ndim == 2),
    }


def _ldm_vae_params(tensors: Mapping[str, torch.Tensor]) -> dict:
    """ldm `AutoencoderKL` ddconfig of an SD1-architecture VAE, read off its tensor shapes."""
    conv_in = _need(tensors, VAE_PREFIX + "encoder.conv_in.weight")
    ch = int(conv_in.shape[0])
    levels = _block_indices(tensors, VAE_PREFIX + "encoder.down.")
    mult = [int(_need(tensors, VAE_PREFIX + f"encoder.down.{i}.block.0.conv2.weight").shape[0]) // ch for i in levels]
    return {
        "in_channels": int(conv_in.shape[1]),
        "ch": ch,
        "ch_mult": mult,
        "num_res_blocks": len(_block_indices(tensors, VAE_PREFIX + "encoder.down.0.block.")),
        "z_channels": int(_need(tensors, VAE_PREFIX + "decoder.conv_in.weight").shape[1]),
        "out_ch": int(_need(tensors, VAE_PREFIX + "decoder.conv_out.weight").shape[0]),
    }


def infer_ldm_config(tensors: Mapping[str, torch.Tensor]) -> dict:
    """An ldm-style "original config" (as in SD's v1-inference.yaml) for this checkpoint: the shipped SD1
    template with every size read off the tensors; fields shapes cannot tell (8 attention heads, the 0.18215
    latent scale, GroupNorm(32)) keep their SD1 values."""
    config = _ldm_template()
    params = config["model"]["params"]
    params["unet_config"]["params"].update(_ldm_unet_params(tensors))
    params["first_stage_config"]["params"]["ddconfig"].update(_ldm_vae_params(tensors))
    return config


def _ldm_template() -> dict:
    return json.loads((CONFIG_DIR / "sd1_ldm.json").read_text(encoding="utf-8"))


def unet_from_ldm_state(tensors: Mapping[str, torch.Tensor], sample_size: int) -> UNet2DConditionModel:
    """A diffusers UNet from ldm-layout tensors (`model.diffusion_model.*`), every size read off the shapes;
    strict: a key the SD1 architecture has no place for is an error. Used for single files and ComfyUI MODELs."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, create_unet_diffusers_config_from_ldm

    config = _ldm_template()
    config["model"]["params"]["unet_config"]["params"].update(_ldm_unet_params(tensors))
    unet_config = create_unet_diffusers_config_from_ldm(config, tensors)
    unet_config["sample_size"] = sample_size
    return _convert_part(tensors, UNET_PREFIX, convert_ldm_unet_checkpoint, unet_config, UNet2DConditionModel, "UNet")


def vae_from_ldm_state(tensors: Mapping[str, torch.Tensor], image_size: int = SD1_IMAGE_SIZE) -> AutoencoderKL:
    """A diffusers AutoencoderKL from ldm-layout tensors (`first_stage_model.*`), as `unet_from_ldm_state`."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, create_vae_diffusers_config_from_ldm

    config = _ldm_template()
    config["model"]["params"]["first_stage_config"]["params"]["ddconfig"].update(_ldm_vae_params(tensors))
    vae_config = create_vae_diffusers_config_from_ldm(config, tensors)
    vae_config["sample_size"] = image_size
    return _convert_part(tensors, VAE_PREFIX, convert_ldm_vae_checkpoint, vae_config, AutoencoderKL, "VAE")


# ----------------------------------------------------------------------------------------------------------------
# Building modules strictly
# ----------------------------------------------------------------------------------------------------------------


def _unconsumed(tensors: Mapping[str, torch.Tensor], prefix: str, converted: Mapping[str, torch.Tensor]) -> list:
    """Source keys under `prefix` that diffusers' converter did not carry over (it skips unknown keys silently).

    The converter moves tensors (or views of them) without copying, so a source tensor was used exactly when its
    data pointer appears among the converted tensors.
    """
    used = {t.data_ptr() for t in converted.values() if t.numel()}
    return [k for k, t in tensors.items() if k.startswith(prefix) and t.numel() and t.data_ptr() not in used]


def _module_from_state(cls, config: dict, state: Mapping[str, torch.Tensor], what: str):
    with torch.device("meta"):
        module = cls.from_config(config)  # no random init: every weight comes from the checkpoint
    expected = {k: v.shape for k, v in module.state_dict().items()}
    strict_check(state, expected, what)
    module.load_state_dict(dict(state), strict=True, assign=True)
    meta = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if meta:
        raise ModelFormatError(f"the {what} has tensors with no value after loading: {meta[:5]}")
    return module.eval()


def _convert_part(tensors, prefix: str, convert, config: dict, cls, what: str):
    converted = convert(tensors, config)
    leftover = _unconsumed(tensors, prefix, converted)
    if leftover:
        raise ModelFormatError(
            f"the {what} has {len(leftover)} key(s) the SD1 architecture has no place for: "
            f"{', '.join(sorted(leftover)[:6])}. The file is not a plain SD1.x checkpoint. {SUPPORTED}"
        )
    return _module_from_state(cls, config, converted, what)


def load_single_file(path: str | Path, image_size: int | None = None) -> SDModel:
    """An SDModel from an SD1.x single-file checkpoint (ldm layout). `image_size` (default 512, SD1's native
    size) sets the UNet's sample size, which a single file does not record."""
    path = Path(path)
    tensors, _ = read_state_file(path)
    refuse_unless_sd1(detect_family(tensors), tensors, path)
    image_size = image_size or SD1_IMAGE_SIZE
    vae = vae_from_ldm_state(tensors, image_size)
    unet = unet_from_ldm_state(tensors, image_size // 2 ** (len(vae.config.block_out_channels) - 1))
    clip_state = normalize_encoder_keys({k: v for k, v in tensors.items() if k.startswith(CLIP_PREFIX)})
    config = infer_text_config(clip_state)  # refuses foreign encoders and misshaped keys, by shape
    check_tensors(clip_state, f"{path}: text encoder")
    text_encoder = text_encoder_from_state(clip_state, config, clip_state_dtype(clip_state))
    _check_context(unet, text_encoder, path)
    return SDModel(load_clip_tokenizer(), text_encoder, unet, vae, make_scheduler(), name=path.stem, source=str(path))


def clip_state_dtype(state: Mapping[str, torch.Tensor]) -> torch.dtype:
    return next(iter(state.values())).dtype


def _check_context(unet: UNet2DConditionModel, text_encoder, path) -> None:
    width = text_encoder.config.hidden_size
    if unet.config.cross_attention_dim != width:
        raise ModelFormatError(
            f"{path}: the UNet expects {unet.config.cross_attention_dim}-wide text conditioning but the text "
            f"encoder is {width} wide; the parts do not belong together. {SUPPORTED}"
        )


# ----------------------------------------------------------------------------------------------------------------
# Diffusers folders
# ----------------------------------------------------------------------------------------------------------------


def _variant(folder: Path, weights_name: str) -> str | None:
    """"fp16" when a component folder only has the fp16 variant of its weights (common on the hub)."""
    stem, suffix = weights_name.rsplit(".", 1)
    if any((folder / f"{stem}.{ext}").is_file() for ext in ("safetensors", "bin")):
        return None
    return "fp16" if (folder / f"{stem}.fp16.{suffix}").is_file() else None


def _from_pretrained_strict(cls, folder: Path, subfolder: str):
    part = folder / subfolder
    if not (part / "config.json").is_file():
        raise ModelFormatError(f"{folder} has no {subfolder}/config.json. {SUPPORTED}")
    try:
        module, info = cls.from_pretrained(
            str(folder), subfolder=subfolder, local_files_only=True, output_loading_info=True,
            variant=_variant(part, "diffusion_pytorch_model.safetensors"),
        )
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise ModelFormatError(
            f"cannot load {part}: {str(err).splitlines()[0][:400]}. The weights are missing, truncated or "
            f"do not match its config.json."
        ) from err
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        detail = "; ".join(f"{k.replace('_', ' ')}: {', '.join(map(str, v[:6]))}" for k, v in problems.items())
        raise ModelFormatError(f"{part} does not match its config.json ({detail})")
    return module.eval()


def _read_json(path: Path) -> dict:
    return read_json_object(path, ". The folder is incomplete or corrupt.")


def _folder_scheduler(folder: Path) -> DDIMScheduler:
    config_file = folder / "scheduler" / "scheduler_config.json"
    if not config_file.is_file():
        return make_scheduler()
    # Any SD1 scheduler config carries the training noise schedule; DDIM takes the fields it shares.
    config = _read_json(config_file)
    try:
        return DDIMScheduler.from_config(config)
    except (TypeError, ValueError) as err:
        raise ModelFormatError(f"{config_file} is not a valid scheduler config: {err}") from err


def _folder_tokenizer(folder: Path):
    if (folder / "tokenizer" / "vocab.json").is_file():
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
    return load_clip_tokenizer()


def _refuse_folder_family(folder: Path, index: dict) -> None:
    name = str(index.get("_class_name", ""))
    if "XL" in name or "text_encoder_2" in index:
        raise ModelFormatError(f"{folder}: found an SDXL pipeline ({name}). {SUPPORTED}")
    if name and "StableDiffusion" not in name:
        raise ModelFormatError(f"{folder}: found a {name}, not a Stable Diffusion 1.x pipeline. {SUPPORTED}")
    missing = [p for p in ("unet", "vae", "text_encoder") if not (folder / p).is_dir()]
    if missing:
        raise ModelFormatError(f"{folder}: the pipeline folder lacks {', '.join(missing)}/. {SUPPORTED}")


def load_diffusers_folder(folder: str | Path, image_size: int | None = None) -> SDModel:
    """An SDModel from a diffusers StableDiffusionPipeline folder (local files only)."""
    folder = Path(folder)
    index = _read_json(folder / "model_index.json")
    _refuse_folder_family(folder, index)
    text_encoder = load_robust_text_encoder(folder / "text_encoder")
    if text_encoder.config.hidden_size == 1024:
        raise ModelFormatError(f"{folder}: found a Stable Diffusion 2.x pipeline (1024-wide text encoder). {SUPPORTED}")
    unet = _from_pretrained_strict(UNet2DConditionModel, folder, "unet")
    vae = _from_pretrained_strict(AutoencoderKL, folder, "vae")
    if image_size:
        unet.register_to_config(sample_size=image_size // 2 ** (len(vae.config.block_out_channels) - 1))
    _check_context(unet, text_encoder, folder)
    return SDModel(_folder_tokenizer(folder), text_encoder, unet, vae, _folder_scheduler(folder),
                   name=folder.name, source=str(folder))


# ----------------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------------


def load_sd1_from_path(path: str | Path, image_size: int | None = None) -> SDModel:
    """An SDModel from a diffusers folder or an SD1.x single-file checkpoint; other families are refused."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelFormatError(f"{path} is a folder without model_index.json. {SUPPORTED}")
        return load_diffusers_folder(path, image_size)
    if not path.exists():
        raise ModelFormatError(f"{path} does not exist. Give a diffusers folder, a single-file checkpoint or 'demo'.")
    return load_single_file(path, image_size)


__all__ = [
    "EncoderFile",
    "FAMILY_DESCRIPTIONS",
    "SUPPORTED",
    "detect_family",
    "infer_ldm_config",
    "load_diffusers_folder",
    "load_model",
    "load_sd1_from_path",
    "load_single_file",
    "refuse_unless_sd1",
]


def load_model(spec: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> SDModel:
    """Load an SD1-family model: "demo", "tiny", a diffusers folder, or a single-file checkpoint.

    Anything that is not an SD1-family model is refused with a message naming what was found.
    """
    spec_str = str(spec)
    if spec_str == "tiny":
        model = build_tiny_model()
    elif spec_str == "demo":
        # function-level: the demo package holds shipped weights and is imported only when asked for
        from .demo import load_demo_model

        model = load_demo_model()
    else:
        model = load_sd1_from_path(Path(spec_str))
    # Cast only when needed: diffusers warns about casting with `.to()` even when nothing changes.
    if model.dtype != dtype:
        model.to(dtype=dtype)
    return model.to(device=device).freeze()
