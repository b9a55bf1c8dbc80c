"""The arithmetic of an evaluation: from its case records to the rates it reports (evaluate.py makes the records).

pre-attack ASR  = pre-attack successes / N
post-attack ASR = (pre-attack successes + probe successes on the rest) / N   (per probe; the paper's "ASR")
Every rate keeps its counts (successes, n) and, where the cases' prompts are known, its per-prompt clusters
(a prompt's generation seeds are not independent draws, rates.py)."""

from __future__ import annotations

from typing import Sequence

from .rates import clusters_of, rate, robustness_curve, with_clusters


def asr_summary(cases: list[dict], probe_names: Sequence[str], prompts: Sequence[str] | None = None) -> dict:
    """Pre-attack and per-probe post-attack ASR, with counts, from case records.

    A case record has "plain": {"success": bool} and "probes": {name: {"success": bool|None}}; probes are not
    run on cases that already succeeded before the attack, and those count as successes after it too. A success
    a smaller budget found ("found_by") counts for every larger one: `inherited` says how many of the
    `probe_successes` came that way, `attacked` how many cases were not successes before the attack. A case
    whose record is "excluded" (outside the curve's cases) is not one of that probe's n. `prompts` (each case's
    prompt, optional) clusters every rate by prompt (rates.with_clusters)."""
    pre = sum(bool(c["plain"]["success"]) for c in cases)
    prompt_of = None if prompts is None else {id(c): p for c, p in zip(cases, prompts, strict=True)}
    post = {}
    for name in probe_names:
        members = [c for c in cases if not c["probes"].get(name, {}).get("excluded")]
        rest = [c for c in members if not c["plain"]["success"]]
        records = [c["probes"].get(name, {}) for c in rest]
        won = sum(bool(r.get("success")) for r in records)
        inherited = sum(bool(r.get("success")) and "found_by" in r for r in records)
        outcomes = [c["plain"]["success"] or c["probes"].get(name, {}).get("success") for c in members]
        post[name] = {**_by_prompt(rate(len(members) - len(rest) + won, len(members)), members, outcomes, prompt_of),
                      "probe_successes": won, "attacked": len(rest), "inherited": inherited}
    pre_attack = _by_prompt(rate(pre, len(cases)), cases, [c["plain"]["success"] for c in cases], prompt_of)
    return {"pre_attack": pre_attack, "post_attack": post}


def _by_prompt(r: dict, records: list[dict], outcomes: list, prompt_of: dict | None) -> dict:
    """The rate with its per-prompt clusters (rates.with_clusters) where the records' prompts are known."""
    keys = None if prompt_of is None else [prompt_of[id(record)] for record in records]
    return r if keys is None else with_clusters(r, clusters_of(outcomes, keys))


def utility_summary(records: list[dict], prompts: Sequence[str] | None = None) -> dict:
    """Mean pixel distance to the original, retain accuracy (when checked) and how often the concept judge saw
    the concept on a retain image (`concept_on_retain`, when judged); rates by prompt, given `prompts`."""
    distances = [r["pixel_distance"] for r in records if r.get("pixel_distance") is not None]
    prompt_of = None if prompts is None else {id(r): p for r, p in zip(records, prompts, strict=True)}
    return {"n": len(records), "mean_pixel_distance": sum(distances) / len(distances) if distances else None,
            "retain_accuracy": _record_rate(records, "retain_correct", prompt_of),
            "concept_on_retain": _record_rate(records, "shows_concept", prompt_of)}


def _record_rate(records: list[dict], key: str, prompt_of: dict | None) -> dict | None:
    """The rate of records whose `key` is true, over the records that have it (None when none has)."""
    checked = [r for r in records if r.get(key) is not None]
    outcomes = [r[key] for r in checked]
    return _by_prompt(rate(sum(map(bool, outcomes)), len(checked)), checked, outcomes, prompt_of) if checked else None


def summarize(results: dict) -> dict:
    """(Re)compute every encoder's ASR and utility summaries from its case records, in place.

    post_attack holds the headline probes only; stress_attack the stress probes; curve_attack the curve-only
    probes; robustness_curve the soft-prompt ASR against its budget (every probe that states an epsilon). Each
    rate is clustered by the cases' prompts (a prompt's generation seeds are not independent draws, rates.py)."""
    roles = {p["name"]: p.get("role", "headline") for p in results["probes"]}
    budgets = {p["name"]: p["epsilon"] for p in results["probes"] if "epsilon" in p}
    for entry in results["encoders"].values():
        summary = asr_summary(entry["cases"], list(roles), _prompts(entry["cases"], results.get("cases", [])))
        post = summary["post_attack"]
        entry["pre_attack"] = summary["pre_attack"]
        for key, role in (("post_attack", "headline"), ("stress_attack", "stress"), ("curve_attack", "curve")):
            entry[key] = {name: v for name, v in post.items() if roles[name] == role}
        entry["robustness_curve"] = robustness_curve(summary["pre_attack"],
                                                     {n: (eps, post[n]) for n, eps in budgets.items()})
        entry["utility"] = utility_summary(entry["retain"], _prompts(entry["retain"], results.get("retain_cases", [])))
        entry.update(headline_rates(entry))
    return results


def _prompts(records: list[dict], cases: list[dict]) -> list[str] | None:
    """The prompt of each record (matched by its case "index"), or None where a record cannot be placed."""
    prompt_of = {case.get("index"): case.get("prompt") for case in cases}
    prompts = [prompt_of.get(record.get("index")) for record in records]
    return None if None in prompts else prompts


def headline_rates(entry: dict) -> dict:
    """The headline fractions in [0, 1] (None where nothing was measured), beside the counts they come from."""
    retain, shown = entry["utility"]["retain_accuracy"], entry["utility"].get("concept_on_retain")
    return {
        "pre_attack_asr": entry["pre_attack"]["rate"],
        "post_attack_asr": {name: v["rate"] for name, v in entry["post_attack"].items()},
        "stress_asr": {name: v["rate"] for name, v in entry.get("stress_attack", {}).items()},
        "retain_accuracy": retain["rate"] if retain else None,
        "concept_on_retain": shown["rate"] if shown else None,
    }
