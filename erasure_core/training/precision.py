"""Precision and memory switches of the training loop: which autocast a run uses, and the encoder's activation
checkpointing across transformers versions."""

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


def resolve_precision(requested: str, device: torch.device) -> str:
    if requested == "auto":
        return "bf16" if device.type == "cuda" else "no"
    return requested
