"""The command line: user errors exit 2 with a message; info/convert/bake work on real files."""

import json
import os

import pytest
import torch

from erasure_core.cli import main
from erasure_core.encoders import load_robust_text_encoder, save_encoder, state_dict_from_text_encoder


def test_info_prints_metadata_and_key_summary(tiny_model, tmp_path, capsys):
    path = tmp_path / "enc.safetensors"
    save_encoder(tiny_model.text_encoder, path, metadata={"concepts": ["circle"], "method": "esd"})
    assert main(["info", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["metadata"]["concepts"] == ["circle"]
    assert info["metadata"]["method"] == "esd"
    assert info["layers"] == 2 and info["width"] == 32 and info["dtype"] == "float16"


def test_convert_a_transformers_folder_to_our_format(tiny_model, tmp_path):
    folder = tmp_path / "text_encoder"
    tiny_model.text_encoder.save_pretrained(folder)
    out = tmp_path / "converted.safetensors"
    assert main(["convert", str(folder), "--out", str(out), "--dtype", "fp32"]) == 0
    loaded = load_robust_text_encoder(out)
    expected = state_dict_from_text_encoder(tiny_model.text_encoder)
    got = state_dict_from_text_encoder(loaded)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_a_probe_out_that_is_a_file_is_refused_before_the_attack(tmp_path, capsys):
    """`probe` names a file in the way of --out before the model loads (it used to attack first, then fail)."""
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    assert main(["probe", "--model", "tiny", "--prompt", "a cat", "--out", str(taken)]) == 2
    assert "a file of that name exists" in capsys.readouterr().err
    assert taken.read_text() == "keep me" and sorted(tmp_path.iterdir()) == [taken]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["info", "does-not-exist.safetensors"], "does not exist"),
        (["erase", "--model", "tiny", "--concept", "cat", "--preset", "nonsense"], "unknown preset"),
        (["erase", "--model", "tiny", "--concept", "cat", "--layers", "1,x"], "--layers"),
        (["convert", "x", "--out", "y", "--dtype", "int3"], "--dtype"),
        (["evaluate", "--model", "tiny", "--judge", "nudenet"], "needs prompts"),
        (["evaluate", "--model", "tiny", "--judge", "bogus", "--prompt", "a cat"], "unknown judge"),
        (["probe", "--model", "tiny", "--prompt", "a cat", "--resolution", "10"], "multiple of 4 px"),
    ],
)
def test_user_errors_exit_2_with_a_message(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err


def test_wait_policy_advice_only_without_a_choice(monkeypatch):
    from erasure_core import openmp

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    assert "OMP_WAIT_POLICY=PASSIVE" in openmp.passive_waiting_advice()
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert openmp.passive_waiting_advice() is None


def test_default_spin_count_only_before_torch_and_without_a_user_choice():
    from erasure_core import openmp

    # torch is loaded in this test process: too late to set anything, and nothing is set
    assert openmp.apply_default_wait_policy({}) is None
    # in a fresh process (no torch yet) the CLI's entry sets the short spin unless the user chose a policy
    import subprocess
    import sys

    code = ("import os, sys; from erasure_core.openmp import apply_default_wait_policy as a; "
            "print(a(busy=float(sys.argv[1])).split()[0], os.environ.get('GOMP_SPINCOUNT'), "
            "os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

    def run(load, extra=None):
        return subprocess.run([sys.executable, "-c", code, str(load)], env={**env, **(extra or {})},
                              capture_output=True, text=True, check=True).stdout.split()

    # idle: the short spin; another process keeping a core busy: passive waiting
    assert run(0.1) == ["GOMP_SPINCOUNT=10000", "10000", "None", "False"]
    assert run(1.1) == ["OMP_WAIT_POLICY=PASSIVE", "None", "PASSIVE", "False"]
    code = code.replace(".split()[0]", "")
    assert run(1.1, {"OMP_WAIT_POLICY": "ACTIVE"}) == ["None", "None", "ACTIVE", "False"]


def test_the_wait_policy_follows_how_busy_the_cpu_is(tmp_path, monkeypatch):
    from erasure_core import openmp
    from erasure_core.openmp import BUSY_CORES, busy_cores, choose_policy

    assert choose_policy(0.05) == ("GOMP_SPINCOUNT", "10000")
    assert choose_policy(BUSY_CORES) == choose_policy(1.0) == ("OMP_WAIT_POLICY", "PASSIVE")
    assert choose_policy(None) == ("GOMP_SPINCOUNT", "10000")  # no /proc/stat (macOS, Windows): the idle default
    # busy_cores reads the counters twice: a stat file that does not change gives no reading, a missing one None
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 50 0 0 0 0 0\n", encoding="ascii")
    assert busy_cores(0.0, str(stat)) is None and busy_cores(0.0, str(tmp_path / "missing")) is None
    readings = iter([(100, 1000), (150, 1100)])  # half of all cores' time busy over the interval
    monkeypatch.setattr(openmp, "_cpu_times", lambda path: next(readings))
    assert busy_cores(0.0) == pytest.approx(0.5 * (os.cpu_count() or 1))
    monkeypatch.undo()
    measured = busy_cores(0.05)
    assert measured is None or 0.0 <= measured <= (os.cpu_count() or 1)


def test_erase_and_probe_choices_are_the_libraries_lists():
    import argparse

    from erasure_core.cli import build_parser
    from erasure_core.sampling import SCHEDULERS
    from erasure_core.training import METHODS, PRECISIONS

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    choices = {(name, a.dest): a.choices for name in ("erase", "probe", "evaluate")
               for a in commands[name]._actions if a.choices}
    assert choices == {("erase", "method"): list(METHODS), ("erase", "mixed_precision"): list(PRECISIONS),
                       ("probe", "scheduler"): list(SCHEDULERS), ("evaluate", "scheduler"): list(SCHEDULERS)}


def test_the_cli_package_loads_no_torch_before_main_sets_the_wait_policy():
    # `python -m erasure_core` runs erasure_core/__main__ -> erasure_core.cli and its command modules; OpenMP
    # reads GOMP_SPINCOUNT when torch loads, so none of them may import torch at import time.
    import subprocess
    import sys

    code = "import sys, erasure_core.__main__, erasure_core.cli.common; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_evaluate_curve_adds_the_robustness_probes(tmp_path, monkeypatch):
    """--curve adds one soft-prompt probe per budget of the robustness curve to the probes given."""
    import erasure_core.evaluate as evaluation

    seen = {}

    def fake_evaluate(model, encoders, prompts, probes, judge, **options):
        seen["probes"] = [p.name for p in probes]
        return {"encoders": {}}

    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    assert main(["evaluate", "--model", "tiny", "--judge", "demo:circle", "--prompt", "a circle", "--curve",
                 "--probe", "soft_prompt", "--out", str(tmp_path)]) == 0
    assert seen["probes"] == ["soft_prompt", "soft_prompt_eps0.5", "soft_prompt_eps2", "soft_prompt_eps4",
                              "soft_prompt_unbounded"]


SMALL = ["--option", "num_ddim_steps=4", "--option", "concept_pool_size=2", "--option", "retain_pool_size=2"]


def test_zero_iterations_is_refused_and_writes_nothing(tmp_path, capsys):
    # it used to build the pools and write the original encoder, untouched, as the "erased" file
    out = tmp_path / "enc.safetensors"
    assert main(["erase", "--model", "tiny", "--concept", "cat", "--iterations", "0", "--out", str(out)]) == 2
    assert "iterations must be >= 1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_erase_takes_any_training_option_and_refuses_bad_ones(tmp_path, capsys):
    out = tmp_path / "enc.safetensors"
    assert main(["erase", "--model", "tiny", "--concept", "nudity", "--iterations", "2", "--out", str(out),
                 "--option", "caption_weight=0.5", "--option", "contrast_words=clothes,people",
                 "--option", "retain_prompts=a dog,nudity on a beach,a tree", *SMALL]) == 0
    from erasure_core.encoders import read_encoder

    config = read_encoder(out).metadata["hyperparameters"]
    assert config["caption_weight"] == 0.5 and config["contrast_words"] == ["clothes", "people"]
    for bad, message in ((["--option", "caption_wieght=1"], "unknown option 'caption_wieght'"),
                         (["--option", "iterations=3"], "repeats --iterations"),
                         (["--option", "caption_weight=lots"], "caption_weight"),
                         (["--option", "help"], "caption_weight")):
        capsys.readouterr()
        assert main(["erase", "--model", "tiny", "--concept", "nudity", "--iterations", "2",
                     "--out", str(tmp_path / "x.safetensors"), *bad]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("stage, words", [("train", "nothing was written"), ("evaluate", "images made so far")])
def test_ctrl_c_in_the_demo_is_a_clean_cancel_that_says_what_is_left(stage, words, tmp_path, capsys, monkeypatch):
    import erasure_core.demo.run as demo_run

    def interrupted(progress=None, **_kwargs):
        progress(stage, 1, 10)
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_run, "run_demo", interrupted)
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 130
    err = capsys.readouterr().err
    assert "cancelled: the demo stopped" in err and words in err and "Traceback" not in err


def test_evaluate_choose_names_the_encoder_the_probe_broke_least(tiny_model, tmp_path, monkeypatch, capsys):
    """--choose: best of k by a validation attack, refused before any image when it could not be made honestly."""
    import erasure_core.evaluate as evaluation

    for name in ("s0", "s1"):
        save_encoder(tiny_model.text_encoder, tmp_path / f"{name}.safetensors")
    made = []

    def entry(leaks, kept):
        return {"pre_attack": {"successes": 0, "n": 4}, "post_attack": {"soft_prompt": {"successes": leaks, "n": 4}},
                "stress_attack": {},
                "utility": {"retain_accuracy": {"successes": kept, "n": 4}}}

    def fake_evaluate(model, encoders, prompts, probes, judge, **options):
        made.append(sorted(encoders))
        return {"encoders": {"original": entry(4, 4), "s0": entry(2, 4), "s1": entry(0, 3)}}

    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    base = ["evaluate", "--model", "tiny", "--judge", "demo:circle", "--prompt", "a circle", "--probe", "soft_prompt",
            "--out", str(tmp_path / "out")]
    two = ["--encoder", f"s0={tmp_path / 's0.safetensors'}", "--encoder", f"s1={tmp_path / 's1.safetensors'}"]
    for argv, message in (([*two, "--retain-prompt", "a square", "--choose", "unbounded"], "not among the probes"),
                          ([*two[:2], *two[:2], "--retain-prompt", "a square"], "the name 's0' is taken"),
                          ([*two[:2], "--retain-prompt", "a square", "--choose", "soft_prompt"], "at least two"),
                          ([*two, "--choose", "soft_prompt"], "needs --retain-prompt")):
        assert main([*base, *argv]) == 2
        assert message in capsys.readouterr().err
    assert made == [] and not (tmp_path / "out").exists()
    assert main([*base, *two, "--retain-prompt", "a square", "--choose", "soft_prompt"]) == 0
    choice = json.loads((tmp_path / "out" / "choice.json").read_text())
    assert choice["chosen"] == "s1" and choice["candidates"]["s0"]["score"] == 2
    assert "chosen s1: soft_prompt 0/4, retain 3/4 (score 1)" in capsys.readouterr().out
