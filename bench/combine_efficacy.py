"""One method's encoders from tuning runs beside a full run's other encoders, on the same cases: the tables and
the verdicts against the targets, as `demo_efficacy.py` prints them.

    python bench/combine_efficacy.py --base bench/results/full --method advunlearn RUN [RUN ...] [--markdown]
        [--out combined.json]

Why: a tuning run (`demo_efficacy.py --methods advunlearn --erase-option ...`) trains and attacks one method, about a
quarter cheaper than a full run, and the other encoders (the original, ESD) would come out the same: evaluation is
deterministic at a fixed number of workers (the original model's figures of session 17's tuning runs equal the full
run's, case for case). So when a tuning run's setting becomes the preset, its encoders beside the full run's others
are the benchmark at the new preset without evaluating ESD again (about 2 h here). The runs must share the cases: the
same benchmark settings but for the erase options, the methods, the concepts and the curve's budgets, and the same
figures for the original model; anything else is refused, naming what differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from efficacy_store import differences  # noqa: E402
from efficacy_targets import ORIGINAL, format_verdicts, verdicts  # noqa: E402

from erasure_core.errors import ErasureError  # noqa: E402
from erasure_core.files import atomic_write_json  # noqa: E402

# what a tuning run may change without changing the cases
FREE = {"concepts", "methods", "curve_cases"}
FREE_DEMO = {"erase", "curve_epsilons"}
CASES = ("training_seeds", "generation_seeds", "split_cases", "cases_per_cell")


def shared_settings(efficacy: dict) -> dict:
    """The settings that decide the cases and the probes: efficacy.json's, less what a tuning run may change."""
    settings = {k: v for k, v in efficacy["settings"].items() if k not in FREE}
    settings["demo"] = {k: v for k, v in settings["demo"].items() if k not in FREE_DEMO}
    return {**settings, **{k: efficacy[k] for k in CASES}}


def figure_difference(a: dict, b: dict) -> str | None:
    """Where two encoders' figures disagree (a dotted key and both values), or None where they agree wherever both
    runs measured a figure: the robustness curve at the budgets both have (a tuning run may draw fewer), and a
    figure a later evaluation added only where both have it (runs made before session 22 lack each rate's
    per-prompt clusters, before session 26 utility.concept_on_retain); every run's rates (pre-attack, each probe,
    retain accuracy) must be in both and agree."""
    for key in ("pre_attack", "post_attack", "utility"):
        if key not in a or key not in b:
            return f"{key}: missing in {'the base run' if key not in b else 'this run'}"
    for v, which in ((a, "this run"), (b, "the base run")):
        if "retain_accuracy" not in v["utility"]:
            return f"utility.retain_accuracy: missing in {which}"
    strip = lambda v: {k: x for k, x in v.items() if k != "robustness_curve"}  # noqa: E731
    curve_a, curve_b = ({json.dumps(p["epsilon"]): p for p in v.get("robustness_curve", [])} for v in (a, b))
    found = _disagreement(strip(a), strip(b), "")
    for e in sorted(curve_a.keys() & curve_b.keys()):
        found = found or _disagreement(curve_a[e], curve_b[e], f"robustness_curve[epsilon {e}]")
    return found


def _disagreement(a, b, where: str) -> str | None:
    """Dicts on the keys both have (a rate's successes and n must be in both), anything else exactly; the first
    place they differ, as `where: <value in this run>, <value in the base run>`."""
    if isinstance(a, dict) and isinstance(b, dict):
        if "successes" in a or "successes" in b:
            for k in ("successes", "n"):
                if k not in a or k not in b:
                    return f"{where}.{k}: missing in {'the base run' if k not in b else 'this run'}"
        for k in sorted(a.keys() & b.keys()):
            found = _disagreement(a[k], b[k], f"{where}.{k}" if where else k)
            if found:
                return found
        return None
    return None if a == b else f"{where}: {a!r} in this run, {b!r} in the base run"


def combine(base: dict, runs: dict[str, dict], method: str) -> tuple[dict, dict]:
    """(results, sources): the base run's results with `method` replaced, per concept, by the run that measured it
    (a later run wins). Refuses runs whose cases differ from the base's."""
    results = {c: dict(by_encoder) for c, by_encoder in base["results"].items()}
    sources = {c: {name: "base" for name in by_encoder} for c, by_encoder in base["results"].items()}
    for path, run in runs.items():
        lines = differences(shared_settings(base), shared_settings(run), labels=("in the base run", f"in {path}"))
        if lines:
            raise ErasureError(f"{path} was measured on other cases than the base run:\n  " + "\n  ".join(lines))
        for concept, by_encoder in run["results"].items():
            if concept not in results or method not in by_encoder:
                raise ErasureError(f"{path} has no {method} for {concept!r} or the base run has no {concept!r}")
            difference = figure_difference(by_encoder[ORIGINAL], results[concept][ORIGINAL])
            if difference:
                raise ErasureError(f"{path}: the original model's figures for {concept!r} differ from the base run's "
                                   f"at {difference} (other cases, or another evaluation code); they cannot be "
                                   "combined")
            results[concept][method], sources[concept][method] = by_encoder[method], path
    return results, sources


def read_efficacy(run_dir: str) -> dict:
    """A run's efficacy.json, or a clear error naming the file and what to pass instead."""
    path = Path(run_dir) / "efficacy.json"
    try:
        efficacy = json.loads(path.read_text())
    except FileNotFoundError:
        raise ErasureError(f"{path} does not exist: pass a benchmark run's --out directory (it holds efficacy.json)")
    except (OSError, ValueError) as exc:
        raise ErasureError(f"{path} could not be read as JSON ({exc}): pass a finished benchmark run's directory")
    if not isinstance(efficacy, dict) or not {"settings", "results", "targets"} <= set(efficacy):
        raise ErasureError(f"{path} is not a demo_efficacy.py result (no settings, results and targets)")
    return efficacy


def main(argv=None) -> None:
    from demo_efficacy import format_per_seed, format_table

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="a full run's directory (its efficacy.json)")
    parser.add_argument("--method", default="advunlearn", help="the encoders the runs replace")
    parser.add_argument("runs", nargs="+", help="tuning runs' directories, each with its efficacy.json")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--out", help="write the combined results, sources and verdicts here (JSON)")
    args = parser.parse_args(argv)
    try:
        base = read_efficacy(args.base)
        results, sources = combine(base, {d: read_efficacy(d) for d in args.runs}, args.method)
    except ErasureError as exc:
        raise SystemExit(f"error: {exc}")
    checks = verdicts(results, base["targets"])
    for table in (format_table, format_per_seed):
        print(table(results, args.markdown), end="\n\n")
    print(format_verdicts(checks))
    if args.out:
        atomic_write_json({"results": results, "sources": sources, "verdicts": checks, "targets": base["targets"]},
                          args.out)


if __name__ == "__main__":
    main()
