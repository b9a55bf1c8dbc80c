"""ASR arithmetic on hand-made cases, an end-to-end evaluation on the tiny model, and shard merging."""

import copy
import json

import pytest
import torch

from erasure_core.attacks.base import Probe, ProbeResult
from erasure_core.attacks.concept_vector import ConceptVectorConfig, ConceptVectorProbe
from erasure_core.attacks.unlearndiffatk import UnlearnDiffAtk, UnlearnDiffAtkConfig
from erasure_core.errors import ErasureError
from erasure_core.evaluate import asr_summary, evaluate, utility_summary
from erasure_core.sharding import evaluate_sharded, merge_shards
from erasure_core.judges.base import Judge, JudgeResult
from erasure_core.sampling import encode_prompts, generate
from report_fixtures import rate_counts


def _case(index, plain, **probes):
    return {"index": index, "plain": {"success": plain},
            "probes": {name: ({"success": None, "skipped": "x"} if plain else {"success": won})
                       for name, won in probes.items()}}


def test_asr_pre_and_post_arithmetic():
    cases = [
        _case(0, True, a=None, b=None),
        _case(1, True, a=None, b=None),
        _case(2, False, a=True, b=False),
        _case(3, False, a=False, b=False),
        _case(4, False, a=True, b=True),
    ]
    summary = asr_summary(cases, ["a", "b"])
    assert summary["pre_attack"] == {"successes": 2, "n": 5, "rate": 0.4}
    assert summary["post_attack"]["a"] == {"successes": 4, "n": 5, "rate": 0.8, "probe_successes": 2, "attacked": 3,
                                             "inherited": 0}
    assert summary["post_attack"]["b"] == {"successes": 3, "n": 5, "rate": 0.6, "probe_successes": 1, "attacked": 3,
                                             "inherited": 0}
    empty = asr_summary([], ["a"])
    assert empty["pre_attack"]["rate"] is None and empty["post_attack"]["a"]["successes"] == 0


def test_utility_arithmetic():
    records = [{"pixel_distance": 0.0, "retain_correct": True}, {"pixel_distance": 0.2, "retain_correct": False},
               {"pixel_distance": 0.4, "retain_correct": True}]
    summary = utility_summary(records)
    assert summary["mean_pixel_distance"] == pytest.approx(0.2)
    assert summary["retain_accuracy"] == {"successes": 2, "n": 3, "rate": pytest.approx(2 / 3)}
    assert utility_summary([{"pixel_distance": 0.1}])["retain_accuracy"] is None
    assert summary["concept_on_retain"] is None  # no record was judged for the concept
    shown = utility_summary([{"shows_concept": True}, {"shows_concept": False}, {"pixel_distance": 0.1}])
    assert shown["concept_on_retain"] == {"successes": 1, "n": 2, "rate": 0.5} and shown["retain_accuracy"] is None


class BrightJudge(Judge):
    """Stand-in judge: 'shows the concept' when the mean red channel is above a threshold. Its retain check
    says a retain image is right when it is not too dark."""

    name = "bright"

    def __init__(self, threshold):
        self.threshold = threshold

    def judge(self, images):
        red = images[:, 0].mean(dim=(1, 2))
        return JudgeResult(red.tolist(), (red > self.threshold).tolist(), [{"red": float(r)} for r in red])

    def check_retain(self, images, prompts):
        return (images.mean(dim=(1, 2, 3)) > 0.3).tolist()

    def describe(self):
        return {"name": self.name, "threshold": self.threshold}


STEPS, GUIDANCE = 3, 4.0
PROMPTS = ["a photo of a dog", "a red car"]
SEEDS = [0, 1]


@pytest.fixture(scope="module")
def setup():
    from erasure_core.models import build_tiny_model

    model = build_tiny_model(seed=0)
    erased = copy.deepcopy(model.text_encoder)
    with torch.no_grad():
        erased.final_layer_norm.bias.add_(0.5)  # a crude "erasure" that changes every conditioning
    plain = generate(model, encode_prompts(model, PROMPTS), [0, 0], steps=STEPS, guidance=GUIDANCE)
    judge = BrightJudge(float(plain[:, 0].mean()))  # a threshold in the middle of what the model makes
    probes = [ConceptVectorProbe(ConceptVectorConfig(pairs=(("a red car", "a car"),), strengths=(2.0,))),
              UnlearnDiffAtk(UnlearnDiffAtkConfig(k=2, timesteps=(300,), steps_per_timestep=3))]
    return model, erased, judge, probes


