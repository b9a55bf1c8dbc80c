"""Erasing a concept from an SD1.x text encoder: configuration (config.py), the loop (loop.py), where its
noisy latents come from (points.py), which retain prompts it keeps (retain.py), how a step's terms are
back-propagated (terms.py) and, optionally, their conflict projected out (projection.py), what it logs
(diagnostics.py) and its checkpoint file (checkpoint.py). Losses and latent sampling stay in erasure_core.losses
and erasure_core.latents."""

from .checkpoint import CHECKPOINT_FORMAT, RESUMABLE_CHANGES, read_checkpoint
from .config import (LAYER_GROUPS, METHODS, PRECISIONS, EraseConfig, check_layers, parse_layers,
                     select_trainable_parameters)
from .loop import EraseResult, erase
from .retain import filter_retain_prompts

__all__ = ["CHECKPOINT_FORMAT", "RESUMABLE_CHANGES", "LAYER_GROUPS", "METHODS", "PRECISIONS", "EraseConfig",
           "EraseResult", "check_layers", "erase", "filter_retain_prompts", "parse_layers", "read_checkpoint",
           "select_trainable_parameters"]
