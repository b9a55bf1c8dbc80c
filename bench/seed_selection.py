"""Would choosing the best of k trainings by an attack on some prompts hold on the prompts it did not see?

seed_cross.py evaluates each training seed's encoder on every prompt of the benchmark, and on square the seeds'
order held on every share of the prompts (session 33). This script asks whether that order can be used: it takes
one or more seed_cross.json files of one concept, groups the training seeds k at a time (seeds in order: 0-2,
3-5, ...), and for each group and each fold of the prompts (prompt i is in fold i mod FOLDS) chooses the encoder
with the lowest validation score on that fold, then reports the chosen encoder on the other folds (held out):

    score = the probe's successes + retain failures, on the fold's cases (the same cases for every encoder)

Ties go to fewer probe successes, then to the lower seed: the rule of `evaluate --choose`
(erasure_core/selection.py). Beside each choice it gives the group's every encoder on
the same held-out cases (what an unchosen training gives) and the group's held-out best (what an oracle would
choose). Pooled over choices the counts reuse prompts (each prompt is held out in FOLDS - 1 choices of a group), so
their Wilson intervals are narrower than the evidence: read them as a summary, the per-choice rows as the data.

    python bench/seed_selection.py --probe soft_prompt --out out/selection_square.json \\
        bench/results/seed_cross_square/seed_cross.json bench/results/seed_cross_square_3to8/seed_cross.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_efficacy as bench  # noqa: E402
import seed_cross  # noqa: E402

from erasure_core import selection  # noqa: E402
from erasure_core.errors import ErasureError  # noqa: E402
from erasure_core.files import atomic_write_json, prepare_output  # noqa: E402
from erasure_core.rates import format_rate, rate  # noqa: E402

SCHEMA = "bench.seed_selection/1"
# what must agree between the files for their encoders to have met the same cases, evaluated alike
_SAME_CASES = ("prompts", "generation_seeds", "prompt_seed", "demo")
# training reproduces on one machine, not across machines (session 33): files that record it must agree
_SAME_MACHINE = ("cpu", "cpu_capability", "torch")


def fold_counts(summaries: list[dict], pick, prompts: list[str], seeds: int, folds: int) -> list[tuple[int, int]]:
    """[(successes, n)] per fold of the prompts (prompt i in fold i mod folds), from one encoder's share summaries
    (share j holds prompts j, j + shares, ...). A share's rate clusters its cases by prompt text, in order of first
    appearance (a text drawn twice into one share is one cluster); `pick(summary)` gives the rate."""
    shares = len(summaries)
    if shares % folds:
        raise ErasureError(f"{shares} shares do not split into {folds} folds: give --folds a divisor of {shares}")
    out = [[0, 0] for _ in range(folds)]
    for j, summary in enumerate(summaries):
        indices: dict[str, list[int]] = {}
        for i in range(j, len(prompts), shares):
            indices.setdefault(prompts[i], []).append(i)
        clusters = pick(summary).get("clusters")
        if clusters is None or len(clusters) != len(indices):
            raise ErasureError("a share's per-prompt clusters do not match its prompts: the file was not written by "
                               "bench/seed_cross.py with these prompts")
        for (successes, n), where in zip(clusters, indices.values()):
            if n != seeds * len(where):
                raise ErasureError(f"a prompt's cluster holds {n} cases where {seeds * len(where)} were expected")
            fold = where[0] % folds  # every index of a share lies in one fold, as folds divides shares
            out[fold][0] += successes
            out[fold][1] += n
    return [tuple(c) for c in out]


def drawn_prompts(data: dict) -> tuple[list[str], list[str]]:
    """The run's (concept prompts, retain prompts): recorded since a453604, drawn again as the benchmark draws
    them for the files written before."""
    if "prompts" in data:
        return data["prompts"], data["retain_prompts"]
    settings = bench.BenchSettings(concepts=(data["concept"],), prompts=data["settings"]["prompts"],
                                   prompt_seed=data["settings"]["prompt_seed"])
    return bench.draw_prompts(data["concept"], settings)


def load_encoders(paths: list[Path], probe: str, folds: int) -> tuple[dict, dict[int, dict]]:
    """(what the files share, {seed: {"probe": counts per fold, "retain": counts per fold}}); files that
    measured other cases, another concept or another erase config than the seed are refused."""
    shared, machine, encoders = None, None, {}
    for path in paths:
        if not path.is_file():
            raise ErasureError(f"no seed_cross.json at {path}")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ErasureError(f"{path} cannot be read as JSON ({err}): give a seed_cross.json") from None
        if not isinstance(data, dict) or data.get("schema") != seed_cross.SCHEMA:
            raise ErasureError(f"{path} is not a seed_cross.py result: give a seed_cross.json")
        if probe not in data["probes"]:
            raise ErasureError(f"{path} did not run the probe {probe!r} (it ran {', '.join(data['probes'])})")
        here = {"concept": data["concept"], "model": data["model"],
                **{k: data["settings"][k] for k in _SAME_CASES},
                "erase": {k: v for k, v in data["runs"][0]["erase_config"].items() if k != "seed"}}
        if shared is None:
            shared = here
        differing = [k for k in here if here[k] != shared[k]]
        if differing:
            raise ErasureError(f"{path} differs from {paths[0]} in {', '.join(differing)}: its encoders did not "
                               "meet the same cases under the same training")
        if "machine" in data:  # seed_cross.json records it since session 33's a453604
            recorded = {k: data["machine"].get(k) for k in _SAME_MACHINE}
            if machine not in (None, recorded):
                raise ErasureError(f"{path} was trained on another machine ({recorded}) than an earlier file "
                                   f"({machine}): its seeds' trainings are not comparable")
            machine = recorded
        concept_prompts, retain_prompts = drawn_prompts(data)
        seeds = len(data["settings"]["generation_seeds"])
        for run in data["runs"]:
            if run["seed"] in encoders:
                raise ErasureError(f"training seed {run['seed']} is in more than one file: give each seed once")
            encoders[run["seed"]] = {
                "probe": fold_counts(run["encoder"], lambda s: seed_cross.rate_of(s, probe), concept_prompts,
                                     seeds, folds),
                "retain": fold_counts(run["encoder"], lambda s: s["retain_accuracy"], retain_prompts, seeds, folds)}
    return {**shared, "machine": machine}, encoders


def fold_count(counts: list[tuple[int, int]], folds) -> tuple[int, int]:
    """(successes, n) summed over the folds `folds`."""
    return sum(counts[f][0] for f in folds), sum(counts[f][1] for f in folds)


def choice_on_fold(encoders: dict[int, dict], group: list[int], fold: int, folds: int) -> dict:
    """The group's encoder with the lowest validation score on `fold`, and every encoder on the other folds."""
    def counts_of(seed: int, inside: bool) -> dict:
        chosen_folds = [f for f in range(folds) if (f == fold) == inside]
        return {key: fold_count(encoders[seed][key], chosen_folds) for key in ("probe", "retain")}

    def best(counts: dict[int, dict]) -> int:  # the product's rule, ties to the lower seed (the group is sorted)
        return int(selection.choose({str(seed): (c["probe"][0], c["retain"][1] - c["retain"][0])
                                     for seed, c in counts.items()}))

    validation = {seed: counts_of(seed, True) for seed in group}
    held_out = {seed: counts_of(seed, False) for seed in group}
    chosen, oracle = best(validation), best(held_out)
    return {"group": group, "fold": fold, "chosen": chosen, "held_out_best": oracle,
            "validation": {str(s): _rates(c) for s, c in validation.items()},
            "held_out": {str(s): _rates(c) for s, c in held_out.items()}}


