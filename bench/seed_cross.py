"""Is a training seed's figure its training, or its share of the prompts? Each seed's encoder on every share.

The efficacy benchmark (demo_efficacy.py) evaluates each training seed's encoder on its own third of the cases
(`split_cases`: seed i gets prompts i, i + 3, ...), so a seed's figure mixes two things: how that training went,
and how hard its 21-22 prompts are. At the demo preset square's soft-prompt ASR was 8/88, 22/84 and 26/84 for
seeds 0, 1, 2, a spread as wide as any setting moved the pooled rate (bench/demo_preset_tuning.md, session 32).
This script crosses the two: it trains each seed's AdvUnlearn encoder exactly as the benchmark does (same erase
config, same prompts, one thread a worker) and evaluates every encoder on every share, then prints an
encoder x share table per probe, with N and 95% Wilson intervals:

    python bench/seed_cross.py --concept square --out out/seed_cross_square

A row that stays high on every share is the training seed; a column that is high for every encoder is the
prompts. Only the probes asked for are run (`--probes`, default the headline soft prompt, about a quarter of the
benchmark's attack time), beside the plain prompts and the retain prompts; the original model is evaluated beside
each encoder (its row is the same on every run). Encoders are kept in OUT/CONCEPT/encoders and loaded again where
the erase config matches. Cost on the 2-core machine, 2 seeds at a time (one process of one thread each): 248-274 s
of training and 284-297 s of evaluation a seed, 1,104 s for square's 3 seeds (session 33).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_efficacy as bench  # noqa: E402  (sets the OpenMP wait policy before torch loads)
import efficacy_store as store  # noqa: E402

from erasure_core.errors import ErasureError  # noqa: E402
from erasure_core.files import atomic_write_json, prepare_output  # noqa: E402
from erasure_core.rates import format_rate, rate  # noqa: E402
from erasure_core.summaries import asr_summary, utility_summary  # noqa: E402

SCHEMA = "bench.seed_cross/1"
METHOD = "advunlearn"


def chosen_probes(concept: str, settings: bench.BenchSettings, names: tuple[str, ...]) -> list:
    """The benchmark's probes called `names`, in the benchmark's order; an unknown name is refused."""
    probes = bench.demo_probes(concept, settings.demo)
    known = [p.name for p in probes]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ErasureError(f"unknown probe(s) {', '.join(unknown)}: choose from {', '.join(known)}")
    return [p for p in probes if p.name in names]


def share_summaries(report: dict, encoder: str, probe_names, shares: int, seeds: int) -> list[dict]:
    """One encoder's rates on each share of the cases (share j: prompts j, j + shares, ...), computed as the
    benchmark computes a part's (summaries.asr_summary and utility_summary, clustered by prompt)."""
    prompt_index = lambda case: case["index"] // seeds  # noqa: E731  (cases run prompt by prompt, every seed)
    concept_cases, retain_cases = report["cases"], report["retain_cases"]
    entry = report["encoders"][encoder]
    out = []
    for j in range(shares):
        mine = [k for k, case in enumerate(concept_cases) if prompt_index(case) % shares == j]
        kept = [k for k, case in enumerate(retain_cases) if prompt_index(case) % shares == j]
        asr = asr_summary([entry["cases"][k] for k in mine], probe_names, [concept_cases[k]["prompt"] for k in mine])
        utility = utility_summary([entry["retain"][k] for k in kept], [retain_cases[k]["prompt"] for k in kept])
        out.append({**asr, "retain_accuracy": utility["retain_accuracy"],
                    "concept_on_retain": utility["concept_on_retain"]})
    return out


def cross_seed(model, concept: str, seed: int, settings: bench.BenchSettings, probe_names: tuple[str, ...],
               out_dir: Path) -> dict:
    """Train (or load, where OUT holds it with this very config) one seed's encoder and evaluate it with the
    original on every share; returns both encoders' share summaries and the seconds spent."""
    from erasure_core.demo.judge import DemoJudge, demo_retain_check
    from erasure_core.evaluate import evaluate
    from erasure_core.training import erase

    config = bench.demo_erase_config(METHOD, seed, settings.demo, concept)
    path = store.encoder_path(out_dir / concept, f"{METHOD}_s{seed}")
    t0 = time.perf_counter()
    saved = store.load_trained_encoder(path, config.to_dict(), model)
    if saved is not None:
        encoder = saved[0]
    else:
        encoder = erase(model, [concept], config).text_encoder
        store.save_trained_encoder(path, encoder, config.to_dict(), {"seconds": round(time.perf_counter() - t0, 1)})
    t1 = time.perf_counter()
    print(f"{concept} seed {seed}: encoder {'loaded' if saved else 'trained'} ({t1 - t0:.0f} s); evaluating it on "
          "every share", flush=True)
    concept_prompts, retain_prompts = bench.draw_prompts(concept, settings)
    judge = DemoJudge(concept)
    report = evaluate(model, {f"{METHOD}_s{seed}": encoder}, concept_prompts,
                      chosen_probes(concept, settings, probe_names), judge, seeds=settings.generation_seeds,
                      steps=settings.demo.steps, guidance=settings.demo.guidance, retain_prompts=retain_prompts,
                      retain_check=demo_retain_check(judge), batch_size=settings.demo.batch_size)
    shares, seeds = len(settings.training_seeds), len(settings.generation_seeds)
    print(f"{concept} seed {seed}: evaluated ({time.perf_counter() - t1:.0f} s)", flush=True)
    return {"seed": seed, "erase_config": config.to_dict(),
            "training_seconds": round(t1 - t0, 1), "evaluation_seconds": round(time.perf_counter() - t1, 1),
            "encoder": share_summaries(report, f"{METHOD}_s{seed}", probe_names, shares, seeds),
            "original": share_summaries(report, "original", probe_names, shares, seeds)}


