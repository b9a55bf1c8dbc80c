"""Tiny SD1-architecture models written to disk in every layout the loaders accept.

The ldm single-file layout is produced by mapping diffusers names back to the original Stable Diffusion (ldm)
names; diffusers ships only the ldm -> diffusers direction, so the inverse is written here, for tests only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from erasure_core.layouts import sd1_text_config
from erasure_core.models import SDModel, load_clip_tokenizer, make_scheduler

TEXT_WIDTH = 64  # one 64-wide head: the SD1 head width, so configs inferred from shapes match exactly
LAYERS_PER_BLOCK = 1


def tiny_text_encoder(seed: int = 0, width: int = TEXT_WIDTH, layers: int = 2) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(**sd1_text_config(hidden_size=width, intermediate_size=width * 4, projection_dim=width,
                                              num_hidden_layers=layers, num_attention_heads=max(1, width // 64)))
    return CLIPTextModel(config).eval()


def tiny_sd1(seed: int = 0, latent_size: int = 8) -> SDModel:
    """A random SD1-architecture model with ldm's fixed choices (GroupNorm(32), 8 heads), so that it survives a
    trip through the ldm layout bit for bit."""
    text_encoder = tiny_text_encoder(seed)
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        layers_per_block=LAYERS_PER_BLOCK, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8, norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), latent_channels=4,
        layers_per_block=1, norm_num_groups=32, sample_size=latent_size * 2,
    )
    # Random (not zero) values everywhere, so that a swapped or dropped tensor cannot go unnoticed.
    with torch.no_grad():
        for module in (unet, vae):
            for param in module.parameters():
                param.normal_(0, 0.05)
    model = SDModel(load_clip_tokenizer(), text_encoder, unet.eval(), vae.eval(), make_scheduler(), name="tiny-sd1")
    return model.freeze()


# ---------------------------------------------------------------------------------------------------------------
# diffusers -> ldm names (test-only inverse of diffusers.loaders.single_file_utils)
# ---------------------------------------------------------------------------------------------------------------

_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_head(rest: str, table: dict) -> str:
    for old, new in table.items():
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def unet_key_to_ldm(key: str, up_attention: list[bool], per_block: int = LAYERS_PER_BLOCK) -> str:
    step = per_block + 1
    for old, new in _UNET_TOP.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    if m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        i, j, rest = int(m[1]), int(m[2]), m[3]
        return f"input_blocks.{1 + i * step + j}.0.{_rename_head(rest, _UNET_RESNET)}"
    if m := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", key):
        return f"input_blocks.{1 + int(m[1]) * step + int(m[2])}.1.{m[3]}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(m[1]) + 1) * step}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d)\.(.*)", key):
        return f"middle_block.{2 * int(m[1])}.{_rename_head(m[2], _UNET_RESNET)}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"output_blocks.{int(m[1]) * step + int(m[2])}.0.{_rename_head(m[3], _UNET_RESNET)}"
    if m := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", key):
        return f"output_blocks.{int(m[1]) * step + int(m[2])}.1.{m[3]}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        i = int(m[1])
        slot = 2 if up_attention[i] else 1  # the upsampler follows the level's last resnet (and attention)
        return f"output_blocks.{i * step + per_block}.{slot}.conv.{m[2]}"
    raise KeyError(f"no ldm name for UNet key {key}")


def vae_key_to_ldm(key: str, levels: int) -> str:
    part, rest = key.split(".", 1)
    if m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", rest):
        return f"{part}.down.{m[1]}.block.{m[2]}.{_rename_head(m[3], {'conv_shortcut': 'nin_shortcut'})}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", rest):
        return f"{part}.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", rest):
        level = levels - 1 - int(m[1])
        return f"{part}.up.{level}.block.{m[2]}.{_rename_head(m[3], {'conv_shortcut': 'nin_shortcut'})}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", rest):
        return f"{part}.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d)\.(.*)", rest):
        return f"{part}.mid.block_{int(m[1]) + 1}.{m[2]}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", rest):
        return f"{part}.mid.attn_1.{_rename_head(m[1], _VAE_ATTN)}"
    if rest.startswith("conv_norm_out."):
        return f"{part}.norm_out.{rest[len('conv_norm_out.'):]}"
    return key  # conv_in, conv_out, quant_conv, post_quant_conv keep their names


def ldm_state_from_model(model: SDModel, clip_prefix: str = "cond_stage_model.transformer.text_model.",
                         clone: bool = True) -> dict:
    """The model as an ldm single-file state dict (model.diffusion_model.*, first_stage_model.*, cond_stage_model.*)."""
    up_attention = ["CrossAttn" in t for t in model.unet.config.up_block_types]
    levels = len(model.vae.config.block_out_channels)
    per_block = model.unet.config.layers_per_block
    state = {}
    for key, tensor in model.unet.state_dict().items():
        state["model.diffusion_model." + unet_key_to_ldm(key, up_attention, per_block)] = tensor
    for key, tensor in model.vae.state_dict().items():
        ldm_key = vae_key_to_ldm(key, levels)
        if ".mid.attn_1." in ldm_key and ldm_key.endswith("weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # ldm's VAE attention uses 1x1 convolutions
        state["first_stage_model." + ldm_key] = tensor
    for key, tensor in model.text_encoder.state_dict().items():
        state[clip_prefix + key.removeprefix("text_model.")] = tensor
    if not clone:
        return state
    state[clip_prefix + "embeddings.position_ids"] = torch.arange(77)[None]
    # Extra keys real SD1 files carry (noise schedule buffers) that loaders must ignore.
    state["alphas_cumprod"] = make_scheduler().alphas_cumprod.clone()
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def sd15_ldm_meta_state() -> dict:
    """SD1.5's single-file keys and shapes as meta tensors (no memory): 686 UNet, 248 VAE, 196 CLIP keys."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=512,
        )
        # SD1's CLIP ViT-L/14 text encoder (transformers' CLIPTextConfig defaults to the 512-wide ViT-B/32).
        text_encoder = CLIPTextModel(CLIPTextConfig(**sd1_text_config()))
        model = SDModel(None, text_encoder, unet, vae, make_scheduler())
        return ldm_state_from_model(model, clone=False)


