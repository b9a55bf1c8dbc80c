"""The demo model's architecture: SD1-family classes, shrunk to fit 20 MB of fp16 weights.

Every size is chosen so ComfyUI's SD1 code can host the model too: channels are multiples of 32 (its group
norms use 32 groups) and integer multiples of the first block's width (ComfyUI stores `channel_mult` as ints).
"""

from __future__ import annotations

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from ..layouts import sd1_text_config
from ..models import make_scheduler
from .world import IMAGE_SIZE

LATENT_SIZE = IMAGE_SIZE // 4  # 64 px -> 16x16x4, the VAE halves twice
TEXT_WIDTH = 64


def build_text_encoder() -> CLIPTextModel:
    """A CLIP text encoder with SD1's vocabulary, positions and activation; 3.3M parameters, 97% of them
    the token table."""
    return CLIPTextModel(CLIPTextConfig(**sd1_text_config(
        hidden_size=TEXT_WIDTH, intermediate_size=TEXT_WIDTH * 4, projection_dim=TEXT_WIDTH, num_hidden_layers=2,
        num_attention_heads=4)))


def build_unet() -> UNet2DConditionModel:
    """SD1's block types at three levels (16, 8, 4 px), 4.1M parameters.

    Cross-attention sits at the two lower levels and the middle, not at 16x16 as in SD1: on a CPU, attention
    over 256 positions cost more than the rest of the network, and shape and colour are global properties
    that the lower levels see whole.
    """
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        transformer_layers_per_block=1,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,  # diffusers' name for SD1's 8 heads
        norm_num_groups=32,
    )


def build_vae() -> AutoencoderKL:
    """A KL autoencoder, 64x64 px <-> 16x16x4 latents, 0.7M parameters."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 32, 64),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=IMAGE_SIZE,
    )


def build_scheduler():
    """SD1's noise schedule with v-prediction (as SD 2.x-v does). Why: with epsilon prediction the model must
    get the background and colour right through an output that sampling amplifies ~14x at the first step, and
    epsilon-MSE hardly penalises getting them wrong; the velocity is the clean image itself at high noise."""
    return make_scheduler(prediction_type="v_prediction")
