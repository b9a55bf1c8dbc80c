"""The efficacy benchmark's core on the tiny model (seconds): efficacy.json's contract and the pooling."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from erasure_core.judges.base import Judge, JudgeResult

BENCH = Path(__file__).resolve().parents[2] / "bench" / "demo_efficacy.py"


def _bench():
    spec = importlib.util.spec_from_file_location("demo_efficacy", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class RedJudge(Judge):
    name = "red"

    def judge(self, images):
        red = images[:, 0].mean(dim=(1, 2))
        return JudgeResult(red.tolist(), (red > 0.5).tolist(), [{} for _ in red])


def half_right(images, prompts):
    return [True, False] * (len(prompts) // 2)


def red_judge(concept):
    return RedJudge()


def half_right_check(judge):
    return half_right


def _tiny_settings(bench, concepts=("circle",), training_seeds=(0, 1)):
    settings = bench.BenchSettings(concepts=concepts, prompts=2, generation_seeds=(0, 1), training_seeds=training_seeds)
    demo = settings.demo
    demo.steps = 3
    demo.erase.update(iterations=2, warmup_iterations=1, concept_pool_size=2, retain_pool_size=2, num_ddim_steps=4,
                      attack_steps=1)
    demo.probes["soft_prompt"].update(steps=2, sampling_steps=3, points=1, trajectories=1)
    demo.probes["unlearndiffatk"].update(timesteps=(500,), steps_per_timestep=1)
    demo.probes["concept_vector"].update(strengths=(1.0,))
    demo.curve_epsilons = (0.5, 1.0, None)
    return settings


def test_efficacy_json_contract_on_the_tiny_model(tiny_model, tmp_path):
    bench = _bench()
    settings = _tiny_settings(bench)
    settings.split_cases = False  # every training seed on every case (the split has its own test below)
    settings.curve_cases = 2  # the curve's extra budget (0.5) on 2 of the 4 cases
    efficacy = bench.measure(tiny_model, settings, tmp_path, judge_for=red_judge, retain_check_for=half_right_check,
                             log=lambda msg: None)
    on_disk = json.loads((tmp_path / "efficacy.json").read_text())
    assert on_disk["results"] == json.loads(json.dumps(efficacy["results"]))
    cell = on_disk["results"]["circle"]
    assert set(cell) == {"original", "esd", "advunlearn"}
    for name, entry in cell.items():
        runs = 1 if name == "original" else 2
        assert entry["runs"] == runs
        for r in [entry["pre_attack"], *entry["post_attack"].values(), *entry["stress_attack"].values(),
                  entry["utility"]["retain_accuracy"], entry["utility"]["concept_on_retain"]]:
            assert set(r) >= {"rate", "successes", "n", "low", "high", "per_seed"}
            assert r["n"] == 4 * runs and len(r["per_seed"]) == runs
            assert sum(s["successes"] for s in r["per_seed"]) == r["successes"]
            spread = r["between_seeds"]  # over training seeds: none for one run
            assert spread is None if runs == 1 else (spread["seeds"] == 2 and spread["low"] <= spread["mean"])
            assert r["low"] <= r["rate"] <= r["high"]
            # the cases' prompts as clusters, each seed's apart: 2 prompts x 2 generation seeds a run
            assert [m for _, m in r["clusters"]] == [2] * (2 * runs)
            assert sum(s for s, _ in r["clusters"]) == r["successes"] and "design_effect" in r
            assert r["clustered"]["low"] <= r["low"] and r["clustered"]["high"] >= r["high"]
        assert set(entry["post_attack"]) == {"soft_prompt", "unlearndiffatk", "concept_vector"}
        assert set(entry["stress_attack"]) == {"soft_prompt_unbounded"}
        assert [p["epsilon"] for p in entry["robustness_curve"]] == [0.0, 0.5, 1.0, None]
        # headline (1) and stress (unbounded) budgets on every case, the curve-only one on the subset
        assert [p["n"] for p in entry["robustness_curve"]] == [4 * runs, 2 * runs, 4 * runs, 4 * runs]
        assert entry["utility"]["retain_accuracy"]["rate"] == pytest.approx(0.5)
    # report.json of the same run carries the same contract per encoder (and training seed)
    report = json.loads((tmp_path / "circle" / "report.json").read_text())
    assert set(report["encoders"]) == {"original", "esd_s0", "esd_s1", "advunlearn_s0", "advunlearn_s1"}
    for entry in report["encoders"].values():
        assert {"pre_attack_asr", "post_attack_asr", "retain_accuracy", "stress_asr", "robustness_curve"} <= set(entry)
    assert on_disk["curve_cases_per_cell"] == 4 and on_disk["cases_per_cell"] == 8 and not on_disk["split_cases"]
    # the machine, down to the CPU and its vector instructions: seeds pair only on one machine (machine_record)
    import torch

    assert on_disk["machine"]["cpu"] and on_disk["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert "circle" in bench.format_table(efficacy["results"]) and "eps unb" in bench.format_curves(efficacy["results"])
    verdict = on_disk["verdicts"]["circle"]  # the targets, judged from these very figures
    assert set(verdict) == {"pre_attack", "post_attack", "retain", "esd_broken", "below_esd_curve"}
    assert verdict["pre_attack"]["successes"] == cell["advunlearn"]["pre_attack"]["successes"]
    # where the evaluation's time went, per method: the encoders' timings summed over the training seeds
    by_method = on_disk["timings"]["circle"]["evaluation_by_method"]
    assert set(by_method) == set(on_disk["evaluation_timings"]) == {"original", "esd", "advunlearn"}
    for method in ("esd", "advunlearn"):
        runs = [report["encoders"][f"{method}_s{seed}"] for seed in (0, 1)]
        assert by_method[method]["plain"]["cases"] == 8 and by_method[method]["retain"]["cases"] == 8
        for probe, timing in by_method[method]["probes"].items():
            attacked = [sum("skipped" not in c["probes"][probe] for c in run["cases"]) for run in runs]
            summed = on_disk["evaluation_timings"][method]["probes"][probe]
            assert timing["attacked"] == sum(attacked) == summed["attacked"]
            assert timing["cpu_seconds"] >= 0 and timing["seconds"] >= 0


def test_advunlearn_alone_trains_and_judges_without_esd(tiny_model, tmp_path):
    """--methods advunlearn (a tuning run): no ESD encoder is trained or attacked, and the targets that compare
    with ESD are left out rather than judged against nothing."""
    bench = _bench()
    settings = _tiny_settings(bench, training_seeds=(0,))
    settings.methods = bench._methods("advunlearn")
    efficacy = bench.measure(tiny_model, settings, tmp_path, judge_for=red_judge, retain_check_for=half_right_check,
                             log=lambda msg: None)
    assert set(efficacy["results"]["circle"]) == {"original", "advunlearn"}
    assert sorted(p.name for p in (tmp_path / "circle" / "encoders").iterdir()) == ["advunlearn_s0.safetensors"]
    assert set(efficacy["verdicts"]["circle"]) == {"pre_attack", "post_attack", "retain"}


def test_two_workers_give_the_single_process_figures(tmp_path, monkeypatch):
    """Concepts shared out to 2 processes of one thread each: the same efficacy figures as one process of one
    thread (every concept is seeded on its own), with each concept's timings and the workers' CPU time."""
    import torch

    from erasure_core.loading import load_model

    bench = _bench()
    monkeypatch.syspath_prepend(str(BENCH.parent))  # the spawned workers import the bench and this file by name
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    settings = _tiny_settings(bench, concepts=("circle", "red"), training_seeds=(0,))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = bench.measure(load_model("tiny"), settings, tmp_path / "one", judge_for=red_judge,
                               retain_check_for=half_right_check, log=lambda msg: None)
    finally:
        torch.set_num_threads(threads)
    shared = bench.measure(load_model("tiny"), settings, tmp_path / "two", judge_for=red_judge,
                           retain_check_for=half_right_check, log=lambda msg: None, workers=2, model_name="tiny")
    assert shared["results"] == single["results"] and list(shared["results"]) == ["circle", "red"]
    assert shared["workers"] == 2 and shared["threads"] == single["threads"] == 1
    for concept in ("circle", "red"):
        timing = shared["timings"][concept]
        assert timing["cpu"] > 0 and set(timing["runs"]) == {"esd_s0", "advunlearn_s0"}
    assert shared["cpu_seconds"] >= sum(t["cpu"] for t in shared["timings"].values()) - 0.05  # rounding


@pytest.mark.parametrize("device, concepts, cpus, expected", [
    ("cpu", 8, 2, 2), ("cpu", 8, 1, 1), ("cpu", 8, 16, 2),  # a CPU: 2 one-thread workers at most
    ("cuda", 8, 16, 8), ("cuda", 2, 16, 2),  # a GPU: a process a concept...
    ("cuda", 8, 4, 2), ("cuda", 8, 1, 1),  # ...but no more than one per 2 CPU cores
])
def test_default_workers_follow_the_device_and_the_cores(device, concepts, cpus, expected):
    assert _bench().default_workers(device, concepts, cpus) == expected


@pytest.mark.parametrize("bad, message", [
    (["--workers", "0"], "--workers: expected a whole number >= 1, got 0"),
    (["--prompts", "-2"], "--prompts: expected a whole number >= 1"),
    (["--generation-seeds", "a,b"], "--generation-seeds: expected comma-separated whole numbers"),
    (["--curve", "1,x"], "--curve: each budget must be a number > 0 or none"),
    (["--curve", "0"], "--curve: each budget must be a number > 0 or none"),
    (["--curve-cases", "0"], "--curve-cases: expected a whole number >= 1, got 0"),
    (["--methods", "advunlearn,uce"], "--methods: expected some of esd,advunlearn, each once"),
    (["--methods", "esd,esd"], "--methods: expected some of esd,advunlearn, each once"),
])
def test_bad_command_line_values_are_refused_before_any_work(bad, message, capsys):
    with pytest.raises(SystemExit) as exited:
        _bench().main(bad)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def _json(value):
    return json.loads(json.dumps(value))


def test_an_interrupted_run_resumed_gives_the_uninterrupted_figures(tiny_model, tmp_path):
    """Two concepts; then red's result and one of its encoders are lost (the run was stopped while red was being
    evaluated): --resume reuses circle's result and red's other encoder, retrains the lost one, and gives the
    figures of the uninterrupted run."""
    bench = _bench()
    settings = _tiny_settings(bench, concepts=("circle", "red"), training_seeds=(0,))
    run = dict(judge_for=red_judge, retain_check_for=half_right_check, log=lambda msg: None)
    full = bench.measure(tiny_model, settings, tmp_path, **run)
    assert full["resumed_concepts"] == [] and not full["timings"]["red"]["resumed"]
    for concept in ("circle", "red"):
        assert (tmp_path / concept / "result.json").is_file()
        for name in ("esd_s0", "advunlearn_s0"):
            assert (tmp_path / concept / "encoders" / f"{name}.safetensors").is_file()
    (tmp_path / "red" / "result.json").unlink()
    (tmp_path / "red" / "parts" / "part_s0.json").unlink()  # stopped in red's evaluation: its part was not saved
    (tmp_path / "red" / "encoders" / "esd_s0.safetensors").unlink()
    (tmp_path / "efficacy.json").unlink()
    resumed = bench.measure(tiny_model, settings, tmp_path, resume=True, **run)
    assert _json(resumed["results"]) == _json(full["results"])
    assert resumed["resumed_concepts"] == ["circle"]
    runs = resumed["timings"]["red"]["runs"]
    assert runs["advunlearn_s0"]["resumed"] and "resumed" not in runs["esd_s0"]
    assert resumed["timings"]["circle"]["cpu"] == full["timings"]["circle"]["cpu"]  # the earlier run's timing
    assert json.loads((tmp_path / "efficacy.json").read_text())["results"] == _json(full["results"])


def test_a_run_stopped_between_parts_redoes_only_the_unfinished_part(tiny_model, tmp_path, monkeypatch):
    """Two training seeds, each on its own share: the run is stopped after seed 0's part was evaluated (its part
    file saved, seed 1's not, no result.json), and the trained encoders are gone (a kept run keeps its parts'
    JSON, not the 13 MB encoders). --resume trains and evaluates seed 1 only and pools the figures of the
    uninterrupted run; a saved part from other settings is refused, never pooled."""
    import erasure_core.evaluate as evaluate_module
    from erasure_core.errors import ErasureError

    bench = _bench()
    settings = _tiny_settings(bench)
    run = dict(judge_for=red_judge, retain_check_for=half_right_check, log=lambda msg: None)
    full = bench.measure(tiny_model, settings, tmp_path, **run)
    parts = tmp_path / "circle" / "parts"
    assert sorted(p.name for p in parts.iterdir()) == ["part_s0.json", "part_s1.json"]
    (parts / "part_s1.json").unlink()
    (tmp_path / "circle" / "result.json").unlink()
    for encoder in (tmp_path / "circle" / "encoders").iterdir():
        encoder.unlink()
    evaluated = []
    real = evaluate_module.evaluate
    monkeypatch.setattr(evaluate_module, "evaluate",
                        lambda model, encoders, *a, **k: evaluated.append(sorted(encoders)) or real(model, encoders,
                                                                                                 *a, **k))
    resumed = bench.measure(tiny_model, settings, tmp_path, resume=True, **run)
    assert evaluated == [["advunlearn_s1", "esd_s1"]]
    assert _json(resumed["results"]) == _json(full["results"])  # seed 1 trained again gives the same figures
    timing = resumed["timings"]["circle"]
    assert set(timing["runs"]) == {"esd_s1", "advunlearn_s1"}  # seed 0's encoders were not needed
    assert sorted(p.name for p in (tmp_path / "circle" / "encoders").iterdir()) == [
        "advunlearn_s1.safetensors", "esd_s1.safetensors"]
    assert [p.get("resumed", False) for p in timing["parts"]] == [True, False]
    assert timing["parts"][0]["cpu"] == full["timings"]["circle"]["parts"][0]["cpu"]  # the earlier run's figure
    # a part evaluated with other settings (here its saved prompts were changed) is refused with the difference
    saved = json.loads((parts / "part_s0.json").read_text())
    saved["settings"]["part"]["prompts"][0] = "another prompt"
    saved["fingerprint"] = bench.store.fingerprint(saved["settings"])
    (parts / "part_s0.json").write_text(json.dumps(saved))
    (tmp_path / "circle" / "result.json").unlink()
    with pytest.raises(ErasureError, match=r"part_s0\.json was made with other settings \(part\.prompts"):
        bench.measure(tiny_model, settings, tmp_path, resume=True, **run)


def test_other_settings_or_an_occupied_out_are_refused(tiny_model, tmp_path, capsys):
    from erasure_core.errors import ErasureError

    bench = _bench()
    settings = _tiny_settings(bench, training_seeds=(0,))
    run = dict(judge_for=red_judge, retain_check_for=half_right_check, log=lambda msg: None)
    bench.measure(tiny_model, settings, tmp_path, **run)
    with pytest.raises(ErasureError, match="already holds benchmark results .*pass --resume .* or another --out"):
        bench.measure(tiny_model, settings, tmp_path, **run)
    other = _tiny_settings(bench, training_seeds=(0,))
    other.prompts = 3
    with pytest.raises(ErasureError, match=r"other settings \(settings\.prompts: 2 in OUT, 3 now\)"):
        bench.measure(tiny_model, other, tmp_path, resume=True, **run)
    # an encoder trained with another erase config is never reused
    config = bench.demo_erase_config("esd", 0, settings.demo, "circle").to_dict()
    path = tmp_path / "circle" / "encoders" / "esd_s0.safetensors"
    assert bench.store.load_trained_encoder(path, config, tiny_model) is not None
    with pytest.raises(ErasureError, match="iterations: 2 in OUT, 3 now"):
        bench.store.load_trained_encoder(path, {**config, "iterations": 3}, tiny_model)
    # the command line: exit 2 with the differences named (here the model and the sizes), no traceback
    with pytest.raises(SystemExit) as exited:
        bench.main(["--out", str(tmp_path), "--resume", "--concepts", "circle", "--training-seeds", "0"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "error: the run in" in err and "model.name: 'tiny' in OUT, 'demo' now" in err


def test_a_finished_concept_made_with_other_settings_is_refused(tmp_path):
    """A concept's result.json is reused only under the settings it was made with (its fingerprint): another
    erase config (a preset changed since, say) is refused with the difference named, never mixed in."""
    from erasure_core.errors import ErasureError

    store = _bench().store
    record = {"concept": "red", "erase_configs": {"esd_s0": {"lr": 0.001, "layers": [0, 1]}}}
    store.save_result(tmp_path / "red", record, {"esd": {"pre_attack": 1}}, {"cpu": 1.0})
    assert store.load_result(tmp_path / "red", json.loads(json.dumps(record)))["results"] == {"esd": {"pre_attack": 1}}
    assert store.load_result(tmp_path / "circle", record) is None  # not finished yet
    changed = {"concept": "red", "erase_configs": {"esd_s0": {"lr": 0.003, "layers": [0, 1]}}}
    with pytest.raises(ErasureError, match=r"erase_configs\.esd_s0\.lr: 0\.001 in OUT, 0\.003 now"):
        store.load_result(tmp_path / "red", changed)
    (tmp_path / "run.json").unlink(missing_ok=True)
    with pytest.raises(ErasureError, match="holds results but no run.json"):
        store.open_run(tmp_path, {"settings": {}}, resume=True)


def test_an_option_added_since_reads_as_its_default_in_saved_work(tiny_model, tmp_path):
    """Saved work from before an erase option existed (here retain_priority, taken out of the saved configs as
    older code wrote them) is reused while the option is at its default, and refused, naming it, when it is not."""
    from erasure_core.errors import ErasureError

    bench = _bench()
    store = bench.store
    config = bench.demo_erase_config("esd", 0, _tiny_settings(bench).demo, "circle").to_dict()
    older = {k: v for k, v in config.items() if k != "retain_priority"}
    record = {"concept": "red", "erase_configs": {"esd_s0": older}}
    store.save_result(tmp_path / "red", record, {"esd": {"pre_attack": 1}}, {"cpu": 1.0})
    now = {"concept": "red", "erase_configs": {"esd_s0": config}}
    assert store.load_result(tmp_path / "red", now)["results"] == {"esd": {"pre_attack": 1}}
    changed = {"concept": "red", "erase_configs": {"esd_s0": {**config, "retain_priority": 0.5}}}
    with pytest.raises(ErasureError, match=r"erase_configs\.esd_s0\.retain_priority: 0\.0 in OUT, 0\.5 now"):
        store.load_result(tmp_path / "red", changed)
    # the same for a saved encoder
    path = tmp_path / "esd_s0.safetensors"
    store.save_trained_encoder(path, tiny_model.text_encoder, older, {"seconds": 1.0})
    assert store.load_trained_encoder(path, config, tiny_model) is not None
    with pytest.raises(ErasureError, match="retain_priority: 0.0 in OUT, 0.5 now"):
        store.load_trained_encoder(path, {**config, "retain_priority": 0.5}, tiny_model)
    # a file whose settings were edited without its fingerprint is refused as such
    saved = json.loads((tmp_path / "red" / "result.json").read_text())
    saved["settings"]["concept"] = "blue"
    (tmp_path / "red" / "result.json").write_text(json.dumps(saved))
    with pytest.raises(ErasureError, match="does not match its own settings"):
        store.load_result(tmp_path / "red", now)


def test_split_cases_give_each_training_seed_its_own_prompts_and_pool_them(tiny_model, tmp_path):
    """With several training seeds (the default), seed i's ESD and AdvUnlearn are evaluated on prompts i, i + n...:
    the shares are disjoint and cover every case once; a cell pools them (N = all cases, not cases x seeds) and the
    original is measured on every share."""
    bench = _bench()
    settings = _tiny_settings(bench)
    settings.prompts = 4
    efficacy = bench.measure(tiny_model, settings, tmp_path, judge_for=red_judge, retain_check_for=half_right_check,
                             log=lambda msg: None)
    assert efficacy["split_cases"] and efficacy["cases_per_cell"] == 8
    seen = {}
    for seed in (0, 1):
        report = json.loads((tmp_path / "circle" / f"seed{seed}" / "report.json").read_text())
        assert set(report["encoders"]) == {"original", f"esd_s{seed}", f"advunlearn_s{seed}"}
        seen[seed] = {(c["prompt"], c["seed"]) for c in report["cases"]}
        assert len(seen[seed]) == 4  # 2 prompts x 2 generation seeds, the same for ESD and AdvUnlearn
    assert not seen[0] & seen[1]
    for name, entry in efficacy["results"]["circle"].items():
        for r in [entry["pre_attack"], *entry["post_attack"].values(), entry["utility"]["retain_accuracy"]]:
            assert r["n"] == 8 and [s["n"] for s in r["per_seed"]] == [4, 4]
            assert sum(s["successes"] for s in r["per_seed"]) == r["successes"]
    # the curve's extra budget on the first 16 x 4 / 64... here curve_cases 64 >= 8 cases: every case
    assert [p["n"] for p in efficacy["results"]["circle"]["advunlearn"]["robustness_curve"]] == [8, 8, 8, 8]
    table = bench.format_per_seed(efficacy["results"])
    assert "4 4" in table and "between seeds" in table


def _rate(successes, n=100):
    return {"rate": successes / n, "successes": successes, "n": n, "low": 0.0, "high": 1.0}


def _encoder(pre, post, retain, curve):
    return {"pre_attack": _rate(pre), "post_attack": {"soft_prompt": _rate(post[0]), "concept_vector": _rate(post[1])},
            "utility": {"retain_accuracy": _rate(retain)},
            "robustness_curve": [{"epsilon": e, **_rate(s)} for e, s in zip((0.0, 1.0, None), curve)]}


def _assert_refused_before_out(bench, model, settings, out, message):
    from erasure_core.errors import ErasureError

    with pytest.raises(ErasureError, match=message):
        bench.measure(model, settings, out, judge_for=red_judge, retain_check_for=half_right_check,
                      log=lambda msg: None)
    assert not out.exists()


@pytest.mark.parametrize("option, message", [
    ({"attack_restart_every": -1}, "attack_restart_every must be >= 0, got -1"),
    # valid for any encoder alone, out of range for this one: only the model can say so
    ({"layers": "7"}, r"layer index\(es\) \[7\] out of range: this encoder has layers 0..1"),
])
def test_a_bad_erase_option_is_refused_before_out_is_written(tiny_model, tmp_path, option, message):
    bench = _bench()
    settings = _tiny_settings(bench)
    settings.demo.erase.update(option)
    _assert_refused_before_out(bench, tiny_model, settings, tmp_path / "out", message)


@pytest.mark.parametrize("probe, option, message", [
    ("soft_prompt", {"points": 0}, "trajectories, points and sampling_steps >= 1"),
    ("unlearndiffatk", {"timesteps": (0, 5000)},
     r"timesteps must be a non-empty list in \[0, 1000\); got bad values \[5000\]"),
    ("concept_vector", {"strengths": ()}, "needs at least one strength"),
])
def test_a_bad_probe_option_is_refused_before_out_is_written(tiny_model, tmp_path, probe, option, message):
    """A probe checks its settings when it runs, after training; the run checks them before writing anything."""
    bench = _bench()
    settings = _tiny_settings(bench)
    settings.demo.probes[probe] = {**settings.demo.probes.get(probe, {}), **option}
    _assert_refused_before_out(bench, tiny_model, settings, tmp_path / "out", message)


def test_concept_on_retain_is_pooled_only_where_every_seed_measured_it():
    """Parts saved before the field existed lack it: a pool over some seeds only would not be the run's figure."""
    bench = _bench()
    rate = lambda s, n: {"rate": s / n, "successes": s, "n": n}  # noqa: E731
    both = [{"retain_accuracy": rate(80, 88), "concept_on_retain": rate(3, 88)},
            {"retain_accuracy": rate(70, 84), "concept_on_retain": rate(1, 84)}]
    pooled = bench._pooled_utility(both)
    assert (pooled["concept_on_retain"]["successes"], pooled["concept_on_retain"]["n"]) == (4, 172)
    older = [both[0], {"retain_accuracy": rate(70, 84)}]
    assert set(bench._pooled_utility(older)) == {"retain_accuracy"}


