"""Concept captions: the retain list's prompts that NAME a concept, unlearned with a contrastive target.

Why: training on the bare word alone did not carry to captions on the demo model. "red" trained as a word still
drew red shapes for "a picture of a red star in outline style" (pre-attack ASR 0.48 [0.39, 0.56], N = 128, two
training seeds), while the retain set, which must leave such prompts out, held every caption word in place.

Which captions: those of the retain prompts that name a concept (whole words, as the retain filter decides).
They were thrown away before; now they are the concept's contexts. Nothing per concept name: a user's retain
list that never names the concept (the SD presets' object lists never name "nudity") simply gives none.

The target, for caption p and its contrast p' (p with the concept word replaced by a contrast word, or removed):

    target = eps0(p') - eta * (eps0(p) - eps0(p'))

ESD's negative guidance with eps0(p') in place of eps0(""): it moves away from the concept while keeping
everything else the caption says (colour, background, style), where an "" anchor also pushes away from the other
words. Replacing rather than removing matters when the concept is the model's default: the demo model draws a
circle for "a red shape" in 11 of 16 seeds, so "a red circle" minus "circle" is still mostly a circle.
`contrast_words` are the user's choice ("square,triangle" to erase "circle"); none given removes the word.

`plain_contrast` does the same for the bare concept prompt (and its attacked form): its target becomes
eps0(w) - eta * (eps0(c) - eps0(w)) for a contrast word w instead of ESD's eps0("") - eta * (eps0(c) - eps0("")),
since eps0("") of a model whose default is the concept points back at the concept.

`attack_captions` aims the inner attack at a caption instead of the bare word: each refresh draws one of the
concept's captions, the attacker puts its tokens into it and makes the current encoder reproduce the original's
prediction for that caption, and the unlearning step trains the attacked caption toward its contrastive target.
The probes attack captions (the prompts users write); training against attacks on the bare word alone left
"red" in 34 of 64 attacked captions (seed 0, with caption_weight 1).
"""

from __future__ import annotations

import functools
import re
from typing import Callable

import torch

from ..losses import esd_target, mse
from ..prompts import encode_slotted, slot_prompt
from .terms import UNetTerm


def word_pattern(concept: str) -> re.Pattern:
    """The concept as a whole word, case-insensitive (erasing "red" must not match "colored")."""
    return re.compile(rf"\b{re.escape(concept.strip())}\b", re.IGNORECASE)


def contrast_caption(caption: str, concept: str, replacement: str | None) -> str:
    """`caption` with every whole-word `concept` replaced by `replacement` (None: removed, spaces tidied)."""
    if replacement is not None:
        return word_pattern(concept).sub(replacement, caption)
    removed = word_pattern(concept).sub("", caption)
    return re.sub(r"\s+([,.])", r"\1", re.sub(r"\s{2,}", " ", removed)).strip().lstrip(",. ")


def caption_pairs(prompts: list[str], concept: str, contrast_words: list[str] | None) -> list[tuple[str, str]]:
    """(caption, contrast) for every prompt naming `concept`. The i-th caption takes the contrast words in turn,
    skipping words the caption already names (so "a circle next to a square" never becomes two squares)."""
    pattern = word_pattern(concept)
    words = [w for w in (contrast_words or []) if w.strip() and w.strip().lower() != concept.strip().lower()]
    pairs = []
    for caption in (p for p in prompts if pattern.search(p)):
        usable = [w for w in words if not word_pattern(w).search(caption)] or [None]
        replacement = usable[len(pairs) % len(usable)]
        pairs.append((caption, contrast_caption(caption, concept, replacement)))
    return pairs