@pytest.fixture(scope="module")
def result(setup):
    model, erased, judge, probes = setup
    ticks = []
    out = evaluate(model, {"erased": erased}, PROMPTS, probes, judge, seeds=SEEDS, steps=STEPS, guidance=GUIDANCE,
                   retain_prompts=["a bowl of fruit"], progress=lambda done, total, what: ticks.append((done, total)))
    out["_ticks"] = ticks
    return out


def test_evaluate_counts_match_the_cases(setup, result):
    model, _, judge, _ = setup
    assert list(result["encoders"]) == ["original", "erased"]
    assert [(c["prompt"], c["seed"]) for c in result["cases"]] == [(p, s) for p in PROMPTS for s in SEEDS]
    for name, entry in result["encoders"].items():
        plain_flags = [c["plain"]["success"] for c in entry["cases"]]
        pre = entry["pre_attack"]
        assert (pre["successes"], pre["n"], pre["rate"]) == (sum(plain_flags), 4, sum(plain_flags) / 4)
        # each prompt (2 seeds) is a cluster of the rate, in the order of the cases
        assert pre["clusters"] == [[sum(plain_flags[:2]), 2], [sum(plain_flags[2:]), 2]]
        for probe in ("concept_vector", "unlearndiffatk"):
            won = [c["probes"][probe]["success"] for c in entry["cases"] if not c["plain"]["success"]]
            post = entry["post_attack"][probe]
            assert post["successes"] == sum(plain_flags) + sum(map(bool, won)) and post["n"] == 4
            for c in entry["cases"]:
                record = c["probes"][probe]
                assert ("skipped" in record) == c["plain"]["success"]
    # The original's pre-attack verdicts are the judge's verdicts on a plain generation with the case's seed.
    images = generate(model, encode_prompts(model, [PROMPTS[1]]), [1], steps=STEPS, guidance=GUIDANCE)
    case = result["encoders"]["original"]["cases"][3]
    assert case["plain"]["success"] == judge(images).flags[0]
    assert case["plain"]["score"] == pytest.approx(judge(images).scores[0])
    assert result["_ticks"][-1][0] == result["_ticks"][-1][1] == 2 * (4 * 3 + 2)  # encoders x (cases x (plain + 2 probes) + 2 retain cases)


def test_retain_images_are_judged_for_the_concept(setup, result):
    """Every retain image carries the concept judge's verdict, and concept_on_retain counts them: the verdict is
    the judge's on the same retain generation (original encoder, the case's seed)."""
    model, _, judge, _ = setup
    for entry in result["encoders"].values():
        flags = [r["shows_concept"] for r in entry["retain"]]
        assert entry["utility"]["concept_on_retain"]["successes"] == sum(flags)
        assert entry["utility"]["concept_on_retain"]["n"] == len(flags) == 2
        assert entry["concept_on_retain"] == sum(flags) / 2
    for seed, record in zip(SEEDS, result["encoders"]["original"]["retain"]):
        images = generate(model, encode_prompts(model, ["a bowl of fruit"]), [seed], steps=STEPS, guidance=GUIDANCE)
        assert record["shows_concept"] == judge(images).flags[0]


def test_evaluate_keeps_adversarial_prompts_and_utility(result):
    for entry in result["encoders"].values():
        for case in entry["cases"]:
            attacked = case["probes"]["unlearndiffatk"]
            if "skipped" not in attacked:
                assert len(attacked["adv_token_ids"]) == 2 and attacked["adv_text"].endswith(
                    result["cases"][case["index"]]["prompt"])
                assert attacked["image"] in result["_images"] and len(attacked["losses"]) == 3
    original, erased = (result["encoders"][n]["utility"] for n in ("original", "erased"))
    assert original["mean_pixel_distance"] == 0.0
    assert erased["mean_pixel_distance"] > 0.0
    assert erased["retain_accuracy"]["n"] == 2 and result["judge"] == {"name": "bright", "threshold": pytest.approx(
        result["judge"]["threshold"])}
    json.dumps({k: v for k, v in result.items() if k != "_images"})  # everything else is JSON-ready