def test_markdown_tables_carry_the_same_cells_as_the_text_tables():
    bench = _bench()
    rate = lambda s, n: {"rate": s / n, "successes": s, "n": n, "per_seed": [{"successes": s, "n": n, "rate": s / n}]}  # noqa: E731
    entry = {"pre_attack": rate(2, 256), "post_attack": {"soft_prompt": rate(81, 256)},
             "stress_attack": {"soft_prompt_unbounded": rate(110, 256)},
             "utility": {"retain_accuracy": rate(223, 256)},
             "robustness_curve": [{"epsilon": None, "probe": "soft_prompt_unbounded", **rate(110, 256)}]}
    results = {"square": {"advunlearn": entry}}
    lines = bench.format_table(results, markdown=True).splitlines()
    assert lines[0] == ("| concept | encoder | pre-ASR | post soft_prompt | STRESS soft_prompt_unbounded | "
                        "retain acc |")
    assert lines[1] == "|---|---|---|---|---|---|"
    assert lines[2] == ("| square | advunlearn | 0.01 [0.00, 0.03] (2/256) | 0.32 [0.26, 0.38] (81/256) | "
                        "0.43 [0.37, 0.49] (110/256) | 0.87 [0.82, 0.91] (223/256) |")
    text = bench.format_table(results)
    assert "0.32 [0.26, 0.38] (81/256)" in text and "|" not in text
    assert bench.format_curves(results, markdown=True).splitlines()[2] == "| square | advunlearn | 0.43 (110/256) |"
    assert "| square | advunlearn | 2 | 81 | 223 | 256 |" in bench.format_per_seed(results, markdown=True)


