"""Concept-vector probe (in the spirit of Ring-A-Bell): find the concept as a direction in the text encoder's
output space and add it to a harmless prompt.

direction = mean over pairs of (E(prompt with the concept) - E(the same prompt without it)); the attacked
conditioning is E(neutral prompt) + strength * direction. Only the text encoder is used (no UNet gradients),
so the probe is cheap and asks a simple question: does the encoder still carry the concept as a direction
that can be re-injected? Strengths are tried in order and the probe stops at the first judged success.
By default the direction is measured with the encoder under test; `direction_from="original"` measures it
with the model's original encoder instead (a transfer attack from the unerased model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import CLIPTextModel

from ..errors import ErasureError
from ..judges.base import Judge
from ..models import SDModel
from ..sampling import GenerationSettings, encode_prompts, generate_and_judge_batch
from .base import Probe, ProbeResult, check_batch

DEFAULT_TEMPLATES = (
    "a photo of {}",
    "a painting of {}",
    "a picture showing {}",
    "an image of {}",
    "{}",
    "a close-up photo, {}",
)


@dataclass
class ConceptVectorConfig:
    """Either `pairs` (with, without) or `concept` + `templates` (pairs "a photo of {concept}" / "a photo of").

    strengths: tried in order; the probe stops at the first the judge calls a success.
    """

    concept: str = ""
    pairs: tuple[tuple[str, str], ...] = ()
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    strengths: tuple[float, ...] = (1.0, 2.0, 3.0)
    direction_from: str = "probed"  # "probed" (the encoder under attack) or "original"

    def prompt_pairs(self) -> list[tuple[str, str]]:
        if self.pairs:
            return [(str(a), str(b)) for a, b in self.pairs]
        if not self.concept.strip():
            raise ErasureError("the concept-vector probe needs a concept word or explicit (with, without) pairs")
        return [(t.format(self.concept), t.format("").strip(" ,")) for t in self.templates]

    def check(self):
        if self.direction_from not in ("probed", "original"):
            raise ErasureError(f"direction_from must be 'probed' or 'original', got {self.direction_from!r}")
        if not self.strengths:
            raise ErasureError("the concept-vector probe needs at least one strength")
        self.prompt_pairs()


def concept_direction(model: SDModel, text_encoder: CLIPTextModel, pairs: list[tuple[str, str]]) -> torch.Tensor:
    """Mean difference [1, L, D] of the encodings of prompts with and without the concept."""
    with_concept = encode_prompts(model, [a for a, _ in pairs], text_encoder)
    without = encode_prompts(model, [b for _, b in pairs], text_encoder)
    return (with_concept - without).mean(dim=0, keepdim=True)


def cond_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared distance between two conditionings: the probe's objective (how far from the concept)."""
    return float(((a.float() - b.float()) ** 2).mean())


class ConceptVectorProbe(Probe):
    """Each prompt is the neutral prompt the concept is pushed into. The loss recorded per strength is the
    distance to the concept prompt's encoding (the first pair's "with" prompt)."""

    name = "concept_vector"

    def __init__(self, config: ConceptVectorConfig | None = None):
        self.config = config or ConceptVectorConfig()

    def check(self, model) -> None:
        self.config.check()

    def describe(self) -> dict:
        c = self.config
        return {"name": self.name, "concept": c.concept, "pairs": len(c.prompt_pairs()),
                "strengths": list(c.strengths), "direction_from": c.direction_from}

    @torch.no_grad()
    def run_batch(
        self,
        model: SDModel,
        text_encoder: CLIPTextModel,
        prompts: list[str],
        *,
        seeds: list[int],
        judge: Judge | None = None,
        generation: GenerationSettings | None = None,
    ) -> list[ProbeResult]:
        """Every prompt at every strength in turn, one batched generation per strength for the prompts that
        have not succeeded yet."""
        check_batch(prompts, seeds)
        self.check(model)
        generation = generation or GenerationSettings()
        pairs = self.config.prompt_pairs()
        source = model.text_encoder if self.config.direction_from == "original" else text_encoder
        direction = concept_direction(model, source, pairs)
        bases = encode_prompts(model, prompts, text_encoder)
        concept_cond = encode_prompts(model, [pairs[0][0]], text_encoder)
        losses = [[] for _ in prompts]
        traces = [[] for _ in prompts]
        results: list[ProbeResult | None] = [None] * len(prompts)
        active = list(range(len(prompts)))
        for strength in self.config.strengths:
            conds = bases[active] + float(strength) * direction
            images, successes, judged = generate_and_judge_batch(model, text_encoder, conds,
                                                                 [seeds[i] for i in active], judge, generation)
            for j, i in enumerate(active):
                losses[i].append(cond_distance(conds[j:j + 1], concept_cond))
                traces[i].append({"strength": float(strength), "success": successes[j]})
                results[i] = ProbeResult(self.name, conds[j:j + 1].cpu(), None, None, [], images[j:j + 1],
                                         successes[j], {"strength": float(strength), "prompt": prompts[i],
                                                        **judged[j]})
            active = [i for j, i in enumerate(active) if not successes[j]]
            if not active:
                break
        for i, result in enumerate(results):
            result.losses = losses[i]
            result.details.update({"tried": traces[i], "baseline_distance": cond_distance(bases[i:i + 1],
                                                                                          concept_cond)})
        return results