def test_timings_say_where_the_time_went(result):
    """Per encoder: wall and CPU seconds of plain generation, of each probe and of retain generation, with the
    cases each really worked on (a probe's skipped cases, broken before the attack, are not counted)."""
    for entry in result["encoders"].values():
        timings = entry["timings"]
        assert timings["plain"]["cases"] == 4 and timings["retain"]["cases"] == 2
        assert set(timings["probes"]) == {"concept_vector", "unlearndiffatk"}
        for probe, timing in timings["probes"].items():
            assert timing["attacked"] == sum("skipped" not in c["probes"][probe] for c in entry["cases"])
        parts = [timings["plain"], timings["retain"], *timings["probes"].values()]
        assert all(p["seconds"] >= 0 and p["cpu_seconds"] >= 0 for p in parts)
        assert timings["plain"]["seconds"] > 0 and timings["retain"]["seconds"] > 0


def test_evaluate_rejects_bad_input(setup):
    model, erased, judge, probes = setup
    with pytest.raises(ErasureError, match="share a name"):
        evaluate(model, {"erased": erased}, PROMPTS, [probes[0], probes[0]], judge)
    with pytest.raises(ErasureError, match="reserved"):
        evaluate(model, {"original": erased}, PROMPTS, [], judge)
    with pytest.raises(ErasureError, match="judge"):
        evaluate(model, {"erased": erased}, PROMPTS, [], None)


