"""erasure_core/selection.py: best of k by a validation attack, counting retain failures beside the leak."""

import pytest

from erasure_core.errors import ErasureError
from erasure_core.selection import choose, choose_from_report


def test_the_fewest_failures_of_either_kind_win_and_a_tie_goes_to_fewer_leaks_then_the_first():
    assert choose({"s0": (5, 0), "s1": (2, 2), "s2": (0, 6)}) == "s1"  # 5, 4, 6 failures
    assert choose({"s0": (3, 1), "s1": (1, 3)}) == "s1"  # 4 each: fewer leaks
    assert choose({"s0": (2, 2), "s1": (2, 2)}) == "s0"  # a full tie: the first given
    assert choose({"s1": (2, 2), "s0": (2, 2)}) == "s1"


def _entry(leaks: int, kept: int, n: int = 8, stress: bool = False) -> dict:
    attacked = {"soft_prompt": {"successes": leaks, "n": n, "rate": leaks / n}}
    return {"post_attack": {} if stress else attacked, "stress_attack": attacked if stress else {},
            "utility": {"retain_accuracy": {"successes": kept, "n": n, "rate": kept / n}}}


def test_the_report_choice_leaves_the_original_out_and_reads_stress_and_curve_probes_too():
    report = {"encoders": {"original": _entry(0, 8), "a": _entry(3, 8), "b": _entry(1, 7, stress=True)}}
    choice = choose_from_report(report, "soft_prompt")
    assert choice["chosen"] == "b"  # the original (0 failures) is not a candidate
    assert list(choice["candidates"]) == ["a", "b"] and choice["candidates"]["b"]["score"] == 2
    # `evaluate --curve` puts the other budgets under curve_attack
    curve = {name: {"post_attack": {}, "curve_attack": {"soft_prompt_eps2": rate}, "utility": e["utility"]}
             for name, e, rate in (("a", report["encoders"]["a"], {"successes": 0, "n": 8}),
                                   ("b", report["encoders"]["b"], {"successes": 5, "n": 8}))}
    assert choose_from_report({"encoders": curve}, "soft_prompt_eps2")["chosen"] == "a"


@pytest.mark.parametrize("encoders, message", [
    ({"original": _entry(0, 8), "a": _entry(1, 8)}, "at least two encoders"),
    ({"a": _entry(1, 8), "b": {**_entry(1, 8), "post_attack": {}}}, "not attacked by 'soft_prompt'"),
    ({"a": _entry(1, 8), "b": {**_entry(1, 8), "utility": {"retain_accuracy": None}}}, "needs retain prompts"),
])
def test_a_choice_that_cannot_be_made_honestly_is_refused(encoders, message):
    with pytest.raises(ErasureError, match=message):
        choose_from_report({"encoders": encoders}, "soft_prompt")