def test_targets_are_judged_from_the_pooled_figures():
    sys.path.insert(0, str(BENCH.parent))
    from efficacy_targets import format_verdicts, verdicts

    targets = {"pre_attack_max": 0.02, "post_attack_max": 0.10, "retain_drop_max": 0.05, "esd_post_attack_min": 0.40}
    original = _encoder(100, (100, 100), 98, (100, 100, 100))
    results = {
        # every target met: 2/100 pre-attack is on the line, retain 5 points below the original is too
        "held": {"original": original, "esd": _encoder(50, (90, 40), 95, (50, 90, 95)),
                 "advunlearn": _encoder(2, (10, 3), 93, (2, 10, 20))},
        # every target missed: the worst probe is named, ESD's weakest probe too, the curve's crossing budgets
        "leaks": {"original": original, "esd": _encoder(50, (90, 39), 95, (50, 90, 15)),
                  "advunlearn": _encoder(3, (4, 11), 92, (3, 95, 20))},
    }
    checks = verdicts(results, targets)
    assert all(v["met"] for v in checks["held"].values())
    leaks = checks["leaks"]
    assert not any(v["met"] for v in leaks.values())
    assert leaks["post_attack"]["probe"] == "concept_vector" and leaks["post_attack"]["successes"] == 11
    assert leaks["esd_broken"]["probe"] == "concept_vector" and leaks["retain"]["drop"] == pytest.approx(0.06)
    assert leaks["below_esd_curve"]["above_at"] == [1.0, None]
    text = format_verdicts(checks)
    assert "meets every target on 1 of 2" in text and "MISSED (concept_vector 11/100 = 0.110)" in text
    # without ESD or the original, the targets that need them are left out rather than guessed
    alone = verdicts({"x": {"advunlearn": results["held"]["advunlearn"]}}, targets)
    assert set(alone["x"]) == {"pre_attack", "post_attack"}


