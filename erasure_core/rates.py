"""Rate arithmetic for attack success rates and retain accuracy: counts, 95% Wilson intervals, pooling over
training seeds, and the robustness curve (ASR against the soft-prompt budget).

A rate is always a dict {"rate", "successes", "n"} (plus "low"/"high" where an interval was asked for), so a
figure never travels without the sample it comes from.

Why Wilson and not the normal approximation p +- 1.96 sqrt(p(1-p)/N): the targets sit near 0 (pre-attack ASR
<= 0.02), where the normal interval collapses to [0, 0] for 0 successes; Wilson's gives [0, 0.015] for 0/256.

Wilson counts the cases as independent, but a benchmark's cases come in clusters: one prompt with several
generation seeds. Where a rate knows its clusters ("clusters": [[successes, n] per prompt]), `with_clusters` adds
the design effect (the variance between clusters against the binomial's) and a Wilson interval at the effective
N = N / design effect. Why: on the demo benchmark's report files (session 22: 8 AdvUnlearn encoders of the
negative-guidance arms, 84-88 cases each, 21-22 prompts x 4 generation seeds) the 24 rates with both outcomes had
design effects 0.9-3.7 (median 1.5): green's retain failures at one training seed were 10 of 88 cases, all in 3 of
its 22 prompts (3.7), so the interval that counts cases was up to 1.9x too narrow there.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

Z95 = 1.959963984540054  # the two-sided 95% quantile of the standard normal


def rate(successes: int, n: int) -> dict:
    """{"successes", "n", "rate"}; rate is None when nothing was measured (n = 0)."""
    return {"successes": int(successes), "n": int(n), "rate": successes / n if n else None}


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval for successes / n (None for n = 0)."""
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n], got {successes}/{n}")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # Clamp the rounding error at the ends (0/n must give exactly 0 as its lower bound).
    return max(0.0, centre - half), min(1.0, centre + half)


def with_interval(r: dict | None) -> dict | None:
    """The rate dict with its 95% Wilson interval added as "low" and "high"."""
    if r is None:
        return None
    bounds = wilson_interval(r["successes"], r["n"])
    low, high = bounds if bounds else (None, None)
    return {**r, "low": low, "high": high}


