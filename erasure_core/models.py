"""An SD1-family model bundle: tokenizer, CLIP text encoder, UNet, VAE and noise schedule.

Everything in `erasure_core` takes an `SDModel`. `loading.load_model` builds one from a diffusers folder, a
single-file SD1.x checkpoint, the name "demo" (the embedded shapes-world model) or "tiny" (a random model for
tests). This module sits at the bottom: it imports nothing of the package but errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .errors import ErasureError
from .layouts import sd1_text_config

DATA_DIR = Path(__file__).resolve().parent / "data"
TOKENIZER_DIR = DATA_DIR / "clip_tokenizer"

# The SD1 noise schedule (scaled-linear betas over 1,000 steps), shared by SD 1.4/1.5 and the demo model.
SD1_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)


def load_clip_tokenizer() -> CLIPTokenizer:
    """The real CLIP BPE tokenizer (49,408 tokens), shipped with the package: never fetched from a hub."""
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)


@dataclass
class SDModel:
    """The parts of an SD1.x model that erasure, probes and evaluation need.

    `text_encoder` is the ORIGINAL encoder; trained encoders are separate `CLIPTextModel`s of the same shape.
    `scheduler` is a DDIM scheduler carrying the model's training noise schedule.
    """

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    vae: AutoencoderKL | None
    scheduler: DDIMScheduler
    name: str = "model"
    source: str = ""
    extra: dict = field(default_factory=dict)
    sample_size: int | None = None  # latent side to work at; None: the UNet's native size

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def vae_scale_factor(self) -> int:
        if self.vae is None:
            return 8
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        """The latent side everything works at: the UNet's native one (64 for SD1.5 at 512 px) unless
        `at_resolution` chose another."""
        return int(self.sample_size or self.unet.config.sample_size)

    @property
    def resolution(self) -> int:
        return self.latent_size * self.vae_scale_factor

    def at_resolution(self, resolution: int) -> "SDModel":
        """The same model (same modules, nothing copied) working at `resolution` px square: lower is faster,
        e.g. 128 px to check an SD1.5 workflow on a CPU. The UNet needs a latent side divisible by its
        downsampling factor."""
        step = self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        if resolution < step or resolution % step:
            raise ErasureError(f"resolution {resolution} px does not fit model {self.name!r}: use a positive "
                               f"multiple of {step} px (its native resolution is {self.resolution} px)")
        return replace(self, sample_size=resolution // self.vae_scale_factor)

    @property
    def max_length(self) -> int:
        return int(self.tokenizer.model_max_length)

    def freeze(self) -> "SDModel":
        """Freeze every part: training creates its own trainable copy of the text encoder."""
        for module in (self.text_encoder, self.unet, self.vae):
            if module is not None:
                module.requires_grad_(False)
                module.eval()
        return self

    def to(self, device=None, dtype=None) -> "SDModel":
        # Pass only what is given: diffusers warns about `.to(dtype=None)` casts.
        args = {k: v for k, v in dict(device=device, dtype=dtype).items() if v is not None}
        for module in (self.text_encoder, self.unet, self.vae):
            if module is not None and args:
                module.to(**args)
        return self

    def pipeline(self, text_encoder: CLIPTextModel | None = None):
        """A diffusers `StableDiffusionPipeline` sharing this bundle's modules (no copies).

        `text_encoder` swaps in another encoder for this pipeline only.
        """
        from diffusers import StableDiffusionPipeline

        if self.vae is None:
            raise ValueError(f"model {self.name!r} has no VAE, so it cannot generate images")
        pipe = StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=text_encoder if text_encoder is not None else self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=DDIMScheduler.from_config(self.scheduler.config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe


def make_scheduler(**overrides) -> DDIMScheduler:
    return DDIMScheduler(**{**SD1_SCHEDULE, **overrides})


def denoising_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to output at `add_noise(x0, noise, timesteps)`: the noise for epsilon models
    (SD 1.x), the velocity for v-prediction models (the demo model, SD 2.x-v)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, timesteps)
    raise ValueError(f"prediction type {kind!r} is not supported; SD1-family models use 'epsilon' or 'v_prediction'")


def build_tiny_model(seed: int = 0, latent_size: int = 8, hidden: int = 32, layers: int = 2) -> SDModel:
    """A random SD1-architecture model small enough for unit tests (about 2.5M parameters, 1.6M of them the
    token table). Same classes and code paths as SD1.5, with the real tokenizer."""
    torch.manual_seed(seed)
    tokenizer = load_clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(**sd1_text_config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 4, projection_dim=hidden,
        num_hidden_layers=layers, num_attention_heads=2)))
    unet = UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=hidden,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=latent_size * 2,
    )
    model = SDModel(tokenizer, text_encoder, unet, vae, make_scheduler(), name="tiny", source=f"tiny:{seed}")
    return model.freeze()
