"""The report folder is complete: every number in report.json, every file the HTML references exists."""

import json
import re

import pytest

from erasure_core.errors import ErasureError
from erasure_core.report import write_report
from report_fixtures import rate_counts, small_evaluation

from erasure_core.attacks.soft_prompt import DEFAULT_EPSILON


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    results = small_evaluation()
    out = tmp_path_factory.mktemp("report")
    page = write_report(results, out)
    return results, out, page


def _references(page):
    return re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.read_text(encoding="utf-8"))


def test_every_referenced_file_exists(written):
    results, out, page = written
    refs = _references(page)
    images = [r for r in refs if r.startswith("images/")]
    plots = [r for r in refs if r.startswith("plots/")]
    # 2 encoders x 2 cases x (plain + 3 probes) + 2 encoders x 2 retain cases; one loss plot per encoder x probe,
    # and the robustness curve (the soft-prompt probe's budget against pre-attack: 2 points)
    assert len(images) == 2 * 2 * 4 + 2 * 2 and len(plots) == 2 * 3 + 1
    assert "plots/robustness_curve.png" in plots
    for ref in refs:
        assert not ref.startswith("/") and "://" not in ref, f"links must be relative: {ref}"
        assert (out / ref).is_file(), f"{ref} is referenced by report.html but missing"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == sorted(set(refs))
    assert not list(out.rglob("*.tmp")), "no temporary files left behind"


def test_report_json_has_every_number(written):
    results, out, _ = written
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert "_images" not in report and "_images" in results  # the caller's dict keeps its images
    for name in ("original", "erased"):
        entry = report["encoders"][name]
        assert rate_counts(entry["pre_attack"]) == {"successes": 0, "n": 2, "rate": 0.0}
        assert set(entry["post_attack"]) == {"soft_prompt", "unlearndiffatk", "concept_vector"}
        assert all(p["attacked"] == 2 for p in entry["post_attack"].values())
        assert rate_counts(entry["utility"]["retain_accuracy"]) == {"successes": 2, "n": 2, "rate": 1.0}
        assert rate_counts(entry["utility"]["concept_on_retain"]) == {"successes": 0, "n": 2, "rate": 0.0}
        case = entry["cases"][0]
        assert case["probes"]["unlearndiffatk"]["adv_token_ids"] and case["probes"]["soft_prompt"]["losses"]
    assert report["cases"][1]["seed"] == 1 and report["judge"] == {"name": "never"}
    assert set(report["plots"]) == {f"{e}/{p}" for e in ("original", "erased")
                                    for p in ("soft_prompt", "unlearndiffatk", "concept_vector")} | {"robustness_curve"}
    for entry in report["encoders"].values():  # the soft-prompt probe's budget against epsilon 0 (pre-attack)
        assert [p["epsilon"] for p in entry["robustness_curve"]] == [0.0, DEFAULT_EPSILON]
        assert entry["stress_asr"] == {} and entry["post_attack_asr"]["soft_prompt"] == 0.0


def test_html_escapes_prompts_and_names_the_judge(written):
    _, _, page = written
    text = page.read_text(encoding="utf-8")
    assert "a photo of &lt;nudity&gt; &amp; &quot;quotes&quot;" in text and "<nudity>" not in text
    assert "Judge: name=never" in text and "pre-attack ASR" in text and "0.0% <small>(0/2)</small>" in text


def test_write_report_rejects_other_dicts(tmp_path):
    with pytest.raises(ErasureError, match="evaluate"):
        write_report({"foo": 1}, tmp_path)


def test_html_gives_intervals_and_the_wider_one_by_prompt(written, tmp_path):
    import copy

    from erasure_core.rates import rate, with_clusters, wilson_interval

    results = copy.deepcopy(written[0])
    # 8 of 40 retain cases lost, all in two prompts: the cases are 10 draws, not 40
    lost = with_clusters(rate(8, 40), [[4, 4]] * 2 + [[0, 4]] * 8)
    results["encoders"]["erased"]["utility"]["retain_accuracy"] = lost
    text = write_report(results, tmp_path).read_text(encoding="utf-8")
    low, high = wilson_interval(1.8, 9)
    assert f"20.0% <small>(8/40)</small><br><small>[0.10, 0.35]; by prompt [{low:.2f}, {high:.2f}]</small>" in text
    assert "0.0% <small>(0/2)</small><br><small>[0.00, 0.66]</small>" in text  # no clusters: Wilson's alone
