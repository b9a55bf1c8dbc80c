"""Precision and memory switches of the training loop: which autocast a run uses, and the encoder's activation
checkpointing across transformers versions."""

from contextlib import contextmanager

import torch


def encoder_checkpointing(encoder, on: bool):
    """Activation checkpointing of the encoder's layers (transformers 5 renamed the 4.x methods)."""
    if on:
        kwargs = {"use_reentrant": False}  # re-entrant checkpointing drops gradients of frozen-input layers
        if hasattr(encoder, "activation_checkpointing_enable"):
            encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    elif hasattr(encoder, "activation_checkpointing_disable"):
        encoder.activation_checkpointing_disable()
    else:
        encoder.gradient_checkpointing_disable()


@contextmanager
def gradient_checkpointing(encoder, unet, on: bool):
    """Activation checkpointing of the trained encoder and the frozen UNet while the block runs (nothing when not
    `on`); the UNet is left as it was found, since it is the caller's model (a ComfyUI UNet may already have it on)."""
    was_on = bool(getattr(unet, "is_gradient_checkpointing", False))
    if on:
        encoder_checkpointing(encoder, True)
        unet.enable_gradient_checkpointing()
    try:
        yield
    finally:
        if on:
            encoder_checkpointing(encoder, False)
            if not was_on:
                unet.disable_gradient_checkpointing()


def resolve_precision(requested: str, device: torch.device) -> str:
    if requested == "auto":
        return "bf16" if device.type == "cuda" else "no"
    return requested
