"""bench/erase_cost.py's count formula against the UNet evaluations `erase` actually makes (tiny model, seconds):
the cost claim ("N x fewer evaluations than the public code") rests on the formula, so every term must be in it."""

import importlib.util
import sys
from pathlib import Path

import pytest

from erasure_core.models import build_tiny_model
from erasure_core.training import EraseConfig, erase

BENCH = Path(__file__).resolve().parents[2] / "bench" / "erase_cost.py"
FAST = dict(iterations=7, warmup_iterations=2, attack_steps=3, num_ddim_steps=6, concept_pool_size=2,
            retain_pool_size=3, retain_batch=2, concept_batch=3, attack_batch=2, checkpoint_every=0,
            diagnostics_every=0, seed=0)
PROMPTS = ["a red circle", "a blue square", "a circle next to a tree", "a green star", "a yellow triangle"]


def _bench():
    spec = importlib.util.spec_from_file_location("erase_cost", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


CONFIGS = {
    "paper-like": dict(),
    "attack every 2nd, no plain": dict(attack_every=2, plain_weight=0.0),
    "captions": dict(caption_weight=1.0, contrast_words=["square", "star"]),
    "demo-like": dict(caption_weight=1.0, contrast_words=["square", "star"], attack_captions=True,
                      vector_weight=1.0, plain_contrast=True, attack_every=2),
    "early retain": dict(retain_early_weight=1.0),
    "restarts": dict(caption_weight=1.0, contrast_words=["square"], attack_captions=True, attack_restarts=2),
    "caption trajectories": dict(caption_weight=1.0, contrast_words=["square"], concept_pool_captions=0.5),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_the_count_formula_equals_the_evaluations_erase_makes(name):
    config = EraseConfig(**{**FAST, "retain_prompts": PROMPTS, **CONFIGS[name]})
    result = erase(build_tiny_model(seed=0), ["circle"], config)
    counted = _bench().our_counts(config, concepts=1)["per_run"]
    assert result.unet_evaluations == counted, (name, result.unet_evaluations, counted)


def test_the_caption_terms_are_counted():
    """Without the caption terms in the formula the demo preset's count would be low (it was, before)."""
    bench = _bench()
    base = EraseConfig(**{**FAST, "retain_prompts": PROMPTS})
    demo = EraseConfig(**{**FAST, "retain_prompts": PROMPTS, **CONFIGS["demo-like"]})
    assert bench.our_counts(demo)["per_run"] > bench.our_counts(base)["per_run"]
    assert bench.our_counts(demo)["with_backward_per_run"] > bench.our_counts(base)["with_backward_per_run"]


def test_a_bad_json_path_is_refused_before_any_measuring(tmp_path, capsys, monkeypatch):
    bench = _bench()
    monkeypatch.setattr(bench, "build_tiny_model", lambda *a, **k: pytest.fail("measured before checking --json"))
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--json", str(tmp_path)])  # a folder, not a file
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "it is a folder" in err and str(tmp_path) in err
