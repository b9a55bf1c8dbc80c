"""How well the demo model draws what it is asked for, measured by the demo judge on fresh seeds.

Every combination of shape, colour, style and background is asked for with a caption naming all four, with the
standard sampler (DDIM) and classifier-free guidance; accuracy = share of images whose judged value of an
attribute is the one asked for.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict

import torch

from ..sampling import encode_prompts, generate
from . import DEFAULT_GUIDANCE, DEFAULT_STEPS, world
from .judge import DemoJudge


def all_combinations() -> list[dict[str, str]]:
    return [dict(zip(world.WORLD, values)) for values in itertools.product(*world.WORLD.values())]


def generate_batched(model, prompts: list[str], seeds: list[int], *, steps: int, guidance: float,
                     text_encoder=None, batch: int = 48) -> torch.Tensor:
    """Images for (prompt, seed) pairs, `batch` at a time to bound memory."""
    out = []
    for i in range(0, len(prompts), batch):
        cond = encode_prompts(model, prompts[i:i + batch], text_encoder)
        out.append(generate(model, cond, seeds[i:i + batch], steps=steps, guidance=guidance,
                            text_encoder=text_encoder))
    return torch.cat(out)


def measure_quality(model, *, seeds_per_combination: int = 2, steps: int = DEFAULT_STEPS,
                    guidance: float = DEFAULT_GUIDANCE, first_seed: int = 10_000, judge_dir=None,
                    return_images: bool = False) -> dict:
    """Judge accuracy per attribute over every attribute combination, and broken down by shape x colour,
    style and background. Seeds start at `first_seed` (the training never saw generated seeds anyway)."""
    rng = random.Random(first_seed)
    cases = [c for c in all_combinations() for _ in range(seeds_per_combination)]
    prompts = [world.caption(c, rng, named=set(world.ATTRIBUTES)) for c in cases]
    seeds = list(range(first_seed, first_seed + len(cases)))
    images = generate_batched(model, prompts, seeds, steps=steps, guidance=guidance)
    predicted = DemoJudge(world.WORLD["shape"][0], judge_dir).predict(images)
    hits = {a: [predicted[a][i] == c[a] for i, c in enumerate(cases)] for a in world.ATTRIBUTES}
    result = {
        "n_images": len(cases), "steps": steps, "guidance": guidance, "sampler": "ddim",
        "seeds_per_combination": seeds_per_combination, "first_seed": first_seed,
        "accuracy": {a: _mean(h) for a, h in hits.items()},
        "by_shape_colour": _breakdown(cases, hits, lambda c: f"{c['colour']} {c['shape']}"),
        "by_style": _breakdown(cases, hits, lambda c: c["style"]),
        "by_background": _breakdown(cases, hits, lambda c: c["background"]),
        "examples": [{"prompt": p, "seed": s, "asked": c, "judged": {a: predicted[a][i] for a in world.ATTRIBUTES}}
                     for i, (p, s, c) in enumerate(zip(prompts, seeds, cases)) if i < 8],
    }
    if return_images:
        result["images"] = images
        result["prompts"] = prompts
    return result


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def _breakdown(cases, hits, key) -> dict[str, dict[str, float]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(cases):
        groups[key(c)].append(i)
    return {g: {a: _mean(hits[a][i] for i in idx) for a in world.ATTRIBUTES} | {"n": len(idx)}
            for g, idx in groups.items()}


def format_table(result: dict) -> str:
    """A plain-text table: overall accuracy, then the shape x colour, style and background breakdowns."""
    attrs = world.ATTRIBUTES
    lines = [f"demo model quality: {result['n_images']} images, DDIM {result['steps']} steps, "
             f"CFG {result['guidance']}, {result['seeds_per_combination']} seed(s) per combination",
             f"{'':18}" + "".join(f"{a:>12}" for a in attrs) + f"{'n':>6}",
             f"{'ALL':18}" + "".join(f"{result['accuracy'][a]:>12.3f}" for a in attrs) + f"{result['n_images']:>6}"]
    for title in ("by_shape_colour", "by_style", "by_background"):
        lines.append(f"-- {title[3:].replace('_', ' x ')}")
        for group, row in result[title].items():
            lines.append(f"{group:18}" + "".join(f"{row[a]:>12.3f}" for a in attrs) + f"{row['n']:>6}")
    return "\n".join(lines)
