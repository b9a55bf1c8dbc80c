"""bench/seed_cross.py: each encoder's rates split by the benchmark's shares of the prompts, the cross table, and
bad input refused before any training."""

import pytest


def _report(successes: dict[int, bool], retained: dict[int, bool], prompts: int, seeds: int) -> dict:
    """An evaluate() report for one encoder "e": case i is prompt i // seeds (as evaluate orders them); the cases
    in `successes` succeed before the attack (True) or under the probe only (False), the rest hold."""
    cases = [{"index": i, "prompt": f"p{i // seeds}", "seed": i % seeds} for i in range(prompts * seeds)]
    records = [{"index": i, "plain": {"success": successes.get(i) is True},
                "probes": {"soft_prompt": {"success": i in successes}}} for i in range(len(cases))]
    retain = [{"index": i, "retain_correct": retained.get(i, True), "shows_concept": False}
              for i in range(len(cases))]
    return {"cases": cases, "retain_cases": cases, "encoders": {"e": {"cases": records, "retain": retain}}}


def test_each_share_counts_its_own_prompts_cases(bench_script):
    cross = bench_script("seed_cross")
    # 6 prompts x 2 seeds, 3 shares: share 0 = prompts 0 and 3 (cases 0, 1, 6, 7), share 1 = prompts 1 and 4 ...
    report = _report({0: True, 7: False, 3: False, 9: False}, {2: False, 11: False}, prompts=6, seeds=2)
    shares = cross.share_summaries(report, "e", ("soft_prompt",), shares=3, seeds=2)
    pre = [s["pre_attack"]["successes"] for s in shares]
    post = [s["post_attack"]["soft_prompt"]["successes"] for s in shares]
    retain = [s["retain_accuracy"]["successes"] for s in shares]
    assert pre == [1, 0, 0]  # case 0 (prompt 0, share 0)
    assert post == [2, 2, 0]  # cases 0 and 7 (share 0: prompt 3), 3 and 9 (prompts 1 and 4: share 1)
    assert retain == [4, 3, 3]  # case 2 (prompt 1, share 1), case 11 (prompt 5, share 2)
    assert all(s["pre_attack"]["n"] == 4 for s in shares)
    # the clusters are the share's prompts, 2 cases each
    assert shares[0]["post_attack"]["soft_prompt"]["clusters"] == [[1, 2], [1, 2]]


def test_the_table_pools_rows_and_columns(bench_script):
    cross = bench_script("seed_cross")
    report = _report({0: False, 1: False, 2: False}, {}, prompts=3, seeds=4)
    shares = cross.share_summaries(report, "e", ("soft_prompt",), shares=3, seeds=4)
    runs = [{"seed": s, "encoder": shares, "original": shares} for s in (0, 1, 2)]
    table = cross.format_cross(runs, "soft_prompt")
    rows = table.splitlines()
    assert "share 0 (seed 0's)" in rows[0]
    assert rows[1].startswith("advunlearn seed 0") and "(3/4)" in rows[1] and "(3/12)" in rows[1]
    assert "(9/12)" in rows[4] and "(9/36)" in rows[4]  # every seed's encoder on share 0, and on all


def test_unknown_probe_concept_and_an_existing_result_are_refused(tmp_path, capsys, bench_script):
    cross = bench_script("seed_cross")
    with pytest.raises(SystemExit, match="unknown probe.*choose from soft_prompt"):
        cross.main(["--concept", "square", "--probes", "soft_promt", "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="not a value of the demo"):
        cross.main(["--concept", "squares", "--out", str(tmp_path / "b")])
    with pytest.raises(SystemExit, match="2"):  # argparse's usage error
        # an unknown concept too: were the repeat let through, the run would stop there, not train
        cross.main(["--concept", "squares", "--training-seeds", "0,0", "--out", str(tmp_path / "d")])
    assert "each seed once" in capsys.readouterr().err
    (tmp_path / "blocker").write_text("")
    with pytest.raises(SystemExit, match="is a file, not a folder"):
        cross.main(["--concept", "square", "--out", str(tmp_path / "blocker" / "run")])
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "seed_cross.json").write_text("{}")
    with pytest.raises(SystemExit, match="exists: choose another --out"):
        cross.main(["--concept", "square", "--out", str(tmp_path / "c")])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "d").exists()
    assert (tmp_path / "c" / "seed_cross.json").read_text() == "{}"