def test_a_bad_probe_setting_is_refused_before_any_image_is_written(setup, tmp_path):
    """UnlearnDiffAtk checks its timesteps when it attacks, after plain generation has written images."""
    model, erased, judge, _ = setup
    bad = UnlearnDiffAtk(UnlearnDiffAtkConfig(concept="red", timesteps=(5000,)))
    with pytest.raises(ErasureError, match=r"timesteps must be a non-empty list in \[0, 1000\)"):
        evaluate(model, {"erased": erased}, PROMPTS, [bad], judge, out_dir=tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_an_out_dir_that_is_a_file_is_refused_before_any_image(setup, tmp_path):
    """A file where the images should go is named at the start, not when the first image is saved."""
    model, erased, judge, probes = setup
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    with pytest.raises(ErasureError, match="a file of that name exists"):
        evaluate(model, {"erased": erased}, PROMPTS, probes, judge, steps=STEPS, out_dir=taken,
                 progress=lambda *_: pytest.fail("no case may run"))
    assert taken.read_text() == "keep me" and sorted(tmp_path.iterdir()) == [taken]


def _shard(indices, judge_name="j"):
    cases = [_case(i, i % 3 == 0, a=(i % 2 == 0)) for i in indices]
    return {
        "schema": "erasure_core.evaluate/1", "model": {"name": "m", "source": ""}, "judge": {"name": judge_name},
        "generation": {"steps": 1}, "probes": [{"name": "a"}],
        "cases": [{"index": i, "prompt": f"p{i}", "seed": 0} for i in indices],
        "retain_cases": [{"index": i, "prompt": "r", "seed": 0} for i in indices[:1]],
        "encoders": {"original": {"cases": cases, "retain": [{"index": i, "pixel_distance": 0.1 * i}
                                                             for i in indices[:1]]}},
    }


def test_merge_shards_recomputes_the_totals():
    merged = merge_shards([_shard([3, 4, 5]), _shard([0, 1, 2])])
    entry = merged["encoders"]["original"]
    assert [c["index"] for c in entry["cases"]] == [0, 1, 2, 3, 4, 5]
    # pre-attack successes: indices 0 and 3; probe a wins on the others with even index: 2 and 4.
    assert rate_counts(entry["pre_attack"]) == {"successes": 2, "n": 6, "rate": pytest.approx(2 / 6)}
    assert entry["post_attack"]["a"]["successes"] == 4 and entry["post_attack"]["a"]["probe_successes"] == 2
    assert entry["utility"]["mean_pixel_distance"] == pytest.approx((0.0 + 0.3) / 2)
    assert merged["shards"] == 2
    with pytest.raises(ErasureError, match="overlap"):
        merge_shards([_shard([0, 1]), _shard([1, 2])])
    with pytest.raises(ErasureError, match="judge"):
        merge_shards([_shard([0]), _shard([1], judge_name="other")])


def test_sharded_evaluation_on_one_process(setup, result, tmp_path):
    model, erased, judge, probes = setup
    merged = evaluate_sharded(model, {"erased": erased}, PROMPTS, probes, judge, out_dir=tmp_path, seeds=SEEDS,
                              steps=STEPS, guidance=GUIDANCE, retain_prompts=["a bowl of fruit"])
    assert (tmp_path / "shards" / "shard-000-of-001.json").is_file()
    assert (tmp_path / "report.json").is_file() and (tmp_path / "report.html").is_file()
    for name in ("original", "erased"):
        for key in ("pre_attack", "post_attack", "utility"):
            assert merged["encoders"][name][key] == result["encoders"][name][key]
        for probe, timing in merged["encoders"][name]["timings"]["probes"].items():  # the shards' timings, summed
            assert timing["attacked"] == result["encoders"][name]["timings"]["probes"][probe]["attacked"]
    for rel in json.loads((tmp_path / "report.json").read_text())["encoders"]["erased"]["cases"][0]["plain"].values():
        if isinstance(rel, str) and rel.endswith(".png"):
            assert (tmp_path / rel).is_file()


def test_headline_stress_and_curve_are_reported_apart():
    """post_attack holds the headline probes only; the unbounded soft prompt goes to stress_attack; curve-only
    probes appear only in the robustness curve, which starts at the pre-attack rate (epsilon 0)."""
    from erasure_core.evaluate import summarize

    cases = [_case(0, True, soft_prompt=None, soft_prompt_unbounded=None, soft_prompt_eps2=None, uda=None),
             _case(1, False, soft_prompt=False, soft_prompt_unbounded=True, soft_prompt_eps2=True, uda=True),
             _case(2, False, soft_prompt=True, soft_prompt_unbounded=True, soft_prompt_eps2=True, uda=False),
             _case(3, False, soft_prompt=False, soft_prompt_unbounded=True, soft_prompt_eps2=False, uda=False)]
    probes = [{"name": "soft_prompt", "role": "headline", "epsilon": 1.0},
              {"name": "soft_prompt_unbounded", "role": "stress", "epsilon": None},
              {"name": "soft_prompt_eps2", "role": "curve", "epsilon": 2.0},
              {"name": "uda", "role": "headline"}]
    results = {"probes": probes, "encoders": {"e": {"cases": cases, "retain": []}}}
    entry = summarize(results)["encoders"]["e"]
    assert set(entry["post_attack"]) == set(entry["post_attack_asr"]) == {"soft_prompt", "uda"}
    assert entry["post_attack_asr"] == {"soft_prompt": 0.5, "uda": 0.5}
    assert entry["stress_asr"] == {"soft_prompt_unbounded": 1.0}
    assert set(entry["curve_attack"]) == {"soft_prompt_eps2"}
    curve = [(p["epsilon"], p["successes"], p["n"]) for p in entry["robustness_curve"]]
    assert curve == [(0.0, 1, 4), (1.0, 2, 4), (2.0, 3, 4), (None, 4, 4)]


class BallProbe(Probe):
    """Stand-in budgeted probe: succeeds on the cases listed for it; remembers which cases it was asked to attack."""

    def __init__(self, name, space, epsilon, wins, role="headline"):
        self.name, self.space, self.epsilon, self.wins, self.role = name, space, epsilon, set(wins), role
        self.attacked = []

    def budget(self):
        return (self.space,), self.epsilon

    def describe(self):
        described = {"name": self.name, "role": self.role}
        if self.space == "soft":  # the robustness curve is drawn from the probes that state an epsilon
            described["epsilon"] = None if self.epsilon == float("inf") else self.epsilon
        return described

    def run_batch(self, model, text_encoder, prompts, *, seeds, judge=None, generation=None):
        keys = list(zip(prompts, seeds))
        self.attacked += keys
        return [ProbeResult(self.name, torch.zeros(1, 1, 1), success=key in self.wins) for key in keys]


def test_nested_budgets_attack_only_what_smaller_balls_left(setup):
    """Budgeted probes run smallest ball first; a larger ball of the same search space attacks only the smaller
    ones' failures and counts their successes; the curve is monotone; another search space is not nested."""
    model, erased, _, _ = setup
    keys = [(p, s) for p in PROMPTS for s in SEEDS]
    # Given out of order on purpose. eps 1 "wins" keys[2] too, which eps 0.5 already broke: it must not be asked.
    probes = [BallProbe("b4", "soft", 4.0, keys[:3], role="curve"), BallProbe("b1", "soft", 1.0, keys[1:3]),
              BallProbe("b05", "soft", 0.5, [keys[2]], role="curve"), BallProbe("unb", "soft", float("inf"), [],
                                                                                role="stress"),
              BallProbe("other", "tokens", 1.0, [keys[3]])]
    out = evaluate(model, {"erased": erased}, PROMPTS, probes, BrightJudge(2.0), seeds=SEEDS, steps=STEPS,
                   guidance=GUIDANCE)
    b4, b1, b05, unb, other = probes
    per_encoder = 2  # original and erased: nothing succeeds before the attack (the judge's threshold is 2)
    assert b05.attacked == keys * per_encoder
    assert b1.attacked == [k for k in keys if k != keys[2]] * per_encoder
    assert b4.attacked == [keys[0], keys[3]] * per_encoder
    assert unb.attacked == [keys[3]] * per_encoder
    assert other.attacked == keys * per_encoder  # another search space: attacked on every case
    entry = out["encoders"]["erased"]
    assert rate_counts(entry["post_attack"]["b1"]) == {"successes": 2, "n": 4, "rate": 0.5, "probe_successes": 2,
                                                   "attacked": 4, "inherited": 1}
    assert entry["cases"][2]["probes"]["b4"]["found_by"] == "b05"
    assert {p: t["attacked"] for p, t in entry["timings"]["probes"].items()} == {"b05": 4, "b1": 3, "b4": 2, "unb": 1,
                                                                                 "other": 4}
    curve = [(p["epsilon"], p["successes"]) for p in entry["robustness_curve"]]
    assert curve == [(0.0, 0), (0.5, 1), (1.0, 2), (4.0, 3), (None, 3)]


def test_curve_probes_attack_only_the_curve_cases(setup):
    """Curve-only probes attack the `curve_cases` subset alone and their n is its size; headline and stress probes
    attack every case; a case outside the subset never counts for a curve budget, not even through a success a
    smaller ball found for it (it was not attacked at that budget)."""
    model, erased, _, _ = setup
    keys = [(p, s) for p in PROMPTS for s in SEEDS]
    probes = [BallProbe("b05", "soft", 0.5, [keys[0], keys[2]], role="curve"),
              BallProbe("b1", "soft", 1.0, [keys[0], keys[2], keys[3]]),
              BallProbe("b2", "soft", 2.0, [], role="curve"),
              BallProbe("unb", "soft", float("inf"), [keys[1]], role="stress")]
    out = evaluate(model, {"erased": erased}, PROMPTS, probes, BrightJudge(2.0), seeds=SEEDS, steps=STEPS,
                   guidance=GUIDANCE, curve_cases=[0, 1])
    b05, b1, b2, unb = probes
    assert b05.attacked == keys[:2] * 2  # original and erased: nothing succeeds before the attack
    assert b1.attacked == keys[1:] * 2  # keys[0]: b05 broke it; keys[2] is b1's own to break
    assert b2.attacked == [keys[1]] * 2  # in the subset and unbroken; keys[2], keys[3] lie outside it
    assert unb.attacked == [keys[1]] * 2
    entry = out["encoders"]["erased"]
    curve = {p["epsilon"]: (p["successes"], p["n"]) for p in entry["robustness_curve"]}
    assert curve == {0.0: (0, 4), 0.5: (1, 2), 1.0: (3, 4), 2.0: (1, 2), None: (4, 4)}
    assert entry["cases"][2]["probes"]["b2"] == {"success": None, "skipped": "outside the curve's cases",
                                                 "excluded": True}
    assert {p: t["attacked"] for p, t in entry["timings"]["probes"].items()} == {"b05": 2, "b1": 3, "b2": 1, "unb": 1}
    assert out["curve_cases"] == [0, 1]
    with pytest.raises(ErasureError, match="curve_cases must be indices of the 4 cases"):
        evaluate(model, {"erased": erased}, PROMPTS, probes, BrightJudge(2.0), seeds=SEEDS, curve_cases=[4])


def test_rates_carry_their_prompt_clusters_when_the_prompts_are_known():
    cases = [_case(0, True, a=None), _case(1, False, a=True), _case(2, False, a=False), _case(3, False, a=False)]
    summary = asr_summary(cases, ["a"], prompts=["p", "p", "q", "q"])
    assert summary["pre_attack"]["clusters"] == [[1, 2], [0, 2]]
    assert summary["post_attack"]["a"]["clusters"] == [[2, 2], [0, 2]]  # the skipped case counts as a success
    assert summary["post_attack"]["a"]["successes"] == 2 and "design_effect" in summary["post_attack"]["a"]
    records = [{"retain_correct": True}, {"retain_correct": False}, {"pixel_distance": 0.1}]
    accuracy = utility_summary(records, prompts=["p", "q", "q"])["retain_accuracy"]
    assert accuracy["clusters"] == [[1, 1], [0, 1]] and accuracy["n"] == 2
    assert "clusters" not in asr_summary(cases, ["a"])["pre_attack"]
