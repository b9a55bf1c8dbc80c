"""End-to-end jobs that the CLI and the ComfyUI nodes share: a config in, files and tensors out."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import __version__
from .models import SDModel


def erasure_metadata(model: SDModel, concepts: list[str], result) -> dict:
    """What an encoder file records about how it was made (read back by `info` and the nodes)."""
    config = result.config.to_dict()
    return {
        "concepts": list(concepts),
        "method": config.get("method"),
        "preset": config.get("preset"),
        "hyperparameters": config,
        "base_model": model.name,
        "base_model_source": str(model.source),
        "base_encoder_hash": result.metadata["base_encoder_fingerprint"],
        "unet_evaluations": int(result.unet_evaluations),
        "iterations_done": len(result.history),
        "library": f"robust-erasure {__version__}",
    }


def erase_to_file(
    model: SDModel,
    concepts: list[str],
    config,
    out: str | Path,
    *,
    progress: Callable | None = None,
    should_cancel: Callable[[], bool] | None = None,
    checkpoint_path: str | Path | None = None,
    resume_from: str | Path | None = None,
):
    """Run `erase` and write the robust encoder to `out` (fp16 safetensors, `text_model.*` keys).

    Returns the `EraseResult`. Cancellation leaves the resumable checkpoint and raises `ErasureCancelled`.
    """
    from .encoders import save_encoder
    from .training import erase

    result = erase(
        model, concepts, config, progress=progress, should_cancel=should_cancel,
        checkpoint_path=checkpoint_path, resume_from=resume_from,
    )
    save_encoder(result.text_encoder, out, metadata=erasure_metadata(model, concepts, result))
    return result
