"""Which retain prompts to keep: never one that names a concept being erased, and never one for which the
ORIGINAL model already draws the concept.

Why the second rule: when a concept is the model's default, prompts that do not name it still produce it (the
demo model draws a circle for "a red shape" in 11 of 16 seeds). Retaining such a prompt teaches the encoder to
keep drawing the concept, against the unlearning. A list of words per concept cannot know this; the original
model's own predictions can. For a retain prompt r and concept c, on noisy latents the original model produces
for c (x_t, t), with d_p = eps0(x_t, t, p) - eps0(x_t, t, ""):

    alignment(r, c) = <d_r, d_c> / <d_c, d_c>

the share of the concept's own guidance direction that r's guidance carries (1: as much as the concept prompt
itself, 0: none). Prompts whose alignment with any concept exceeds `retain_max_alignment` are left out.
It uses nothing but the model and the prompts, so it is the same rule for every concept. See ALIGNMENT_POINTS
for why it is not on by default.
"""

from __future__ import annotations

import re

import torch

from ..latents import LatentPool, UNetRunner
from .config import check

# Points the alignment averages over: 2 trajectories, 8 (trajectory, step) pairs. Measured on the demo model
# this is NOT enough: two draws of the points ranked its 369 retain prompts almost independently (correlation
# 0.19 for "circle", 0.02 for "red"); the top of the ranking followed whether a prompt's background word matched
# the sampled trajectories' background. So the rule is off by default (retain_max_alignment None) until a
# better-conditioned score is measured.
ALIGNMENT_TRAJECTORIES = 2
ALIGNMENT_POINTS = 8


def filter_retain_prompts(prompts: list[str], concepts: list[str]) -> list[str]:
    """Drop retain prompts that mention a concept being erased: retaining it would fight the unlearning."""
    # Whole words only: erasing "red" must not drop "a colored pencil".
    patterns = [re.compile(rf"\b{re.escape(c.lower().strip())}\b") for c in concepts if c.strip()]
    return [p for p in prompts if not any(pattern.search(p.lower()) for pattern in patterns)]


@torch.no_grad()
def concept_alignment(model, runner: UNetRunner, concept_conds: torch.Tensor, uncond: torch.Tensor,
                      retain_conds: torch.Tensor, *, num_inference_steps: int, guidance: float, seed: int,
                      batch: int = 64) -> torch.Tensor:
    """alignment(r, c) for every retain prompt r (rows) and concept c (columns): [R, C]."""
    generator = torch.Generator().manual_seed(seed)
    columns = []
    for c in range(concept_conds.shape[0]):
        pool = LatentPool.build(model, runner, concept_conds[c : c + 1], uncond,
                                torch.zeros(ALIGNMENT_TRAJECTORIES, dtype=torch.long),
                                num_inference_steps=num_inference_steps, guidance=guidance, generator=generator)
        points = pool.draw(ALIGNMENT_POINTS, generator, model.device)
        concept_dir = (points.eps_cond - points.eps_uncond).flatten()
        scores = []
        for conds in retain_conds.split(max(1, batch // ALIGNMENT_POINTS)):
            n = conds.shape[0]
            latents = points.latents.repeat(n, 1, 1, 1)
            cond = conds.repeat_interleave(ALIGNMENT_POINTS, dim=0)
            eps = runner(latents, points.timesteps.repeat(n), cond).float()
            retain_dir = (eps - points.eps_uncond.repeat(n, 1, 1, 1)).reshape(n, -1)
            scores.append(retain_dir @ concept_dir / concept_dir.dot(concept_dir).clamp_min(1e-12))
        columns.append(torch.cat(scores))
    return torch.stack(columns, dim=1).cpu()


def cached_alignment(model, runner, concepts, concept_conds, uncond, retain_prompts, retain_conds, config,
                     cache: dict | None) -> torch.Tensor:
    """concept_alignment for a training run, computed once per (model, concepts, prompts, sampling) in `cache`
    (the caller's latent cache: ESD and AdvUnlearn of one concept share it)."""
    key = ("alignment", id(model.unet), id(model.text_encoder), tuple(concepts), tuple(retain_prompts),
           config.num_ddim_steps, config.guidance, config.seed)
    cache = cache if cache is not None else {}
    if key not in cache:
        cache[key] = concept_alignment(model, runner, concept_conds, uncond, retain_conds,
                                       num_inference_steps=config.num_ddim_steps, guidance=config.guidance,
                                       seed=config.seed + 2_000_003)
    return cache[key]


def select_by_alignment(prompts: list[str], alignment: torch.Tensor, max_alignment: float | None) -> list[int]:
    """Indices of the prompts to keep (every one when `max_alignment` is None); an error if none is left."""
    if max_alignment is None:
        return list(range(len(prompts)))
    keep = [i for i in range(len(prompts)) if float(alignment[i].max()) <= max_alignment]
    check(bool(keep), f"every retain prompt carries the concept (alignment > retain_max_alignment="
                      f"{max_alignment}); raise it, pass other retain_prompts, or set it to None")
    return keep