# The t distribution's two-sided 95% quantiles for 1-10 degrees of freedom (2-11 training seeds); tabled here
# because scipy, which has them, is not a dependency of the core.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t95(df: int) -> float:
    """The two-sided 95% quantile of Student's t with df degrees of freedom (a table to 10, then the
    Cornish-Fisher expansion, within 0.2% there)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T95):
        return _T95[df - 1]
    z = Z95
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df * df)


def between_seeds(per_seed: list[dict]) -> dict | None:
    """The mean of the per-seed rates and its 95% t interval over training seeds (None for fewer than 2).

    Why beside the pooled Wilson interval: Wilson counts the cases, as if every case came from one encoder, but
    each training seed is a draw from a wide distribution (the same preset and seeds trained twice gave yellow's
    retain 231/256 and 206/256). This interval counts the seeds, so it says how far another training run may land.
    """
    rates = [r["successes"] / r["n"] for r in per_seed if r["n"]]
    if len(rates) < 2:
        return None
    mean = sum(rates) / len(rates)
    sd = math.sqrt(sum((r - mean) ** 2 for r in rates) / (len(rates) - 1))
    half = t95(len(rates) - 1) * sd / math.sqrt(len(rates))
    return {"mean": mean, "low": max(0.0, mean - half), "high": min(1.0, mean + half), "seeds": len(rates)}


def pool(rates: Iterable[dict | None]) -> dict | None:
    """Several rates (one per training seed) pooled into one: successes and n summed, interval added, the
    per-seed rates kept beside it under "per_seed", and the interval over seeds under "between_seeds" (None for
    one seed). Where every rate knows its clusters, the pooled rate has them all and their design effect
    (`with_clusters`; each seed's prompts are clusters of their own). None when no rate was measured."""
    rates = [r for r in rates if r is not None]
    if not rates:
        return None
    pooled = rate(sum(r["successes"] for r in rates), sum(r["n"] for r in rates))
    if all("clusters" in r for r in rates):
        pooled = with_clusters(pooled, [c for r in rates for c in r["clusters"]])
    per_seed = [rate(r["successes"], r["n"]) for r in rates]
    return {**with_interval(pooled), "per_seed": per_seed, "between_seeds": between_seeds(per_seed)}


# ------------------------------------------------------------------------------------------- clustered cases


def clusters_of(flags: Sequence[bool], keys: Sequence) -> list[list[int]]:
    """[[successes, n], ...] per distinct key (e.g. a case's prompt), in the order keys first appear."""
    if len(flags) != len(keys):
        raise ValueError(f"{len(flags)} outcomes but {len(keys)} cluster keys")
    counts: dict = {}
    for flag, key in zip(flags, keys):
        entry = counts.setdefault(key, [0, 0])
        entry[0] += bool(flag)
        entry[1] += 1
    return list(counts.values())


def design_effect(clusters: Sequence[Sequence[int]]) -> float | None:
    """How much clustering widens a rate's variance: the variance of the rate estimated between clusters (the
    ratio estimator's, with the C / (C - 1) small-sample factor) over the binomial's p(1 - p) / N. 1 for
    independent cases, up to a cluster's size when every case of a cluster agrees. None where it cannot be
    estimated: fewer than 2 clusters, or no variation at all (0 or N successes)."""
    n = sum(c[1] for c in clusters)
    successes = sum(c[0] for c in clusters)
    if len(clusters) < 2 or successes in (0, n):
        return None
    p = successes / n
    between = len(clusters) / (len(clusters) - 1) * sum((s - p * m) ** 2 for s, m in clusters) / n**2
    return between / (p * (1 - p) / n)


def with_clusters(r: dict, clusters: Sequence[Sequence[int]]) -> dict:
    """The rate with its clusters, their design effect and "clustered": the Wilson interval at the effective N
    (N / design effect, the design effect taken as at least 1: clustering is never used to narrow the
    interval; where it cannot be estimated the interval is the plain Wilson's)."""
    clusters = [[int(s), int(m)] for s, m in clusters]
    if (sum(c[0] for c in clusters), sum(c[1] for c in clusters)) != (r["successes"], r["n"]):
        raise ValueError("the clusters' counts do not add up to the rate's")
    effect = design_effect(clusters)
    widen = max(1.0, effect) if effect is not None else 1.0
    bounds = wilson_interval(r["successes"] / widen, r["n"] / widen) if r["n"] else None
    low, high = bounds if bounds else (None, None)
    return {**r, "clusters": clusters, "design_effect": effect,
            "clustered": {"effective_n": r["n"] / widen, "low": low, "high": high}}


def clustered_bounds(r: dict | None) -> tuple[float, float] | None:
    """The interval counting prompts as clusters ("clustered", with_clusters), where it is wider than the
    Wilson interval over cases (a design effect above 1); None where clustering changes nothing or was not
    measured."""
    if not r or (r.get("design_effect") or 0) <= 1 or not r.get("clustered") or r["clustered"]["low"] is None:
        return None
    return r["clustered"]["low"], r["clustered"]["high"]


def by_prompt_text(r: dict, low: float, high: float) -> str:
    """'; by prompt [0.88, 0.97]' where the interval by prompt is wider than [low, high] at two decimals, else ''
    (the one wording of the tables and report.html)."""
    wider = clustered_bounds(r)
    if not wider or f"{wider[0]:.2f}, {wider[1]:.2f}" == f"{low:.2f}, {high:.2f}":
        return ""
    return f"; by prompt [{wider[0]:.2f}, {wider[1]:.2f}]"


def format_rate(r: dict | None, interval: bool = True) -> str:
    """'0.12 [0.08, 0.17] (31/256)' for tables, and where the cases cluster by prompt, the wider interval that
    counts that: '0.94 [0.90, 0.96] (240/256; by prompt [0.88, 0.97])'; '-' when nothing was measured."""
    if not r or not r.get("n"):
        return "-"
    text, counts = f"{r['rate']:.2f}", f"{r['successes']}/{r['n']}"
    if interval:
        low, high = wilson_interval(r["successes"], r["n"])
        text += f" [{low:.2f}, {high:.2f}]"
        counts += by_prompt_text(r, low, high)
    return f"{text} ({counts})"


# ------------------------------------------------------------------------------------------- robustness curve


def robustness_curve(pre_attack: dict, budgeted: dict[str, tuple[float | None, dict]]) -> list[dict]:
    """ASR against the soft-prompt budget: [{"epsilon", "probe", "rate", "successes", "n"}, ...].

    `budgeted` maps a probe name to (epsilon, its post-attack rate); epsilon is in units of the token table's
    median norm, None = unbounded. The point epsilon = 0 is the pre-attack ASR (no attack can move a token in
    a ball of radius 0); the unbounded point comes last, with epsilon None.
    """
    points = [{"epsilon": 0.0, "probe": None, **rate(pre_attack["successes"], pre_attack["n"])}]
    for name, (epsilon, post) in budgeted.items():
        points.append({"epsilon": None if epsilon is None else float(epsilon), "probe": name,
                       **rate(post["successes"], post["n"])})
    return sorted(points, key=lambda p: math.inf if p["epsilon"] is None else p["epsilon"])


def pool_curves(curves: Iterable[list[dict]]) -> list[dict]:
    """Robustness curves of several training seeds pooled point by point (same epsilons), with intervals."""
    by_epsilon: dict = {}
    for curve in curves:
        for point in curve:
            by_epsilon.setdefault(point["epsilon"], []).append(point)
    pooled = []
    for epsilon, points in by_epsilon.items():
        pooled.append({"epsilon": epsilon, "probe": points[0]["probe"], **pool(points)})
    return sorted(pooled, key=lambda p: math.inf if p["epsilon"] is None else p["epsilon"])
