"""The embedded demo model: a small SD1-family text-to-image model of a synthetic shapes world, and its judge.

`load_demo_model()` loads the shipped fp16 weights (trained by `python tools/train_demo_model.py` in the repository)
into the same diffusers/transformers classes as SD1.5, so every code path written for SD1.5 runs on it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ErasureError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# The sampler settings the demo model's quality was measured with (bench/demo_quality.py).
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 5.0
_PARTS = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
          "text_encoder": "model.safetensors"}


def _check_weights(folder: Path):
    required = [f"{part}/{name}" for part, name in _PARTS.items()] + [f"{part}/config.json" for part in _PARTS]
    missing = [path for path in required + ["scheduler/scheduler_config.json"] if not (folder / path).is_file()]
    if missing:
        raise ErasureError(
            f"the demo model's weights are missing from {folder} ({', '.join(missing)}); train them with "
            "`python tools/train_demo_model.py` from the repository (90 minutes by default on one CPU thread; the "
            "shipped quality took about 2 hours: run it again with --extend-minutes 30 to resume)"
        )


def load_demo_model(weights_dir: str | Path | None = None, dtype: torch.dtype = torch.float32):
    """The demo model as an `SDModel` named "demo" (fp16 weights on disk, `dtype` in memory), offline."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    from ..models import SDModel, load_clip_tokenizer

    folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    _check_weights(folder)
    common = dict(local_files_only=True)
    unet = UNet2DConditionModel.from_pretrained(str(folder / "unet"), torch_dtype=dtype, **common)
    vae = AutoencoderKL.from_pretrained(str(folder / "vae"), torch_dtype=dtype, **common)
    text_encoder, info = CLIPTextModel.from_pretrained(str(folder / "text_encoder"), dtype=dtype,
                                                       output_loading_info=True, **common)
    if info["missing_keys"] or info["unexpected_keys"]:  # transformers only warns and leaves weights random
        raise ErasureError(f"the demo text encoder in {folder} does not match its config: missing "
                           f"{sorted(info['missing_keys'])[:5]}, unexpected {sorted(info['unexpected_keys'])[:5]}")
    # The shipped schedule, prediction type included (the demo model predicts v, SD 1.x predicts epsilon).
    scheduler = DDIMScheduler.from_pretrained(str(folder / "scheduler"), **common)
    model = SDModel(load_clip_tokenizer(), text_encoder, unet, vae, scheduler, name="demo", source=str(folder))
    return model.freeze()


__all__ = ["DEFAULT_GUIDANCE", "DEFAULT_STEPS", "WEIGHTS_DIR", "load_demo_model"]
