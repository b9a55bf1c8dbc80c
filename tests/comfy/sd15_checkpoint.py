"""A random-weight Stable Diffusion 1.5 single-file checkpoint with the real key layout and shapes (fp16), and a
"robust" text encoder file that fits it, for the SD1.5 workflow tests.

Keys and shapes: the UNet and VAE from tests/sd1_fixtures.sd15_ldm_meta_state (diffusers SD1.5 modules on the
meta device, mapped to ldm names); the text encoder from erasure_core/configs/sd1_text_encoder.json (that helper
builds its CLIP with transformers' default 512 width, not SD1.5's 768). 686 UNet, 248 VAE and 196 CLIP tensors,
about 1.07 billion parameters. The values are
drawn directly in the file's layout: normalisation weights 1, biases 0, other tensors N(0, 1/fan_in), so
activations stay finite through all the layers. Both files are written once per machine into
<repo>/.cache/sd15_random/ (about 2.1 GB) and reused; a version in the file name invalidates old copies.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("SD15_RANDOM_CACHE", REPO / ".cache" / "sd15_random"))
VERSION = 2
CHECKPOINT = f"sd15_random_v{VERSION}.safetensors"
ROBUST_ENCODER = f"sd15_random_robust_v{VERSION}.safetensors"
PERTURBATION = 1e-2  # relative size of the change that makes the "robust" encoder differ from the checkpoint's


def _init_value(key: str, shape, generator):
    import torch

    name = key.rsplit(".", 1)[-1]
    if name == "bias" or "alphas_cumprod" in key:
        return torch.zeros(shape)
    if len(shape) == 1:  # GroupNorm / LayerNorm scales
        return torch.ones(shape)
    fan_in = 1
    for size in shape[1:]:
        fan_in *= size
    if "embedding" in key and len(shape) == 2:  # token / position embeddings: rows are looked up, not mixed
        fan_in = shape[1]
    return torch.randn(shape, generator=generator) / fan_in ** 0.5


def write_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write the random SD1.5-shaped checkpoint (fp16 safetensors) to `path` atomically."""
    import torch
    from safetensors.torch import save_file

    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    from sd1_fixtures import sd15_ldm_meta_state

    from transformers import CLIPTextConfig, CLIPTextModel

    from erasure_core.encoders import normalize_encoder_keys
    from erasure_core.layouts import sd1_text_config

    shapes = {k: v for k, v in sd15_ldm_meta_state().items() if not k.startswith("cond_stage_model.")}
    with torch.device("meta"):
        text_encoder = CLIPTextModel(CLIPTextConfig(**sd1_text_config()))
    for key, meta in normalize_encoder_keys(text_encoder.state_dict()).items():
        shapes["cond_stage_model.transformer." + key] = meta
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, meta in sorted(shapes.items()):
        state[key] = _init_value(key, tuple(meta.shape), generator).to(torch.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"modelspec.title": "random-weight SD1.5 shapes (tests only)"})
    os.replace(tmp, path)
    return path


def write_robust_encoder(checkpoint: Path, path: Path, seed: int = 1) -> Path:
    """The checkpoint's own text encoder plus a small random perturbation, saved with erasure_core's writer."""
    import torch
    from safetensors import safe_open

    sys.path.insert(0, str(REPO))
    from erasure_core.encoders import normalize_encoder_keys, save_encoder

    prefix = "cond_stage_model.transformer."
    with safe_open(str(checkpoint), framework="pt") as f:
        raw = {k[len(prefix):]: f.get_tensor(k).float() for k in f.keys() if k.startswith(prefix)}
    state = normalize_encoder_keys(raw)
    generator = torch.Generator().manual_seed(seed)
    for key, value in state.items():
        if value.is_floating_point():
            state[key] = value + PERTURBATION * value.std().clamp(min=1e-3) * torch.randn(value.shape, generator=generator)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.safetensors")
    save_encoder(state, tmp, metadata={"concepts": ["nudity"], "method": "random perturbation (tests only)",
                                       "base_model": CHECKPOINT})
    os.replace(tmp, path)
    return path


def cached_files() -> tuple[Path, Path]:
    """(checkpoint, robust encoder) in the cache folder, written on first use."""
    checkpoint, encoder = CACHE / CHECKPOINT, CACHE / ROBUST_ENCODER
    if not checkpoint.is_file():
        write_checkpoint(checkpoint)
    if not encoder.is_file():
        write_robust_encoder(checkpoint, encoder)
    return checkpoint, encoder


if __name__ == "__main__":
    import time

    start = time.monotonic()
    files = cached_files()
    print(json.dumps({"files": [str(p) for p in files], "seconds": round(time.monotonic() - start, 1)}))
