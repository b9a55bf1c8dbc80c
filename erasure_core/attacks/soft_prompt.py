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
    stopped_at: int | None = None  # the step an early stop ended the attack at (batched attacks), None = ran out


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
    objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    config: SoftPromptConfig,
    generators: list[torch.Generator],
    *,
    stop: Callable[[torch.Tensor, torch.Tensor], list[bool]] | None = None,
    stop_every: int = 0,
) -> list[SoftPromptResult]:
    """Many prompts attacked at once: `input_ids` [B, L] share the slot `positions`; `objective(cond [b, L, D],
    rows [b])` returns one loss per prompt [b] for the prompts `rows` (indices into the B prompts), each loss
    depending on its own row only.

    The problem is separable, so this equals B separate runs: the gradient of the summed losses with respect to
    prompt b's tokens is that of prompt b's loss alone, Adam and sign steps act element by element and the
    projection row by row. Prompt b draws its starting tokens from `generators[b]`; with restarts, each prompt
    keeps its own best restart. One batched encoder/UNet call per step instead of B is what makes the
    efficacy benchmark affordable (`bench/demo_efficacy.py`).

    Early stop: every `stop_every` steps (0 = never) `stop(rows, embeds [b, k, D])` says which prompts are
    done (the probe: a judged success); they keep those embeddings (`stopped_at` = the step) and leave the batch,
    and later restarts skip them. The others' steps are unchanged (Adam's state is kept row by row).
    """
    config.validate()
    if len(positions) != config.k:
        raise ErasureError(f"prompts have {len(positions)} adversarial slots but the attack uses k={config.k}")
    if len(generators) != input_ids.shape[0]:
        raise ErasureError(f"{input_ids.shape[0]} prompts need as many generators, got {len(generators)}")
    if stop_every < 0:
        raise ErasureError(f"stop_every must be >= 0, got {stop_every}")
    radius = attack_radius(text_encoder, config.epsilon)

    def encode(embeds, rows):
        return encode_slotted(text_encoder, input_ids[rows], positions, embeds)

    best: list[SoftPromptResult | None] = [None] * len(generators)
    for _ in range(config.restarts):
        rows = [b for b, kept in enumerate(best) if kept is None or kept.stopped_at is None]
        if not rows:
            break
        start = torch.stack([random_vocab_embeddings(text_encoder, config.k, generators[b]) for b in rows])
        found = _optimize_rows(encode, objective, config, project_to_ball(start, radius), radius, rows,
                               stop if stop_every else None, stop_every)
        index = torch.tensor(rows)
        embeds = torch.stack([found[b][0] for b in rows])
        with torch.no_grad():
            final = objective(encode(embeds, index), index).detach().float().reshape(-1)
        for j, b in enumerate(rows):
            stopped_at = found[b][2]
            if best[b] is None or stopped_at is not None or float(final[j]) < best[b].final_loss:
                best[b] = SoftPromptResult(found[b][0], found[b][1], float(final[j]), radius, stopped_at)
    return best


def _optimize_rows(encode, objective, config, embeds, radius, rows, stop, stop_every):
    """`_optimize_once` for a batch of prompts [b, k, D] that may stop early: {row: (embeds, losses, stopped_at)}."""
    active = list(rows)
    embeds = embeds.requires_grad_(True)
    optimizer = torch.optim.Adam([embeds], lr=config.lr) if config.method == "pgd" else None
    losses = {b: [] for b in rows}
    out = {}
    for step in range(1, config.steps + 1):
        index = torch.tensor(active)
        loss = objective(encode(embeds, index), index)
        if not torch.isfinite(loss).all():
            raise ErasureError(f"the attack objective became {loss.detach().tolist()} at step {step}")
        (grad,) = torch.autograd.grad(loss.sum(), [embeds])
        for j, b in enumerate(active):
            losses[b].append(float(loss[j].detach()))
        _step(embeds, grad, optimizer, config.lr)
        project_to_ball(embeds, radius)
        if stop is None or step % stop_every or step == config.steps:
            continue  # the caller judges the final point itself
        done = stop(index, embeds.detach())
        for j, b in enumerate(active):
            if done[j]:
                out[b] = (embeds[j].detach().clone(), losses[b], step)
        keep = [j for j, d in enumerate(done) if not d]
        if not keep:
            return out
        if len(keep) < len(active):
            embeds, optimizer = _keep_rows(embeds, optimizer, keep)
            active = [active[j] for j in keep]
    for j, b in enumerate(active):
        out[b] = (embeds[j].detach().clone(), losses[b], None)
    return out


def _keep_rows(embeds, optimizer, keep):
    """The rows `keep` of the embeddings, with their own Adam moments (Adam acts element by element)."""
    kept = embeds.detach()[keep].clone().requires_grad_(True)
    if optimizer is None:
        return kept, None
    state = optimizer.state.get(embeds, {})
    new = torch.optim.Adam([kept], lr=optimizer.defaults["lr"])
    if state:
        new.state[kept] = {k: (v[keep].clone() if torch.is_tensor(v) and v.dim() else v) for k, v in state.items()}
    return kept, new


def _optimize_once(encode, objective, config, embeds, radius):
    """Optimise one prompt's `embeds` [k, D]; returns (embeds, losses per step)."""
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
