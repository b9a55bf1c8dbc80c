"""The weight average of erased encoders of one concept (a "model soup"), evaluated on every case.

seed_cross.py measured how far training seeds spread on the same cases (square at the demo preset: 28 to 61 of
256 soft-prompt successes). Encoders trained from the same original with a small lr may average into one that
keeps what they share and drops what each got by chance. This script averages the given encoder files (same
architecture, every tensor averaged; equal tensors stay as they are), evaluates the average on the benchmark's
cases for the concept as seed_cross.py does (every share, the probes asked for, plain and retain prompts) and
prints one row per share, with N and 95% Wilson intervals:

    python bench/weight_average.py --concept square --out out/soup_square.json \\
        out/seed_cross_square/square/encoders/advunlearn_s{0,1,2}.safetensors
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_efficacy as bench  # noqa: E402  (sets the OpenMP wait policy before torch loads)
import seed_cross  # noqa: E402

from erasure_core.errors import ErasureError  # noqa: E402
from erasure_core.files import atomic_write_json, prepare_output  # noqa: E402
from erasure_core.rates import format_rate  # noqa: E402

SCHEMA = "bench.weight_average/1"


def average_encoders(encoders: list):
    """A copy of the first encoder holding the mean of every floating-point tensor over `encoders`."""
    states = [e.state_dict() for e in encoders]
    if any(s.keys() != states[0].keys() for s in states):
        raise ErasureError("the encoders do not have the same tensors: average encoders of one architecture")
    mean = {k: sum(s[k].float() for s in states).div(len(states)).to(v.dtype) if v.is_floating_point() else v
            for k, v in states[0].items()}
    averaged = copy.deepcopy(encoders[0])
    averaged.load_state_dict(mean)
    return averaged.requires_grad_(False).eval()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("encoders", nargs="+", help="encoder files (.safetensors) of the concept to average")
    parser.add_argument("--concept", required=True, help="a value of the demo world, e.g. square")
    parser.add_argument("--probes", default="soft_prompt", help="comma-separated (default soft_prompt)")
    parser.add_argument("--shares", type=bench._positive_int, default=3,
                        help="shares of the prompts to report (the benchmark's training seeds; default 3)")
    parser.add_argument("--out", required=True, help="the JSON file to write")
    args = parser.parse_args(argv)
    try:
        _run(args)
    except ErasureError as exc:
        sys.exit(f"error: {exc}")


def _run(args) -> None:
    import torch

    from erasure_core.demo import world
    from erasure_core.demo.judge import DemoJudge, demo_retain_check
    from erasure_core.encoders import load_robust_text_encoder, read_encoder
    from erasure_core.evaluate import evaluate
    from erasure_core.loading import load_model

    world.attribute_of(args.concept)  # refuses an unknown value before any work
    settings = bench.BenchSettings(concepts=(args.concept,), training_seeds=tuple(range(args.shares)))
    probe_names = tuple(p.strip() for p in args.probes.split(",") if p.strip())
    probes = seed_cross.chosen_probes(args.concept, settings, probe_names)
    out = Path(args.out)
    if out.exists():
        raise ErasureError(f"{out} exists: choose another --out or remove it")
    for path in args.encoders:
        if not Path(path).is_file():
            raise ErasureError(f"no encoder file at {path}")
    prepare_output(out)  # a file in the way is reported now, not after the evaluation
    model = load_model("demo", device="cpu")
    encoders = [load_robust_text_encoder(read_encoder(p), reference=model.text_encoder, dtype=torch.float32)
                for p in args.encoders]
    concept_prompts, retain_prompts = bench.draw_prompts(args.concept, settings)
    judge = DemoJudge(args.concept)
    report = evaluate(model, {"average": average_encoders(encoders)}, concept_prompts, probes, judge,
                      seeds=settings.generation_seeds, steps=settings.demo.steps, guidance=settings.demo.guidance,
                      retain_prompts=retain_prompts, retain_check=demo_retain_check(judge),
                      batch_size=settings.demo.batch_size)
    shares = seed_cross.share_summaries(report, "average", probe_names, args.shares,
                                        len(settings.generation_seeds))
    atomic_write_json({"schema": SCHEMA, "concept": args.concept, "encoders": [str(p) for p in args.encoders],
                       "probes": list(probe_names), "settings": bench.settings_record(settings),
                       "shares": shares}, out)
    for what in ("pre_attack", *probe_names, "retain_accuracy", "concept_on_retain"):
        cells = [seed_cross.rate_of(s, what) for s in shares]
        row = " | ".join(format_rate(c) for c in cells)
        print(f"{what}: {row} | all {format_rate(seed_cross.pooled(cells))}")
    print(out)


if __name__ == "__main__":
    main()
