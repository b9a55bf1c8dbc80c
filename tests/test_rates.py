"""Rate arithmetic: Wilson intervals against published values, pooling over seeds, the robustness curve."""

import pytest

from erasure_core.rates import format_rate, pool, pool_curves, rate, robustness_curve, wilson_interval


@pytest.mark.parametrize("successes, n, low, high", [
    (5, 10, 0.2366, 0.7634),  # Newcombe (1998), Table I style values for the Wilson score interval
    (8, 10, 0.4902, 0.9433),
    (0, 10, 0.0, 0.2775),
    (0, 256, 0.0, 0.01478),  # z^2 / (n + z^2): "zero in 256 shows the rate is below ~1.5%"
    (256, 256, 0.98522, 1.0),
])
def test_wilson_interval_known_values(successes, n, low, high):
    lo, hi = wilson_interval(successes, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_wilson_refuses_impossible_counts_and_empty_samples():
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_pool_sums_counts_and_keeps_each_seed():
    pooled = pool([rate(1, 4), rate(3, 4), None])
    assert (pooled["successes"], pooled["n"], pooled["rate"]) == (4, 8, 0.5)
    assert [s["successes"] for s in pooled["per_seed"]] == [1, 3]
    assert (pooled["low"], pooled["high"]) == pytest.approx(wilson_interval(4, 8))
    assert pool([None]) is None
    assert format_rate(pooled) == "0.50 [0.22, 0.78] (4/8)" and format_rate(None) == "-"


def test_robustness_curve_orders_budgets_and_pools_by_epsilon():
    curve = robustness_curve(rate(1, 10), {"unb": (None, rate(9, 10)), "e2": (2.0, rate(5, 10)),
                                           "e1": (1.0, rate(3, 10))})
    assert [(p["epsilon"], p["successes"]) for p in curve] == [(0.0, 1), (1.0, 3), (2.0, 5), (None, 9)]
    pooled = pool_curves([curve, curve])
    assert [(p["epsilon"], p["successes"], p["n"]) for p in pooled] == [(0.0, 2, 20), (1.0, 6, 20), (2.0, 10, 20),
                                                                          (None, 18, 20)]


def test_between_seeds_interval_counts_the_training_runs_not_the_cases():
    from erasure_core.rates import between_seeds, t95

    assert t95(2) == 4.303 and t95(11) == pytest.approx(2.201, abs=0.003) and t95(30) == pytest.approx(2.042, abs=0.003)
    # square's soft prompt in session 7: 38/88, 31/84, 32/84 (pooled Wilson [0.34, 0.46])
    spread = pool([rate(38, 88), rate(31, 84), rate(32, 84)])["between_seeds"]
    rates = [38 / 88, 31 / 84, 32 / 84]
    mean = sum(rates) / 3
    sd = (sum((r - mean) ** 2 for r in rates) / 2) ** 0.5
    assert spread["mean"] == pytest.approx(mean) and spread["seeds"] == 3
    assert (spread["low"], spread["high"]) == pytest.approx((mean - 4.303 * sd / 3**0.5, mean + 4.303 * sd / 3**0.5))
    # one seed says nothing about the spread; a wide spread is clamped to [0, 1]
    assert between_seeds([rate(3, 10)]) is None and pool([rate(3, 10)])["between_seeds"] is None
    wide = between_seeds([rate(0, 10), rate(10, 10)])
    assert (wide["low"], wide["high"]) == (0.0, 1.0)


def test_design_effect_is_one_for_even_spread_and_the_cluster_size_when_clusters_agree():
    from erasure_core.rates import clusters_of, design_effect

    assert clusters_of([True, False, True, True], ["a", "b", "a", "b"]) == [[2, 2], [1, 2]]
    with pytest.raises(ValueError):
        clusters_of([True], ["a", "b"])
    # 10 prompts x 4 seeds; every prompt's four cases agree: the 40 cases hold only 10 draws
    agree = [[4, 4]] * 2 + [[0, 4]] * 8
    assert design_effect(agree) == pytest.approx(4 * 10 / 9)
    # each prompt has the same count: less spread than independent cases (an effect below 1)
    even = [[1, 4]] * 10
    assert design_effect(even) == pytest.approx(0.0)
    # green's retain failures in session 22 (22 prompts x 4 seeds, failures 4, 4 and 2 in three prompts)
    green = [[4, 4], [4, 4], [2, 4]] + [[0, 4]] * 19
    assert design_effect(green) == pytest.approx(3.71, abs=0.01)
    # no variation, or one cluster: nothing to estimate
    assert design_effect([[0, 4]] * 5) is None and design_effect([[4, 4]] * 5) is None
    assert design_effect([[1, 4]]) is None


def test_clustered_interval_widens_never_narrows_and_pools_the_clusters():
    from erasure_core.rates import design_effect, with_clusters

    agree = with_clusters(rate(8, 40), [[4, 4]] * 2 + [[0, 4]] * 8)
    assert agree["clustered"]["effective_n"] == pytest.approx(9.0)
    # 8 successes and 40 cases, each divided by the effect 40/9
    assert (agree["clustered"]["low"], agree["clustered"]["high"]) == pytest.approx(wilson_interval(1.8, 9))
    lo, hi = wilson_interval(8, 40)
    assert agree["clustered"]["low"] < lo and agree["clustered"]["high"] > hi
    even = with_clusters(rate(10, 40), [[1, 4]] * 10)  # effect 0: the plain Wilson interval, not a narrower one
    assert (even["clustered"]["low"], even["clustered"]["high"]) == pytest.approx(wilson_interval(10, 40))
    none = with_clusters(rate(0, 8), [[0, 4], [0, 4]])
    assert none["design_effect"] is None and none["clustered"]["effective_n"] == 8
    with pytest.raises(ValueError):
        with_clusters(rate(3, 8), [[1, 4], [1, 4]])
    pooled = pool([agree, with_clusters(rate(1, 8), [[1, 4], [0, 4]])])
    assert len(pooled["clusters"]) == 12 and pooled["successes"] == 9
    assert pooled["design_effect"] == pytest.approx(design_effect([[4, 4]] * 2 + [[0, 4]] * 8 + [[1, 4], [0, 4]]))
    assert "clusters" not in pool([agree, rate(1, 8)])  # a seed without clusters: none for the pool


def test_tables_show_the_interval_by_prompt_only_where_it_is_wider():
    from erasure_core.rates import clustered_bounds, with_clusters

    agree = with_clusters(rate(8, 40), [[4, 4]] * 2 + [[0, 4]] * 8)
    low, high = wilson_interval(1.8, 9)
    assert clustered_bounds(agree) == pytest.approx((low, high))
    assert format_rate(agree) == f"0.20 [0.10, 0.35] (8/40; by prompt [{low:.2f}, {high:.2f}])"
    assert format_rate(agree, interval=False) == "0.20 (8/40)"
    even = with_clusters(rate(10, 40), [[1, 4]] * 10)  # no wider interval: the plain cell
    assert clustered_bounds(even) is None and format_rate(even) == "0.25 [0.14, 0.40] (10/40)"
    assert clustered_bounds(rate(8, 40)) is None and clustered_bounds(None) is None