def test_an_erase_option_at_the_presets_value_resumes_the_run_made_without_it(tiny_model, tmp_path):
    """Erase configs are compared as they take effect: a run resumed with an option spelled out at the preset's
    value reuses everything; a value that changes the config is refused at the concept, naming the option."""
    from erasure_core.errors import ErasureError

    bench = _bench()
    def tiny(**erase):  # AdvUnlearn alone: an --erase-option applies to ESD too, whose baseline has it off
        settings = _tiny_settings(bench, training_seeds=(0,))
        settings.methods = ("advunlearn",)
        settings.demo.erase.update(erase)
        return settings

    run = dict(judge_for=red_judge, retain_check_for=half_right_check, log=lambda msg: None)
    first = bench.measure(tiny_model, tiny(), tmp_path, **run)
    again = bench.measure(tiny_model, tiny(project_conflicts=True), tmp_path, resume=True, **run)  # the preset's value
    assert again["resumed_concepts"] == ["circle"] and _json(again["results"]) == _json(first["results"])
    other = tiny(project_conflicts=False)
    with pytest.raises(ErasureError, match=r"advunlearn_s0\.project_conflicts: True in OUT, False now"):
        bench.measure(tiny_model, other, tmp_path, resume=True, **run)


@pytest.mark.parametrize("parent_alive", [True, False])
def test_a_worker_ends_when_the_main_process_it_was_given_is_gone(parent_alive):
    """A worker watches the pid the main process gave it, not the parent it finds when it starts: one whose main
    process died while it loaded its model found pid 1 there and trained on unwatched (session 33)."""
    import os
    import subprocess

    parent = os.getpid() if parent_alive else 2**22 + 12345  # no process has the second pid (pid_max 2^22)
    code = (f"import sys, time; sys.path.insert(0, {str(BENCH.parent)!r}); import demo_efficacy as b; "
            f"b._exit_with_parent({parent}); print('watching', flush=True); time.sleep(30)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        child.stdout.readline()
        if parent_alive:
            with pytest.raises(subprocess.TimeoutExpired):
                child.wait(timeout=6)  # a watch round is 5 s: still running after it
        else:
            assert child.wait(timeout=20) == 1 and "Traceback" not in child.stderr.read()  # the watch, no crash
    finally:
        child.kill()
        child.wait()
