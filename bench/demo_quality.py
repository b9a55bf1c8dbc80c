"""Measure the demo model's quality with the demo judge and print a table.

    python bench/demo_quality.py [--seeds-per-combination 2] [--guidance G] [--steps 20] [--json OUT.json]
                                 [--grid OUT.png] [--weights DIR]

Every shape x colour x style x background combination is asked for with a caption naming all four
attributes; accuracy = share of generated images whose judged attribute is the one asked for.
Bars (issue 3): shape >= 0.90, colour >= 0.90, style >= 0.85.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from erasure_core.demo import DEFAULT_GUIDANCE, DEFAULT_STEPS, load_demo_model  # noqa: E402
from erasure_core.demo.quality import format_table, measure_quality  # noqa: E402
from erasure_core.files import atomic_write_json  # noqa: E402

# Issue 3's bars; "backgrounds as asked" is read as the colour bar, 0.90 (a 90-minute fresh run reached
# shape 1.000 but background 0.625, which the table must not call a pass).
BARS = {"shape": 0.90, "colour": 0.90, "style": 0.85, "background": 0.90}


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
