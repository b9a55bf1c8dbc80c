"""Measure the demo model's quality with the demo judge and print a table.

    python bench/demo_quality.py [--seeds-per-combination 2] [--guidance G] [--steps 20] [--json OUT.json]
                                 [--grid OUT.png] [--weights DIR]

Every shape x colour x style x background combination is asked for with a caption naming all four
attributes; accuracy = share of generated images whose judged attribute is the one asked for.
Bars (issue 3): shape >= 0.90, colour >= 0.90, style >= 0.85.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from erasure_core.demo import DEFAULT_GUIDANCE, DEFAULT_STEPS, load_demo_model, world  # noqa: E402
from erasure_core.demo.judge import DemoJudge  # noqa: E402
from erasure_core.files import atomic_write_json  # noqa: E402
from erasure_core.sampling import encode_prompts, generate  # noqa: E402

# Issue 3's bars; "backgrounds as asked" is read as the colour bar, 0.90 (a 90-minute fresh run reached
# shape 1.000 but background 0.625, which the table must not call a pass).
BARS = {"shape": 0.90, "colour": 0.90, "style": 0.85, "background": 0.90}


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


def save_grid(images: torch.Tensor, path: Path, columns: int = 16):
    from PIL import Image

    rows = (len(images) + columns - 1) // columns
    size = images.shape[-1]
    grid = Image.new("RGB", (columns * size, rows * size))
    for i, img in enumerate(images):
        pil = Image.fromarray((img.permute(1, 2, 0) * 255).round().byte().numpy())
        grid.paste(pil, ((i % columns) * size, (i // columns) * size))
    grid.save(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds-per-combination", type=int, default=2)
    p.add_argument("--guidance", type=float, nargs="+", default=[DEFAULT_GUIDANCE])
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--first-seed", type=int, default=10_000)
    p.add_argument("--weights", type=Path, default=None, help="a demo weights folder (default: the shipped one)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--grid", type=Path, default=None, help="PNG of the generated images (first guidance)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model = load_demo_model(a.weights)
    results = []
    for guidance in a.guidance:
        t0 = time.time()
        result = measure_quality(model, seeds_per_combination=a.seeds_per_combination, steps=a.steps,
                                 guidance=guidance, first_seed=a.first_seed, return_images=a.grid is not None)
        images = result.pop("images", None)
        result.pop("prompts", None)
        result["seconds"] = round(time.time() - t0, 1)
        print(format_table(result))
        misses = {k: round(result["accuracy"][k], 3) for k, bar in BARS.items() if result["accuracy"][k] < bar}
        print(f"bars {BARS}: " + ("all met" if not misses else f"MISSED {misses}") + f" ({result['seconds']} s)\n")
        if images is not None and not results:
            save_grid(images, a.grid)
        results.append(result)
    if a.json:
        atomic_write_json(results if len(results) > 1 else results[0], a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
