"""Attacks on (erased) text encoders. `soft_prompt` is shared by training (the inner attack) and probes."""

from .soft_prompt import (
    SoftPromptConfig,
    SoftPromptResult,
    attack_radius,
    optimize_adversarial_embeddings,
    project_to_ball,
    random_vocab_embeddings,
    typical_token_norm,
)

__all__ = ["SoftPromptConfig", "SoftPromptResult", "attack_radius", "optimize_adversarial_embeddings",
           "project_to_ball", "random_vocab_embeddings", "typical_token_norm"]
