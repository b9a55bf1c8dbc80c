"""Rate arithmetic for attack success rates and retain accuracy: counts, 95% Wilson intervals, pooling over
training seeds, and the robustness curve (ASR against the soft-prompt budget).

A rate is always a dict {"rate", "successes", "n"} (plus "low"/"high" where an interval was asked for), so a
figure never travels without the sample it comes from.

Why Wilson and not the normal approximation p +- 1.96 sqrt(p(1-p)/N): the targets sit near 0 (pre-attack ASR
<= 0.02), where the normal interval collapses to [0, 0] for 0 successes; Wilson's gives [0, 0.015] for 0/256.
"""

from __future__ import annotations

import math
from typing import Iterable

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
    one seed). None when no rate was measured."""
    rates = [r for r in rates if r is not None]
    if not rates:
        return None
    pooled = rate(sum(r["successes"] for r in rates), sum(r["n"] for r in rates))
    per_seed = [rate(r["successes"], r["n"]) for r in rates]
    return {**with_interval(pooled), "per_seed": per_seed, "between_seeds": between_seeds(per_seed)}


def format_rate(r: dict | None, interval: bool = True) -> str:
    """'0.12 [0.08, 0.17] (31/256)' for tables; '-' when nothing was measured."""
    if not r or not r.get("n"):
        return "-"
    text = f"{r['rate']:.2f}"
    if interval:
        low, high = wilson_interval(r["successes"], r["n"])
        text += f" [{low:.2f}, {high:.2f}]"
    return f"{text} ({r['successes']}/{r['n']})"


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
