"""bench/seed_selection.py: a choice made on one fold of the prompts is judged on the others only, and input
that did not meet the same cases is refused before anything is written."""

import json

import pytest

PROMPTS = ["a", "b", "c", "d", "e", "f", "a", "h", "i"]  # "a" twice, at 0 and 6: one share, one cluster


def _share(successes: list[int], prompts: list[str], j: int, shares: int) -> dict:
    """A share summary as seed_cross writes it: one cluster per prompt text, in order of first appearance."""
    clusters: dict[str, list[int]] = {}
    for i in range(j, len(prompts), shares):
        c = clusters.setdefault(prompts[i], [0, 0])
        c[0] += successes[i]
        c[1] += 1
    rate = {"successes": sum(c[0] for c in clusters.values()), "n": sum(c[1] for c in clusters.values()),
            "clusters": list(clusters.values())}
    kept = {**rate, "successes": rate["n"], "clusters": [[n, n] for _, n in rate["clusters"]]}  # retain: all kept
    return {"post_attack": {"soft_prompt": rate}, "retain_accuracy": kept}


def _file(tmp_path, name: str, leaks: dict[int, list[int]], concept: str = "square", shares: int = 3):
    settings = {"prompts": len(PROMPTS), "generation_seeds": [0], "prompt_seed": 0, "demo": {"steps": 20}}
    runs = [{"seed": seed, "erase_config": {"seed": seed, "lr": 1e-3},
             "encoder": [_share(s, PROMPTS, j, shares) for j in range(shares)]} for seed, s in leaks.items()]
    data = {"schema": "bench.seed_cross/1", "concept": concept, "probes": ["soft_prompt"], "settings": settings,
            "model": {"name": "demo"}, "prompts": PROMPTS, "retain_prompts": PROMPTS, "runs": runs}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def test_the_choice_is_judged_on_the_folds_it_did_not_see(tmp_path, bench_script):
    script = bench_script("seed_selection")
    fold0 = [i % 3 == 0 for i in range(len(PROMPTS))]
    # seed 0 holds on fold 0 and leaks everywhere else; seed 2 the reverse; seed 1 leaks on prompts 0 and 1
    leaks = {0: [0 if f else 1 for f in fold0], 1: [1 if i in (0, 1) else 0 for i in range(len(PROMPTS))],
             2: [1 if f else 0 for f in fold0]}
    shared, encoders = script.load_encoders([_file(tmp_path, "x", leaks)], "soft_prompt", folds=3)
    assert encoders[0]["probe"] == [(0, 3), (3, 3), (3, 3)]  # "a"'s two cases stay in fold 0
    choice = script.choice_on_fold(encoders, [0, 1, 2], fold=0, folds=3)
    assert choice["chosen"] == 0  # the best on fold 0 ...
    assert choice["held_out"]["0"]["probe"] == {"successes": 6, "n": 6, "rate": 1.0}  # ... judged on folds 1-2 alone
    assert choice["held_out_best"] == 2
    result = script.select(encoders, group_size=3, folds=3)
    # fold 1: seed 2 alone holds; fold 2: seeds 1 and 2 both hold, and the tie goes to the lower seed
    assert [c["chosen"] for c in result["choices"]] == [0, 2, 1]
    assert result["each_encoder"]["1"]["probe"]["successes"] == 2


def test_input_that_did_not_meet_the_same_cases_is_refused_and_nothing_written(tmp_path, bench_script):
    main = bench_script("seed_selection").main
    a = _file(tmp_path, "a", {0: [0] * 9, 1: [0] * 9, 2: [1] * 9})
    out = tmp_path / "out" / "sel.json"
    cases = [([str(a), str(_file(tmp_path, "b", {3: [0] * 9}, concept="circle"))], "differs from .* in concept"),
             ([str(a), str(_file(tmp_path, "c", {2: [0] * 9}))], "training seed 2 is in more than one file"),
             ([str(a), str(_file(tmp_path, "d", {3: [0] * 9}))], "4 training seeds do not make groups of 3"),
             ([str(_file(tmp_path, "e", {0: [0] * 9}, shares=2))], "2 shares do not split into 3 folds"),
             ([str(tmp_path / "missing.json")], "no seed_cross.json at")]
    (tmp_path / "garbled.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    cases += [([str(tmp_path / "garbled.json")], "cannot be read as JSON"),
              ([str(tmp_path / "list.json")], "is not a seed_cross.py result")]
    for files, message in cases:
        with pytest.raises(SystemExit, match=message):
            main([*files, "--out", str(out)])
    assert not (tmp_path / "out").exists()
    main([str(a), "--out", str(out)])
    written = json.loads(out.read_text())
    assert [c["chosen"] for c in written["choices"]] == [0, 0, 0]
    with pytest.raises(SystemExit, match="exists: choose another --out"):
        main([str(a), "--out", str(out)])
