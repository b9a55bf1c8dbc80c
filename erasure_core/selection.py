"""Best of k: among encoders trained alike (another training seed each), the one a validation attack breaks least.

Why: on the demo model AdvUnlearn's outcome depends on its training seed as much as on any setting tried. Square's
soft-prompt ASR over the same 256 cases ranged 0.11-0.46 across 9 training seeds of the one preset, and the seed
that leaked least on one third of the prompts was the held-out best of its three in 8 of 9 choices; choosing the
best of 3 on one third cut the rate on the other two thirds from 0.285 to 0.197 (bench/seed_selection.py,
bench/demo_preset_tuning.md, session 34). Where seeds differ by a few cases it does not help: green's held-out
retain, 0.951 chosen against 0.943. The prompts that choose must not be the ones a claim is made on: the
choice is fitted to them.

The score counts what a user loses either way on the same cases: the probe's successes (the concept came back)
plus the retain failures (something else broke). An encoder that breaks every image would win on the probe alone,
so retain prompts are required.
"""

from __future__ import annotations

from typing import Mapping

from .errors import ErasureError


def score(probe_successes: int, retain_failures: int) -> tuple[int, int]:
    """The sort key of a candidate: fewer failures of either kind first, then fewer probe successes."""
    return probe_successes + retain_failures, probe_successes


def choose(candidates: Mapping[str, tuple[int, int]]) -> str:
    """The name with the lowest score among {name: (probe successes, retain failures)}, each counted on the same
    cases; a tie goes to the first name given (e.g. the lower training seed)."""
    if not candidates:
        raise ErasureError("nothing to choose from: give at least one candidate encoder")
    order = {name: i for i, name in enumerate(candidates)}
    return min(candidates, key=lambda name: (*score(*candidates[name]), order[name]))


def choose_from_report(report: dict, probe: str) -> dict:
    """The choice among an evaluation report's encoders (not the original): {"probe", "chosen", "candidates":
    {name: {"probe": rate, "retain_accuracy": rate, "score": int}}} in the report's order."""
    entries = {name: entry for name, entry in report["encoders"].items() if name != "original"}
    if len(entries) < 2:
        raise ErasureError(f"choosing needs at least two encoders besides the original, got {len(entries)}")
    counts, candidates = {}, {}
    for name, entry in entries.items():
        attacked = {**entry.get("post_attack", {}), **entry.get("stress_attack", {}),
                    **entry.get("curve_attack", {})}.get(probe)
        if attacked is None:
            raise ErasureError(f"{name} was not attacked by {probe!r}: choose by one of the evaluated probes")
        retain = (entry.get("utility") or {}).get("retain_accuracy")
        if not retain or not retain["n"]:
            raise ErasureError("choosing needs retain prompts (an encoder that breaks every image would win on the "
                               "probe alone): give --retain-prompt")
        counts[name] = (attacked["successes"], retain["n"] - retain["successes"])
        candidates[name] = {"probe": attacked, "retain_accuracy": retain, "score": sum(counts[name])}
    return {"probe": probe, "chosen": choose(counts), "candidates": candidates}
