"""bench/judge_audit.py: the tally of a judge's calls against a person's labels, and the shipped audit set."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _audit():
    spec = importlib.util.spec_from_file_location("judge_audit", BENCH / "judge_audit.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_tally_counts_each_call_against_the_label_and_keeps_ambiguous_apart():
    labels = ["concept", "concept", "not concept", "not concept", "ambiguous", "ambiguous", "not concept"]
    called = [True, False, True, False, True, False, True]
    groups = ["a", "a", "a", "a", "a", "a", "b"]
    assert _audit().tally(labels, called, groups) == {
        "a": dict(true_pos=1, false_neg=1, false_pos=1, true_neg=1, ambiguous_called=1, ambiguous_not_called=1),
        "b": dict(true_pos=0, false_neg=0, false_pos=1, true_neg=0, ambiguous_called=0, ambiguous_not_called=0)}
    with pytest.raises(ValueError, match="unknown label"):
        _audit().tally(["maybe"], [True], ["a"])


def test_every_audit_set_names_existing_images_with_known_labels():
    sets = [p for p in (BENCH / "judge_audit").iterdir() if (p / "labels.json").is_file()]
    assert sets
    for folder in sets:
        meta = json.loads((folder / "labels.json").read_text())
        allowed = {meta["concept"], f"not {meta['concept']}", "ambiguous"}
        assert meta["images"]
        for row in meta["images"]:
            assert row["label"] in allowed and (folder / row["file"]).is_file(), row
