"""Write the demo preset's retain prompt list: shapes-world captions (never empty), drawn from a fixed seed.

Usage: python tools/make_shapes_world_retain.py   (writes erasure_core/data/retain/shapes_world.txt)
The trainer drops the prompts that name the concept being erased, so one list serves every concept.
"""

import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from erasure_core.demo import world  # noqa: E402

N_PROMPTS = 480


def main() -> None:
    rng = random.Random(20261123)
    prompts: list[str] = []
    while len(prompts) < N_PROMPTS:
        text = world.caption(world.random_attrs(rng), rng, empty_prob=0.0)
        if text not in prompts:
            prompts.append(text)
    out = ROOT / "erasure_core" / "data" / "retain" / "shapes_world.txt"
    header = "# Shapes-world captions for the demo preset (tools/make_shapes_world_retain.py)\n"
    out.write_text(header + "\n".join(prompts) + "\n", encoding="utf-8")
    print(f"wrote {len(prompts)} prompts to {out}")


if __name__ == "__main__":
    main()
