"""The soft-prompt attack: optimise k continuous token embeddings inserted into a prompt.

The same function is AdvUnlearn's inner attack during training and the robustness probe afterwards; the
caller supplies the objective (a function of the encoder's output, to MINIMISE). The embeddings live in the
word-embedding space (what the token table holds).

Budget: `epsilon` bounds each adversarial token's L2 norm by epsilon x the token table's typical (median) row
norm; every step is followed by a projection onto that ball, and so is the initial point. None = unbounded, as in
the public AdvUnlearn code. Why a budget: in a pre-layer-norm CLIP one large-norm slot writes its own output row
almost regardless of the trained weights (on the demo model, an unbounded encoder-only attack copying the
original's concept rows brought the concept back in 9/16 prompts; with norms <= 0.5 x typical, 2/16), so an
unbounded attack measures nothing a text-encoder method can defend.
`restarts` runs the attack from that many starts (the first from `init` when given) and keeps the one whose
final objective is lowest.

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
from ..prompts import INSERTIONS, SlottedPrompt, encode_slotted, token_embedding_table

ATTACK_METHODS = ("pgd", "fast")
ATTACK_INITS = ("random_vocab", "previous")
# The training attack's budget, and so the headline soft-prompt probe's default (relative to the median token
# norm; on the demo model the median row has norm 0.155 and its trained word rows 0.43-0.45, about 2.8x).
DEFAULT_EPSILON = 1.0


@dataclass
class SoftPromptConfig:
    """The attack's settings. The training (`EraseConfig.attack`, options `attack_k`, `attack_steps`, ...) and the
    soft-prompt probe (`SoftPromptProbeConfig.attack`, options `k`, `steps`, ...) each hold one, so a field added
    here is an option of both (see `erasure_core.options.nested`)."""

    k: int = 1
    steps: int = 30
    lr: float = 1e-3  # the public code's attack learning rate
    method: str = "pgd"
    init: str = "random_vocab"
    insertion: str = "prefix"
    epsilon: float | None = None  # L2 bound per token, in units of the token table's median row norm
    restarts: int = 1

    def validate(self, prefix: str = "") -> "SoftPromptConfig":
        """Refuse bad values; messages name the options as the holder spells them (`prefix`: "attack_")."""
        if self.method not in ATTACK_METHODS:
            raise ErasureError(f"unknown attack method {self.method!r}: use one of {', '.join(ATTACK_METHODS)}")
        if self.init not in ATTACK_INITS:
            raise ErasureError(f"unknown attack init {self.init!r}: use one of {', '.join(ATTACK_INITS)}")
        if self.insertion not in INSERTIONS:
            raise ErasureError(f"unknown insertion {self.insertion!r}: use one of {', '.join(INSERTIONS)}")
        for name, least in (("k", 1), ("steps", 0), ("restarts", 1)):
            if getattr(self, name) < least:
                raise ErasureError(f"{prefix}{name} must be >= {least}, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ErasureError(f"{prefix}lr must be > 0, got {self.lr}")
        if self.epsilon is not None and not self.epsilon > 0:
            raise ErasureError(f"{prefix}epsilon must be > 0 (or None for unbounded), got {self.epsilon}")
        return self


@dataclass
class SoftPromptResult:
    embeds: torch.Tensor  # [k, D], detached
    losses: list[float] = field(default_factory=list)  # objective before each step (of the kept restart)
    final_loss: float | None = None  # objective at `embeds` (computed when restarts > 1)
    radius: float | None = None  # the absolute L2 bound per token, None = unbounded


def typical_token_norm(text_encoder) -> float:
    """The median L2 norm of the token table's rows: the unit of an attack budget."""
    table = token_embedding_table(text_encoder).detach().float()
    return float(table.norm(dim=-1).median())


def attack_radius(text_encoder, epsilon: float | None) -> float | None:
    """epsilon (relative to the typical token norm) -> the absolute L2 bound; None stays unbounded."""
    return None if epsilon is None else float(epsilon) * typical_token_norm(text_encoder)


def project_to_ball(embeds: torch.Tensor, radius: float | None) -> torch.Tensor:
    """Each row scaled down onto the L2 ball of `radius` if it lies outside (in place; returns it)."""
    if radius is not None:
        with torch.no_grad():
            norms = embeds.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            embeds.mul_(torch.clamp(radius / norms, max=1.0))
    return embeds


