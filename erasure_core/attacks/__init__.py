"""Attacks on (erased) text encoders. `soft_prompt` is shared by training (the inner attack) and probes."""

from .soft_prompt import (
    SoftPromptConfig,
    SoftPromptResult,
    optimize_adversarial_embeddings,
    random_vocab_embeddings,
)

__all__ = ["SoftPromptConfig", "SoftPromptResult", "optimize_adversarial_embeddings", "random_vocab_embeddings"]
