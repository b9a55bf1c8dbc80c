"""The soft-prompt attack: optimise k continuous token embeddings inserted into a prompt.

The same function is AdvUnlearn's inner attack during training and the robustness probe afterwards; the
caller supplies the objective (a function of the encoder's output, to MINIMISE). The embeddings live in the
word-embedding space (what the token table holds), with no norm ball, as in AdvUnlearn.

Methods:
- "pgd": Adam steps on the embeddings (what the public AdvUnlearn code calls PGD; there is no projection
  because there is no constraint set);
- "fast": plain sign-of-gradient steps, embeds -= lr * sign(grad) ("fast adversarial training" style).

Gradients go to the embeddings only (`torch.autograd.grad`): the encoder's weights receive none and are
never modified.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import ErasureError
from ..prompts import SlottedPrompt, encode_slotted, token_embedding_table

ATTACK_METHODS = ("pgd", "fast")
ATTACK_INITS = ("random_vocab", "previous")


@dataclass
class SoftPromptConfig:
    k: int = 1
    steps: int = 30
    lr: float = 1e-3  # the public code's attack learning rate
    method: str = "pgd"
    init: str = "random_vocab"
    insertion: str = "prefix"

    def validate(self) -> "SoftPromptConfig":
        if self.method not in ATTACK_METHODS:
            raise ErasureError(f"unknown attack method {self.method!r}: use one of {', '.join(ATTACK_METHODS)}")
        if self.init not in ATTACK_INITS:
            raise ErasureError(f"unknown attack init {self.init!r}: use one of {', '.join(ATTACK_INITS)}")
        if self.k < 1 or self.steps < 0 or self.lr <= 0:
            raise ErasureError(f"attack needs k >= 1, steps >= 0 and lr > 0 (got k={self.k}, steps={self.steps}, "
                               f"lr={self.lr})")
        return self


@dataclass
class SoftPromptResult:
    embeds: torch.Tensor  # [k, D], detached
    losses: list[float] = field(default_factory=list)  # objective before each step


def random_vocab_embeddings(text_encoder, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Embeddings of k random ordinary tokens (the last two ids, start/end of text, are excluded)."""
    table = token_embedding_table(text_encoder)
    ids = torch.randint(table.shape[0] - 2, (k,), generator=generator)
    return table[ids.to(table.device)].detach().clone().float()


def _initial_embeddings(text_encoder, config, init, generator):
    if config.init == "previous" and init is not None:
        if init.shape[0] != config.k:
            raise ErasureError(f"previous embeddings have {init.shape[0]} tokens, the attack uses k={config.k}")
        return init.detach().clone().float()
    return random_vocab_embeddings(text_encoder, config.k, generator)


def optimize_adversarial_embeddings(
    text_encoder,
    slotted: SlottedPrompt,
    objective: Callable[[torch.Tensor], torch.Tensor],
    config: SoftPromptConfig,
    init: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> SoftPromptResult:
    """Minimise `objective(cond)` over the slot embeddings of `slotted`; cond [1, L, D] is the encoder's output.

    `init` [k, D] is used when `config.init == "previous"`; otherwise (or when it is None) the embeddings of
    k random vocabulary tokens. Returns the embeddings after the last step and the objective before each step.
    """
    config.validate()
    if slotted.k != config.k:
        raise ErasureError(f"prompt has {slotted.k} adversarial slots but the attack uses k={config.k}")
    embeds = _initial_embeddings(text_encoder, config, init, generator).requires_grad_(True)
    optimizer = torch.optim.Adam([embeds], lr=config.lr) if config.method == "pgd" else None
    losses = []
    for _ in range(config.steps):
        loss = objective(encode_slotted(text_encoder, slotted, adv_embeds=embeds))
        if not torch.isfinite(loss):
            raise ErasureError(f"the attack objective became {loss.item()} at step {len(losses) + 1}")
        (grad,) = torch.autograd.grad(loss, [embeds])
        losses.append(float(loss.detach()))
        _step(embeds, grad, optimizer, config.lr)
    return SoftPromptResult(embeds.detach().clone(), losses)


def _step(embeds, grad, optimizer, lr):
    if optimizer is None:
        with torch.no_grad():
            embeds -= lr * grad.sign()
        return
    embeds.grad = grad
    optimizer.step()
    embeds.grad = None