def _rates(c: dict) -> dict:
    return {"probe": rate(*c["probe"]), "retain": rate(*c["retain"])}


def pooled(choices: list[dict], which) -> dict:
    """{"probe", "retain"} summed over the choices' held-out rates of the seeds `which(choice)` names."""
    return {key: seed_cross.pooled([choice["held_out"][str(seed)][key] for choice in choices for seed in which(choice)])
            for key in ("probe", "retain")}


def select(encoders: dict[int, dict], group_size: int, folds: int) -> dict:
    seeds = sorted(encoders)
    if group_size < 2 or len(seeds) % group_size:
        raise ErasureError(f"{len(seeds)} training seeds do not make groups of {group_size}: give a multiple of "
                           "--group-size (at least 2) seeds")
    groups = [seeds[i:i + group_size] for i in range(0, len(seeds), group_size)]
    choices = [choice_on_fold(encoders, group, fold, folds) for group in groups for fold in range(folds)]
    return {"choices": choices,
            "chosen": pooled(choices, lambda c: [c["chosen"]]),
            "every_encoder": pooled(choices, lambda c: c["group"]),
            "held_out_best": pooled(choices, lambda c: [c["held_out_best"]]),
            "chose_the_held_out_best": sum(c["chosen"] == c["held_out_best"] for c in choices),
            "each_encoder": {str(s): {k: rate(*fold_count(v, range(len(v)))) for k, v in encoders[s].items()}
                             for s in seeds}}


