"""A small real evaluation on the tiny model, shared by the report tests (HTML structure and browser)."""

import copy

import torch

from erasure_core.attacks.concept_vector import ConceptVectorConfig, ConceptVectorProbe
from erasure_core.attacks.soft_probe import SoftPromptProbe, SoftPromptProbeConfig
from erasure_core.attacks.unlearndiffatk import UnlearnDiffAtk, UnlearnDiffAtkConfig
from erasure_core.evaluate import evaluate
from erasure_core.judges.base import Judge, JudgeResult
from erasure_core.models import build_tiny_model


class NeverJudge(Judge):
    """Stand-in judge that never sees the concept, so every probe runs on every case."""

    name = "never"

    def judge(self, images):
        n = len(images)
        return JudgeResult([0.0] * n, [False] * n, [{"note": "stand-in"}] * n)

    def check_retain(self, images, prompts):
        return [True] * len(images)


def small_evaluation(out_dir=None):
    model = build_tiny_model(seed=0)
    erased = copy.deepcopy(model.text_encoder)
    with torch.no_grad():
        erased.final_layer_norm.bias.add_(0.5)
    probes = [
        SoftPromptProbe(SoftPromptProbeConfig(k=2, steps=6, lr=0.05, trajectories=1, points=2, sampling_steps=4)),
        UnlearnDiffAtk(UnlearnDiffAtkConfig(k=2, timesteps=(300, 600), steps_per_timestep=3)),
        ConceptVectorProbe(ConceptVectorConfig(concept="nudity", templates=("a photo of {}",), strengths=(1.0,))),
    ]
    return evaluate(model, {"erased": erased}, ["a photo of <nudity> & \"quotes\""], probes, NeverJudge(),
                    seeds=[0, 1], steps=3, guidance=4.0, retain_prompts=["a bowl of fruit"], out_dir=out_dir)


def rate_counts(r: dict) -> dict:
    """A rate without its per-prompt clusters (rates.with_clusters; checked by their own tests), for comparing
    the counts of a summary."""
    return {k: v for k, v in r.items() if k not in ("clusters", "design_effect", "clustered")}