class ConceptCaptions:
    """The captions of each concept with the ORIGINAL encoder's encodings of them and of their contrasts,
    computed once; `loss` is the contrastive unlearning loss on a batch of pool points."""

    def __init__(self, tokenizer, encode0, prompts: list[str], concepts: list[str], contrast_words):
        self.tokenizer = tokenizer
        self.attacked: dict[int, int] = {}  # concept -> the caption row under attack (attack_captions)
        self.pairs = [caption_pairs(prompts, c, contrast_words) for c in concepts]
        self.words = [w for w in (contrast_words or []) if w.strip()]
        self.word_conds = torch.cat([encode0(slot_prompt(tokenizer, w, 0).input_ids) for w in self.words]) \
            if self.words else None
        self.ids, self.conds, self.contrasts, self.removed_ids = [], [], [], []
        for concept, pairs in zip(concepts, self.pairs):
            if not pairs:
                self.ids.append(None), self.conds.append(None), self.contrasts.append(None)
                self.removed_ids.append(None)
                continue
            ids = torch.cat([slot_prompt(tokenizer, p, 0).input_ids for p, _ in pairs])
            # the captions with the concept removed: the other end of the concept-vector term's direction
            self.removed_ids.append(torch.cat([slot_prompt(tokenizer, contrast_caption(p, concept, None), 0).input_ids
                                               for p, _ in pairs]))
            contrast_ids = torch.cat([slot_prompt(tokenizer, q, 0).input_ids for _, q in pairs])
            self.ids.append(ids)
            self.conds.append(torch.cat([encode0(part) for part in ids.split(64)]))
            self.contrasts.append(torch.cat([encode0(part) for part in contrast_ids.split(64)]))

    def count(self, concept: int) -> int:
        return len(self.pairs[concept])

    def draw(self, concept: int, count: int, rng: torch.Generator) -> torch.Tensor:
        """`count` random caption rows of `concept`."""
        return torch.randint(self.count(concept), (count,), generator=rng)

    @torch.no_grad()
    def teacher(self, runner, points, concept: int, rows: torch.Tensor) -> torch.Tensor:
        """The original model's prediction for the captions `rows` (one per point): the attack's goal."""
        return runner(points.latents, points.timesteps, self.conds[concept][rows]).float()

    @torch.no_grad()
    def target(self, runner, points, concept: int, rows: torch.Tensor, negative_guidance: float) -> torch.Tensor:
        """eps0(p') - eta * (eps0(p) - eps0(p')) for the captions `rows` (one per point). Both predictions come
        from one UNet call of twice the batch (one call of 8 latents: 0.067 s against 0.10 s for two of 4 on
        the demo model, one CPU thread)."""
        twice = lambda x: torch.cat([x, x])  # noqa: E731
        eps = runner(twice(points.latents), twice(points.timesteps),
                     torch.cat([self.contrasts[concept][rows], self.conds[concept][rows]])).float()
        eps_contrast, eps_caption = eps.chunk(2)
        return esd_target(eps_contrast, eps_caption, negative_guidance)

    def slotted(self, concept: int, row: int, k: int, insertion: str, replace_word: str | None = None):
        """Caption `row` of `concept` with k adversarial slots (the caption attack's prompt)."""
        return slot_prompt(self.tokenizer, self.pairs[concept][row][0], k, insertion, replace_word=replace_word)

    # ----- the caption attack (attack_captions) -----
    def choose_attacked(self, concept: int, rng: torch.Generator):
        """A new caption to attack, for a concept that has captions (one without keeps the bare word)."""
        if self.count(concept):
            self.attacked[concept] = int(self.draw(concept, 1, rng))

    def attacked_prompt(self, concept: int, k: int, insertion: str, replace_word: str | None = None):
        return self.slotted(concept, self.attacked[concept], k, insertion, replace_word)

    def attacked_teacher(self, runner, points, concept: int) -> torch.Tensor:
        """The attack's goal: the original's prediction for the attacked caption (for the bare word: the pool's)."""
        if concept not in self.attacked:
            return points.eps_cond
        return self.teacher(runner, points, concept, self._attacked_rows(points, concept))

    def attacked_target(self, runner, points, concept: int, plain_target, negative_guidance: float):
        """The attacked prompt's unlearning target: the caption's contrastive one (the bare word: `plain_target`)."""
        if concept not in self.attacked:
            return plain_target
        return self.target(runner, points, concept, self._attacked_rows(points, concept), negative_guidance)

    def _attacked_rows(self, points, concept: int) -> torch.Tensor:
        return torch.full((len(points.timesteps),), self.attacked[concept])

    def term_inputs(self, runner, points, concept: int, rng: torch.Generator, negative_guidance: float):
        """(rows, target) of the caption loss at the (concept) pool points: one random caption of `concept` per
        point (its ids: `self.ids[concept][rows]`), drawn from `rng`, and its contrastive target. The loss is
        MSE(UNet(x_t, t, E(ids)), target)."""
        rows = self.draw(concept, points.latents.shape[0], rng)
        return rows, self.target(runner, points, concept, rows, negative_guidance)

    def loss(self, student, runner, points, concept: int, rng: torch.Generator, negative_guidance: float):
        """The caption loss itself, for a given encoder (the trainer back-propagates it with its other terms)."""
        rows, target = self.term_inputs(runner, points, concept, rng, negative_guidance)
        return mse(runner(points.latents, points.timesteps, encode_slotted(student, self.ids[concept][rows])), target)

    def unet_terms(self, student, points, concept: int, rows: torch.Tensor, target: torch.Tensor, weight: float,
                   vector_weight: float = 0.0, strengths: torch.Tensor | None = None) -> list[UNetTerm]:
        """The caption term on the captions `rows` and, with `vector_weight`, the concept-vector term on the same
        captions and target; the two share one encoding of the captions (encoded once per step)."""
        encode_captions = functools.cache(lambda: encode_slotted(student, self.ids[concept][rows]))
        terms = [UNetTerm("caption", weight, points.latents, points.timesteps, target, encode_captions)]
        if vector_weight > 0:
            terms.append(UNetTerm("vector", vector_weight, points.latents, points.timesteps, target,
                                  self.vector_encode(student, concept, rows, strengths, encode_captions)))
        return terms

    # ----- the concept-vector term (vector_weight) -----
    def vector_encode(self, student, concept: int, rows: torch.Tensor, strengths: torch.Tensor,
                      encode_captions: Callable[[], torch.Tensor] | None = None):
        """encode() for the concept-vector term: the student's encodings of the captions `rows`, each pushed
        along the concept's direction, E(p) + s * mean_j(E(p_j) - E(p_j without the concept)), the direction
        measured with the student itself on the same captions (what a Ring-A-Bell-style attacker measures on the
        released encoder). The term trains these toward the captions' contrastive targets, so an amplified
        direction no longer brings the concept back. `encode_captions`: E(p) already computed for the caption
        term (default: encoded here)."""
        encode_captions = encode_captions or (lambda: encode_slotted(student, self.ids[concept][rows]))
        removed = self.removed_ids[concept][rows]

        def encode() -> torch.Tensor:
            caption = encode_captions()
            direction = (caption - encode_slotted(student, removed)).mean(dim=0, keepdim=True)
            return caption + strengths.view(-1, 1, 1).to(caption) * direction

        return encode

    def plain_target(self, runner, points, rng: torch.Generator, negative_guidance: float):
        """The bare concept's target with a random contrast word in place of "" (`plain_contrast`):
        eps0(w) - eta * (eps0(c) - eps0(w)) at each point, w drawn per point from `rng`."""
        rows = torch.randint(len(self.words), (points.latents.shape[0],), generator=rng)
        with torch.no_grad():
            eps_word = runner(points.latents, points.timesteps, self.word_conds[rows]).float()
        return esd_target(eps_word, points.eps_cond, negative_guidance)