def format_selection(result: dict, probe: str) -> str:
    rows = [["group", "validation fold", "chosen", f"chosen: {probe} held out", "chosen: retain held out",
             "held-out best", f"group: {probe} held out", "group: retain held out"]]
    for c in result["choices"]:
        group_rates = pooled([c], lambda x: x["group"])
        rows.append([",".join(map(str, c["group"])), str(c["fold"]), str(c["chosen"]),
                     format_rate(c["held_out"][str(c["chosen"])]["probe"]),
                     format_rate(c["held_out"][str(c["chosen"])]["retain"]), str(c["held_out_best"]),
                     format_rate(group_rates["probe"]), format_rate(group_rates["retain"])])
    lines = [bench.align_columns(rows), ""]
    for name in ("chosen", "every_encoder", "held_out_best"):
        lines.append(f"{name:<14} {probe} {format_rate(result[name]['probe'])}   "
                     f"retain {format_rate(result[name]['retain'])}   (pooled over choices: prompts reused)")
    lines.append(f"chose the held-out best in {result['chose_the_held_out_best']} of {len(result['choices'])}")
    lines.append("\neach encoder on every prompt:")
    for seed, r in result["each_encoder"].items():
        lines.append(f"  seed {seed}: {probe} {format_rate(r['probe'])}   retain {format_rate(r['retain'])}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="seed_cross.json files of one concept")
    parser.add_argument("--probe", default="soft_prompt", help="the probe whose successes count (default soft_prompt)")
    parser.add_argument("--group-size", type=bench._positive_int, default=3, help="trainings to choose from (3)")
    parser.add_argument("--folds", type=bench._positive_int, default=3,
                        help="prompt i validates in fold i mod FOLDS; at least 2, a divisor of each file's number "
                             "of shares (default 3)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON result")
    args = parser.parse_args(argv)
    try:
        _run(args)
    except ErasureError as exc:
        sys.exit(f"error: {exc}")


def _run(args) -> None:
    if args.folds < 2:
        raise ErasureError("--folds must be at least 2: one fold chooses, the others are held out")
    if args.out.exists():
        raise ErasureError(f"{args.out} exists: choose another --out or remove it")
    shared, encoders = load_encoders(args.files, args.probe, args.folds)
    result = select(encoders, args.group_size, args.folds)
    prepare_output(args.out)  # after the input is checked, so that bad input creates no folder
    atomic_write_json({"schema": SCHEMA, "probe": args.probe, "group_size": args.group_size, "folds": args.folds,
                       "files": [str(p) for p in args.files], "concept": shared["concept"],
                       "machine": shared["machine"], **result}, args.out)
    print(format_selection(result, args.probe))
    print(f"\n{args.out}")


if __name__ == "__main__":
    main()
