"""End to end on the embedded demo model: erase (ESD and AdvUnlearn), probe, judge, report."""

import json
import re
from pathlib import Path

import pytest

from erasure_core.attacks.soft_prompt import DEFAULT_EPSILON
from erasure_core.demo.run import DemoSettings, run_demo
from erasure_core.errors import ErasureError

PROBES = ("soft_prompt", "unlearndiffatk", "concept_vector")  # the headline probes
STRESS = ("soft_prompt_unbounded",)


def small_settings() -> DemoSettings:
    """A few iterations and prompts: this checks the plumbing, bench/demo_efficacy.py measures efficacy."""
    settings = DemoSettings(concept_prompts=2, retain_prompts=2, steps=8)
    settings.erase.update(iterations=6, warmup_iterations=2, concept_pool_size=2, retain_pool_size=4,
                          num_ddim_steps=8)
    settings.probes["soft_prompt"].update(steps=3, sampling_steps=8, points=2)
    settings.probes["unlearndiffatk"].update(timesteps=(500,), steps_per_timestep=2)
    settings.probes["concept_vector"].update(strengths=(1.0,))
    return settings


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    results = run_demo("square", out, seed=0, settings=small_settings(), log=lambda _msg: None)
    return out, results


@pytest.mark.slow
def test_report_json_has_the_promised_fields(demo_report):
    out, results = demo_report
    report = json.loads((out / "report.json").read_text())
    assert report["concept"] == "square" and report["n_prompts"] == 2
    assert report["judge"]["name"] == "demo-judge"
    assert list(report["encoders"]) == ["original", "esd", "advunlearn"]
    for entry in report["encoders"].values():
        assert set(entry["post_attack_asr"]) == set(PROBES)  # headline only: no stress or curve-only probe
        assert set(entry["stress_asr"]) == set(STRESS)
        # The summary rates are the per-case records counted: a case counts after an attack when it showed the
        # concept before (the probe is then skipped) or the probe brought it back.
        cases = entry["cases"]
        plain = [c["plain"]["success"] for c in cases]
        assert len(cases) == 2 and all((out / c["plain"]["image"]).is_file() for c in cases)
        pre = entry["pre_attack"]
        assert (pre["successes"], pre["n"], pre["rate"]) == (sum(plain), 2, sum(plain) / 2)
        assert entry["pre_attack_asr"] == sum(plain) / 2
        for probe in PROBES + STRESS:
            attacked = [c["probes"][probe] for c, shown in zip(cases, plain) if not shown]
            assert all("skipped" in c["probes"][probe] for c, shown in zip(cases, plain) if shown)
            successes = sum(plain) + sum(a["success"] is True for a in attacked)
            rates = entry["stress_asr"] if probe in STRESS else entry["post_attack_asr"]
            assert rates[probe] == successes / 2, probe
        retain = [r["retain_correct"] for r in entry["retain"]]
        assert len(retain) == 2 and entry["retain_accuracy"] == sum(retain) / 2
        # The robustness curve: epsilon 0 is the pre-attack ASR, the default budget is the headline soft-prompt
        # probe, unbounded is the stress probe, in increasing order of budget.
        curve = entry["robustness_curve"]
        assert [p["epsilon"] for p in curve] == [0.0, DEFAULT_EPSILON, 4.0, None]
        assert curve[0]["rate"] == entry["pre_attack_asr"] and curve[0]["n"] == 2
        by_probe = {p["probe"]: p["rate"] for p in curve}
        assert by_probe["soft_prompt"] == entry["post_attack_asr"]["soft_prompt"]
        assert by_probe["soft_prompt_unbounded"] == entry["stress_asr"]["soft_prompt_unbounded"]
    assert "robustness_curve" in report["plots"] and (out / report["plots"]["robustness_curve"]).is_file()
    assert "Robustness curve" in (out / "report.html").read_text()
    for method in ("esd", "advunlearn"):
        history = report["training"][method]["history"]
        assert len(history) == 6 and report["training"][method]["unet_evaluations"] > 0


@pytest.mark.slow
def test_report_html_references_only_existing_images(demo_report):
    out, _ = demo_report
    html = (out / "report.html").read_text()
    images = re.findall(r"src=['\"]([^'\"]+)['\"]", html)
    assert len(images) >= 3 * (2 + 2)  # every encoder: plain concept images and retain images at least
    assert all((out / image).is_file() for image in images)


def test_unknown_concept_is_refused_with_the_valid_values(tmp_path):
    with pytest.raises(ErasureError, match="circle"):
        run_demo("dragon", tmp_path, settings=small_settings(), log=lambda _msg: None)
    assert not any(Path(tmp_path).iterdir())


def test_an_out_that_is_a_file_is_refused_before_training(tmp_path):
    """A file where the report folder should go is named before the model loads, not after minutes of training
    (a fresh clone's `demo --out README.md` trained for minutes first); the file is left as it was."""
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    model = object()  # never reached: using it would fail with another error
    with pytest.raises(ErasureError, match="a file of that name exists"):
        run_demo("circle", taken, settings=small_settings(), model=model, log=lambda _msg: None)
    assert taken.read_text() == "keep me" and sorted(tmp_path.iterdir()) == [taken]