def write_single_file(model: SDModel, path: Path, dtype: torch.dtype | None = None, **kwargs) -> Path:
    state = ldm_state_from_model(model, **kwargs)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path), metadata={"modelspec.title": "tiny-sd1"})
    else:
        torch.save({"state_dict": state, "global_step": 7}, str(path))
    return path


def write_diffusers_folder(model: SDModel, path: Path) -> Path:
    model.pipeline().save_pretrained(str(path), safe_serialization=True)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Text encoders in each published layout
# ---------------------------------------------------------------------------------------------------------------


def canonical_state(text_encoder: CLIPTextModel) -> dict:
    return {"text_model." + k.removeprefix("text_model."): v.detach().clone()
            for k, v in text_encoder.state_dict().items() if not k.endswith("position_ids")}


def advunlearn_training_state(canon: dict) -> dict:
    """An AdvUnlearn training .pt's state dict: the wrapped model's `text_encoder.text_model.*` keys, plus the
    wrapper's second registration of the same modules (`embedding.*`, `encoder.*`, `final_layer_norm.*`)."""
    state = {"text_encoder." + k: v for k, v in canon.items()}
    state["text_encoder.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    for key, tensor in list(state.items()):
        rest = key.removeprefix("text_encoder.text_model.")
        state[rest.replace("embeddings.", "embedding.", 1) if rest.startswith("embeddings.") else rest] = tensor
    return state


def write_encoder_layouts(text_encoder: CLIPTextModel, folder: Path) -> dict[str, Path]:
    """One file or folder per supported layout, all holding `text_encoder`'s fp32 weights."""
    folder.mkdir(parents=True, exist_ok=True)
    canon = canonical_state(text_encoder)
    bare = {k.removeprefix("text_model."): v for k, v in canon.items()}
    paths = {}

    paths["text_model_safetensors"] = folder / "text_model.safetensors"
    save_file(canon, str(paths["text_model_safetensors"]))

    paths["transformers5_safetensors"] = folder / "bare.safetensors"
    save_file(bare, str(paths["transformers5_safetensors"]))

    paths["hf_folder"] = folder / "text_encoder"
    text_encoder.save_pretrained(str(paths["hf_folder"]), safe_serialization=True)

    # Published AdvUnlearn folders: config.json + a transformers-4 pickle (text_model.* keys, position_ids buffer).
    paths["advunlearn_folder"] = folder / "nudity_unlearned"
    paths["advunlearn_folder"].mkdir()
    (paths["advunlearn_folder"] / "config.json").write_text(json.dumps(text_encoder.config.to_dict()))
    torch.save({**canon, "text_model.embeddings.position_ids": torch.arange(77)[None]},
               str(paths["advunlearn_folder"] / "pytorch_model.bin"))

    paths["advunlearn_pt"] = folder / "TextEncoder-text_encoder_full-epoch_999.pt"
    torch.save(advunlearn_training_state(canon), str(paths["advunlearn_pt"]))

    paths["sd1_text_encoder_old"] = folder / "old_sd1_clip.safetensors"
    save_file({"cond_stage_model.transformer." + k: v for k, v in bare.items()}, str(paths["sd1_text_encoder_old"]))

    comfy = {"clip_l.transformer." + k: v for k, v in canon.items()}
    comfy["clip_l.transformer.text_projection.weight"] = torch.eye(text_encoder.config.hidden_size)
    comfy["clip_l.logit_scale"] = torch.tensor(4.6052)
    paths["comfyui"] = folder / "comfy_clip_l.safetensors"
    save_file(comfy, str(paths["comfyui"]))
    return paths