def random_vocab_embeddings(text_encoder, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Embeddings of k random ordinary tokens (the last two ids, start/end of text, are excluded)."""
    table = token_embedding_table(text_encoder)
    ids = torch.randint(table.shape[0] - 2, (k,), generator=generator)
    return table[ids.to(table.device)].detach().clone().float()


def _initial_embeddings(text_encoder, config, init, generator, restart=0):
    if config.init == "previous" and init is not None and restart == 0:
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

    `init` [k, D] is used when `config.init == "previous"` (for the first restart); otherwise (or when it is None)
    the embeddings of k random vocabulary tokens. Every point is kept inside the `config.epsilon` budget. Returns
    the embeddings after the last step (of the best restart) and the objective before each step.
    """
    config.validate()
    if slotted.k != config.k:
        raise ErasureError(f"prompt has {slotted.k} adversarial slots but the attack uses k={config.k}")
    radius = attack_radius(text_encoder, config.epsilon)
    best = None
    for restart in range(config.restarts):
        start = _initial_embeddings(text_encoder, config, init, generator, restart)
        embeds, losses = _optimize_once(lambda e: encode_slotted(text_encoder, slotted, adv_embeds=e), objective,
                                        config, project_to_ball(start, radius), radius)
        if config.restarts == 1:
            return SoftPromptResult(embeds, losses, None, radius)
        with torch.no_grad():
            final = float(objective(encode_slotted(text_encoder, slotted, adv_embeds=embeds)))
        if best is None or final < best.final_loss:
            best = SoftPromptResult(embeds, losses, final, radius)
    return best


def optimize_adversarial_embeddings_batch(
    text_encoder,
    input_ids: torch.Tensor,
    positions: list[int],
    objective: Callable[[torch.Tensor], torch.Tensor],
    config: SoftPromptConfig,
    generators: list[torch.Generator],
) -> list[SoftPromptResult]:
    """Many prompts attacked at once: `input_ids` [B, L] share the slot `positions`; `objective(cond [B, L, D])`
    returns one loss per prompt [B], each depending on its own row only.

    The problem is separable, so this equals B separate runs: the gradient of the summed losses with respect to
    prompt b's tokens is that of prompt b's loss alone, Adam and sign steps act element by element and the
    projection row by row. Prompt b draws its starting tokens from `generators[b]`; with restarts, each prompt
    keeps its own best restart. One batched encoder/UNet call per step instead of B is what makes the
    efficacy benchmark affordable (`bench/demo_efficacy.py`).
    """
    config.validate()
    if len(positions) != config.k:
        raise ErasureError(f"prompts have {len(positions)} adversarial slots but the attack uses k={config.k}")
    if len(generators) != input_ids.shape[0]:
        raise ErasureError(f"{input_ids.shape[0]} prompts need as many generators, got {len(generators)}")
    radius = attack_radius(text_encoder, config.epsilon)

    def encode(embeds):
        return encode_slotted(text_encoder, input_ids, positions, embeds)

    best: list[SoftPromptResult | None] = [None] * len(generators)
    for _ in range(config.restarts):
        start = torch.stack([random_vocab_embeddings(text_encoder, config.k, g) for g in generators])
        embeds, losses = _optimize_once(encode, objective, config, project_to_ball(start, radius), radius)
        with torch.no_grad():
            final = objective(encode(embeds)).detach().float().reshape(-1)
        for b in range(len(generators)):
            if best[b] is None or float(final[b]) < best[b].final_loss:
                best[b] = SoftPromptResult(embeds[b].clone(), [step[b] for step in losses], float(final[b]), radius)
    return best


def _optimize_once(encode, objective, config, embeds, radius):
    """Optimise `embeds` ([k, D], or [B, k, D] with one loss per prompt); returns (embeds, losses per step)."""
    embeds = embeds.requires_grad_(True)
    optimizer = torch.optim.Adam([embeds], lr=config.lr) if config.method == "pgd" else None
    losses = []
    for _ in range(config.steps):
        loss = objective(encode(embeds))
        if not torch.isfinite(loss).all():
            raise ErasureError(f"the attack objective became {loss.detach().tolist()} at step {len(losses) + 1}")
        (grad,) = torch.autograd.grad(loss.sum(), [embeds])
        losses.append(loss.detach().float().tolist())
        _step(embeds, grad, optimizer, config.lr)
        project_to_ball(embeds, radius)
    return embeds.detach().clone(), losses


def _step(embeds, grad, optimizer, lr):
    if optimizer is None:
        with torch.no_grad():
            embeds -= lr * grad.sign()
        return
    embeds.grad = grad
    optimizer.step()
    embeds.grad = None
