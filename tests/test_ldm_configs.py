"""diffusers -> ldm configs and VAE keys for ComfyUI's classes (erasure_core.ldm_configs), without a server."""
import json

import pytest
import torch

from erasure_core.demo import WEIGHTS_DIR
from erasure_core.errors import ErasureError
from erasure_core.ldm_configs import (comfy_clip_config, diffusers_vae_to_ldm, ldm_sampling_settings,
                                      ldm_unet_config, ldm_vae_config)
from erasure_core.models import build_tiny_model

# The SD1.5 UNet's diffusers config (runwayml/stable-diffusion-v1-5, unet/config.json), the fields that matter.
SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768, "attention_head_dim": 8,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_num_groups": 32, "use_linear_projection": False,
}


def _demo_config(part: str) -> dict:
    name = "scheduler_config.json" if part == "scheduler" else "config.json"
    return json.loads((WEIGHTS_DIR / part / name).read_text())


def test_sd15_unet_translates_to_comfyuis_own_sd15_config():
    # ComfyUI's model_detection reads these values off an SD1.5 checkpoint (comfy/supported_models.py SD15).
    config = ldm_unet_config(SD15_UNET)
    assert config["model_channels"] == 320 and config["channel_mult"] == [1, 2, 4, 4]
    assert config["num_res_blocks"] == [2, 2, 2, 2] and config["context_dim"] == 768
    assert config["transformer_depth"] == [1, 1, 1, 1, 1, 1, 0, 0]
    assert config["transformer_depth_output"] == [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    assert config["transformer_depth_middle"] == 1 and config["num_heads"] == 8
    assert config["use_linear_in_transformer"] is False and config["adm_in_channels"] is None


def test_demo_unet_has_no_attention_in_its_first_level():
    config = ldm_unet_config(_demo_config("unet"))
    assert config["transformer_depth"] == [0, 1, 1] and config["transformer_depth_output"] == [0, 0, 1, 1, 1, 1]
    assert config["channel_mult"] == [1, 2, 4] and config["image_size"] == 16


@pytest.mark.parametrize("change, words", [
    ({"addition_embed_type": "text_time"}, "SDXL-style"),
    ({"norm_num_groups": 8}, "8 groups"),
    ({"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}, "mid block"),
    ({"block_out_channels": [320, 480, 1280, 1280]}, "not multiples"),
    ({"layers_per_block": [2, 1, 2, 2]}, "different layers per block"),
    ({"up_block_types": ["UpBlock2D"] * 4}, "not an SD1-style layout"),
])
def test_unsupported_unets_are_refused(change, words):
    with pytest.raises(ErasureError, match=words):
        ldm_unet_config({**SD15_UNET, **change})


def test_a_model_with_other_group_norm_counts_is_refused():
    # The tiny test model uses GroupNorm(8): ComfyUI's modules hard-code 32, so it cannot be built natively.
    tiny = build_tiny_model()
    with pytest.raises(ErasureError, match="GroupNorm with 8 groups"):
        ldm_unet_config(tiny.unet.config)
    with pytest.raises(ErasureError, match="GroupNorm with 8 groups"):
        ldm_vae_config(tiny.vae.config)


def test_sampling_settings_and_unknown_schedules():
    assert ldm_sampling_settings(_demo_config("scheduler")) == {
        "beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000}
    with pytest.raises(ErasureError, match="noise schedule 'exotic'"):
        ldm_sampling_settings({**_demo_config("scheduler"), "beta_schedule": "exotic"})


def test_vae_keys_round_trip_through_diffusers_own_ldm_converter():
    # Ours maps diffusers -> ldm for any number of levels; diffusers' converter maps ldm -> diffusers. The demo
    # VAE has three levels (SD's has four): every key and tensor must come back unchanged.
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    config = _demo_config("vae")
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(config)
    state = vae.state_dict()
    ldm = diffusers_vae_to_ldm(state, len(config["block_out_channels"]))
    assert ldm["encoder.mid.attn_1.q.weight"].ndim == 4  # ldm uses 1x1 convolutions there
    back = convert_ldm_vae_checkpoint({f"first_stage_model.{k}": v for k, v in ldm.items()}, dict(vae.config))
    assert set(back) == set(state)
    assert all(torch.equal(back[k].reshape(state[k].shape), state[k]) for k in state)
    ddconfig = ldm_vae_config(config)["params"]["ddconfig"]
    assert ddconfig["ch"] == 32 and ddconfig["ch_mult"] == [1, 1, 2] and ddconfig["z_channels"] == 4


def test_clip_config_and_unsupported_activation():
    config = _demo_config("text_encoder")
    out = comfy_clip_config(config)
    assert out["hidden_size"] == out["projection_dim"] == config["hidden_size"]
    assert out["model_type"] == "clip_text_model"
    with pytest.raises(ErasureError, match="activation 'relu'"):
        comfy_clip_config({**config, "hidden_act": "relu"})
