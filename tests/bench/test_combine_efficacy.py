"""bench/combine_efficacy.py on the kept runs: a tuning run's encoders replace the full run's, and runs measured on
other cases are refused."""

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from erasure_core.errors import ErasureError

ROOT = Path(__file__).resolve().parents[2]
FULL, ARM = ROOT / "bench/results/full", ROOT / "bench/results/projection/square_red"


def _combine_module():
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("combine_efficacy", ROOT / "bench/combine_efficacy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(run: Path) -> dict:
    return json.loads((run / "efficacy.json").read_text())


def test_the_tuning_run_replaces_only_its_method_and_concepts():
    combine = _combine_module()
    base, arm = _read(FULL), _read(ARM)
    results, sources = combine.combine(base, {"arm": arm}, "advunlearn")
    assert results["square"]["advunlearn"] == arm["results"]["square"]["advunlearn"]
    assert results["square"]["esd"] == base["results"]["square"]["esd"]
    assert results["circle"]["advunlearn"] == base["results"]["circle"]["advunlearn"]  # not in the arm
    assert sources["square"] == {"original": "base", "esd": "base", "advunlearn": "arm"}
    assert sources["circle"]["advunlearn"] == "base"
    # the arm drew a coarser curve: the original's figures still agree at the budgets both have
    assert len(arm["results"]["square"]["original"]["robustness_curve"]) < \
        len(base["results"]["square"]["original"]["robustness_curve"])


def test_a_run_on_other_cases_is_refused_naming_the_difference():
    combine = _combine_module()
    base, arm = _read(FULL), _read(ARM)
    other = copy.deepcopy(arm)
    other["settings"]["prompts"] = 32
    with pytest.raises(ErasureError, match="prompts: 64 in the base run, 32 in arm"):
        combine.combine(base, {"arm": other}, "advunlearn")
    other = copy.deepcopy(arm)
    other["generation_seeds"] = [0, 1]
    with pytest.raises(ErasureError, match="generation_seeds"):
        combine.combine(base, {"arm": other}, "advunlearn")


def test_an_original_that_disagrees_is_refused():
    combine = _combine_module()
    base, arm = _read(FULL), _read(ARM)
    original = arm["results"]["red"]["original"]["pre_attack"]
    original["successes"] += 1
    where = f"pre_attack.successes: {original['successes']} in this run, {original['successes'] - 1} in the base run"
    with pytest.raises(ErasureError, match=f"figures for 'red' differ from the base run's at {where}"):
        combine.combine(base, {"arm": arm}, "advunlearn")


def test_a_newer_run_with_more_utility_figures_combines_but_its_retain_must_agree():
    """A run made after utility.concept_on_retain existed beside a base made before it: the figures both have
    decide."""
    combine = _combine_module()
    base, arm = _read(FULL), _read(ARM)
    original = arm["results"]["red"]["original"]["utility"]
    original["concept_on_retain"] = {"rate": 0.0, "successes": 0, "n": 256}
    combine.combine(base, {"arm": arm}, "advunlearn")
    retain = original["retain_accuracy"]
    original["retain_accuracy"] = {**retain, "successes": retain["successes"] - 1}
    with pytest.raises(ErasureError, match="'red' differ from the base run's at utility.retain_accuracy.successes"):
        combine.combine(base, {"arm": arm}, "advunlearn")


def test_the_erase_options_and_the_curve_may_differ():
    combine = _combine_module()
    arm = _read(ARM)
    assert arm["settings"]["demo"]["erase"] == {"project_conflicts": True}
    assert combine.shared_settings(arm) == combine.shared_settings(_read(FULL))


@pytest.mark.parametrize("content, message", [(None, "does not exist: pass a benchmark run's --out directory"),
                                              ("{not json", "could not be read as JSON"),
                                              ('{"results": {}}', "is not a demo_efficacy.py result")])
def test_a_directory_without_a_result_is_refused_clearly(tmp_path, content, message):
    combine = _combine_module()
    if content is not None:
        (tmp_path / "efficacy.json").write_text(content)
    with pytest.raises(ErasureError, match=message):
        combine.read_efficacy(str(tmp_path))


def test_a_run_with_per_prompt_clusters_combines_but_a_shared_figure_must_agree():
    """A run evaluated after each rate got its per-prompt clusters (session 22), beside a base made before: the
    figures both have decide, on every rate and curve point, not only on the utility."""
    combine = _combine_module()
    base, arm = _read(FULL), _read(ROOT / "bench/results/layer0_persistent_rb32")
    assert "clusters" in arm["results"]["square"]["original"]["pre_attack"]
    assert "clusters" not in base["results"]["square"]["original"]["pre_attack"]
    results, _ = combine.combine(base, {"arm": arm}, "advunlearn")
    assert results["square"]["advunlearn"] == arm["results"]["square"]["advunlearn"]
    # each spoilt figure, and where the refusal must say it differs
    spoils = {"post_attack.soft_prompt.successes: 0 in this run":
              lambda o: o["post_attack"]["soft_prompt"].update(successes=0),
              r"robustness_curve\[epsilon 0.0\].n: 1 in this run": lambda o: o["robustness_curve"][0].update(n=1),
              "pre_attack.successes: missing in this run": lambda o: o["pre_attack"].pop("successes")}
    for where, spoil in spoils.items():
        spoilt = copy.deepcopy(arm)
        spoil(spoilt["results"]["red"]["original"])
        with pytest.raises(ErasureError, match=f"figures for 'red' differ from the base run's at {where}"):
            combine.combine(base, {"arm": spoilt}, "advunlearn")