def _worker_seed(**task) -> dict:
    return cross_seed(bench._WORKER_MODEL, **task)


def pooled(entries: list[dict]) -> dict:
    """Successes and n summed over rate entries."""
    return rate(sum(e["successes"] for e in entries), sum(e["n"] for e in entries))


def rate_of(summary: dict, what: str) -> dict:
    """A share summary's rate called `what`: 'pre_attack', a probe name or a utility key."""
    return summary["post_attack"][what] if what in summary["post_attack"] else summary[what]


def format_cross(runs: list[dict], what: str) -> str:
    """Rows: each training seed's encoder (then the original, the same on every share); columns: each share of
    the prompts, then every share together. `what` picks the rate (rate_of)."""
    def pick(summary: dict) -> dict:
        return rate_of(summary, what)

    shares = len(runs[0]["encoder"])
    head = ["encoder \\ prompts", *[f"share {j} (seed {runs[j]['seed']}'s)" if j < len(runs) else f"share {j}"
                                    for j in range(shares)], "all shares"]
    rows = [head]
    for run in runs:
        cells = [pick(s) for s in run["encoder"]]
        rows.append([f"{METHOD} seed {run['seed']}", *map(format_rate, cells), format_rate(pooled(cells))])
    columns = [[pick(run["encoder"][j]) for run in runs] for j in range(shares)]
    rows.append(["every seed's encoder", *[format_rate(pooled(c)) for c in columns],
                 format_rate(pooled([c for col in columns for c in col]))])
    original = [pick(s) for s in runs[0]["original"]]
    rows.append(["original", *map(format_rate, original), format_rate(pooled(original))])
    return bench.align_columns(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concept", required=True, help="a value of the demo world, e.g. square")
    parser.add_argument("--training-seeds", type=bench._int_list, default=None, help="default 0,1,2")
    parser.add_argument("--probes", default="soft_prompt",
                        help="comma-separated headline or stress probes (default soft_prompt)")
    parser.add_argument("--erase-option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workers", type=bench._positive_int, default=2,
                        help="processes of one thread, one training seed each at a time (default 2)")
    parser.add_argument("--out", required=True, help="folder for seed_cross.json and the trained encoders")
    args = parser.parse_args(argv)
    try:
        _run(args)
    except ErasureError as exc:
        sys.exit(f"error: {exc}")


def _run(args) -> None:
    from erasure_core.demo import world
    from erasure_core.loading import load_model

    settings = bench.BenchSettings(concepts=(args.concept,), methods=(METHOD,))
    if args.training_seeds:
        settings.training_seeds = args.training_seeds
    if args.erase_option:
        from erasure_core.options import parse_options
        from erasure_core.training import EraseConfig

        settings.demo.erase.update(parse_options(args.erase_option, EraseConfig, context="--erase-option: "))
    world.attribute_of(args.concept)  # refuses an unknown value before any training
    probe_names = tuple(p.strip() for p in args.probes.split(",") if p.strip())
    chosen_probes(args.concept, settings, probe_names)  # refuses an unknown probe before any training
    out_dir = Path(args.out)
    result_path = out_dir / "seed_cross.json"
    if result_path.exists():
        raise ErasureError(f"{result_path} exists: choose another --out or remove it")
    prepare_output(result_path)  # a file in the way is reported now, not after the training
    task = dict(concept=args.concept, settings=settings, probe_names=probe_names, out_dir=out_dir)
    started = time.perf_counter()
    with ProcessPoolExecutor(min(args.workers, len(settings.training_seeds)),
                             mp_context=multiprocessing.get_context("spawn"), initializer=bench._worker_init,
                             initargs=("demo", "cpu", os.getpid())) as pool:
        futures = [pool.submit(_worker_seed, seed=seed, **task) for seed in settings.training_seeds]
        runs = [f.result() for f in futures]
    model = load_model("demo", device="cpu")
    concept_prompts, retain_prompts = bench.draw_prompts(args.concept, settings)
    # the prompts, so that a reader can tie each share's per-prompt clusters (in share order) to their text
    atomic_write_json({"schema": SCHEMA, "concept": args.concept, "probes": list(probe_names),
                       "settings": bench.settings_record(settings), "model": bench.model_identity(model),
                       "machine": bench.machine_record(model),
                       "prompts": concept_prompts, "retain_prompts": retain_prompts,
                       "seconds": round(time.perf_counter() - started, 1), "runs": runs}, result_path)
    for what in ("pre_attack", *probe_names, "retain_accuracy", "concept_on_retain"):
        print(f"\n{what}:\n{format_cross(runs, what)}")
    print(f"\n{result_path}")


if __name__ == "__main__":
    main()
