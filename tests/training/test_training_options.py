"""The training options of issue 10: the empty-prompt anchor, the bounded and restarted attacker, several points
per step, the plain prompt after warm-up, retain selection by alignment, and the diagnostics in the history."""

import itertools

import pytest
import torch

from erasure_core.attacks.soft_prompt import typical_token_norm
from erasure_core.errors import ErasureCancelled, ErasureError
from erasure_core.latents import UNetRunner
from erasure_core.models import build_tiny_model
from erasure_core.sampling import encode_prompts
from erasure_core.training import EraseConfig, erase, read_checkpoint
from erasure_core.training.retain import concept_alignment, select_by_alignment

FAST = dict(iterations=6, warmup_iterations=2, attack_steps=3, num_ddim_steps=8, concept_pool_size=2,
            retain_pool_size=4, retain_batch=2, lr=3e-3, checkpoint_every=0, diagnostics_every=0)
# Every new option on at once (the resume and seeding tests must hold with all of them).
ALL_ON = dict(attack_epsilon=0.5, attack_restart_every=2, attack_restarts=2, attack_batch=2, concept_batch=2,
              plain_weight=1.0, anchor_weight=1.0, retain_max_alignment=1.5, diagnostics_every=2,
              retain_early_weight=1.0, retain_priority=0.5, attack_population=2)
RETAIN = ["a photo of a dog", "a photo of a cat", "a red car", "a tree", "a house"]


def _config(**overrides) -> EraseConfig:
    return EraseConfig(**{**FAST, "retain_prompts": RETAIN, **overrides})


def _uncond_distance(model, encoder) -> float:
    """How far the trained encoder's E("") moved from the original's (hidden states, mean squared)."""
    return float((encode_prompts(model, [""], encoder) - encode_prompts(model, [""])).pow(2).mean())


def test_anchor_keeps_the_empty_prompt_closer_to_the_original():
    config = dict(iterations=20, method="esd", lr=1e-2, diagnostics_every=20)
    free = erase(build_tiny_model(), ["nudity"], _config(**config, anchor_weight=0.0))
    anchored = erase(build_tiny_model(), ["nudity"], _config(**config, anchor_weight=1.0))
    model = build_tiny_model()
    assert _uncond_distance(model, free.text_encoder) > 0
    assert _uncond_distance(model, anchored.text_encoder) < 0.2 * _uncond_distance(model, free.text_encoder)
    # The logged drift (predictions for "", on fixed points) tells the same story.
    assert anchored.history[-1]["uncond_drift"] < 0.2 * free.history[-1]["uncond_drift"]
    assert "anchor_loss" in anchored.history[-1] and "anchor_loss" not in free.history[-1]


def test_bounded_attacker_stays_in_its_ball_and_restarts_reinitialise(tiny_model):
    unit = typical_token_norm(tiny_model.text_encoder)
    base = dict(iterations=6, warmup_iterations=1, attack_steps=0, attack_epsilon=0.5, diagnostics_every=1, attack_k=2)
    norms = lambda result: [h["adv_token_norm"] for h in result.history if "adv_token_norm" in h]  # noqa: E731
    # With no attack steps a warm-started attacker keeps its first start; a restarted one draws a new one each time
    # (unbounded here, so the random vocabulary rows keep their own norms).
    warm = erase(tiny_model, ["nudity"], _config(**{**base, "attack_restart_every": 0, "attack_epsilon": None}))
    fresh = erase(tiny_model, ["nudity"], _config(**{**base, "attack_restart_every": 1, "attack_epsilon": None}))
    assert len(set(norms(warm))) == 1 and len(set(norms(fresh))) == len(norms(fresh)) == 5
    every_other = erase(tiny_model, ["nudity"], _config(**{**base, "attack_restart_every": 2, "attack_epsilon": None}))
    assert norms(every_other)[0] == norms(every_other)[1] != norms(every_other)[2] == norms(every_other)[3]
    stepped = erase(tiny_model, ["nudity"], _config(**{**base, "attack_steps": 5, "attack_lr": 1.0}))
    assert max(norms(stepped)) <= 0.5 + 1e-4  # relative to the median token norm: never outside the budget
    unbounded = erase(tiny_model, ["nudity"], _config(**{**base, "attack_steps": 5, "attack_lr": 1.0,
                                                                     "attack_epsilon": None}))
    assert max(norms(unbounded)) > 0.5
    assert unit > 0


def test_a_population_keeps_its_token_sets_and_takes_them_in_turn(tiny_model):
    """attack_population 3, never restarted, no attack steps (so each set keeps its random start): the first three
    refreshes each draw a set of their own, the later ones continue those sets instead of drawing new ones."""
    base = dict(iterations=7, warmup_iterations=1, attack_steps=0, attack_restart_every=0, attack_epsilon=None,
                diagnostics_every=1, attack_k=2)
    norms = lambda result: [h["adv_token_norm"] for h in result.history if "adv_token_norm" in h]  # noqa: E731
    one = norms(erase(tiny_model, ["nudity"], _config(**base)))  # the mean norm over the stored sets
    three = norms(erase(tiny_model, ["nudity"], _config(**base, attack_population=3)))
    assert len(one) == len(three) == 6 and len(set(one)) == 1
    assert three[0] == one[0]  # the first set is the one a single-set attacker draws
    assert len(set(three[:3])) == 3 and three[2] == three[3] == three[4] == three[5]


def test_runs_are_seeded_with_every_option_on():
    runs = [erase(build_tiny_model(), ["nudity"], _config(**ALL_ON, seed=s))
            for s in (0, 0, 1)]
    weights = [r.text_encoder.state_dict() for r in runs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_resume_with_every_option_on_equals_uninterrupted_run(tmp_path):
    config = _config(**{**ALL_ON, "iterations": 7})
    straight = erase(build_tiny_model(), ["nudity", "Van Gogh"], config)
    reported, polls = [], itertools.count()
    ckpt = tmp_path / "run.safetensors"
    cancel = lambda: len(reported) >= 4 and next(polls) >= 3  # noqa: E731  (inside iteration 5's attack)
    with pytest.raises(ErasureCancelled):
        erase(build_tiny_model(), ["nudity", "Van Gogh"], config, checkpoint_path=ckpt,
              progress=lambda step, total, logs: reported.append(step), should_cancel=cancel)
    assert read_checkpoint(ckpt)[1]["step"] == 4
    resumed = erase(build_tiny_model(), ["nudity", "Van Gogh"], config, resume_from=ckpt)
    strip = lambda history: [{k: v for k, v in h.items() if k != "unet_evaluations"} for h in history]  # noqa: E731
    assert strip(resumed.history) == strip(straight.history)
    a, b = straight.text_encoder.state_dict(), resumed.text_encoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_diagnostics_are_logged_and_sensible():
    result = erase(build_tiny_model(), ["nudity"], _config(iterations=5, diagnostics_every=2, attack_epsilon=1.0))
    logged = [h["iteration"] for h in result.history if "uncond_drift" in h]
    assert logged == [2, 4, 5]  # every 2 iterations, and the last
    for h in result.history:
        if "uncond_drift" in h:
            assert h["uncond_drift"] >= 0 and h["concept_signal"] > 0 and h["plain_unlearn_loss"] > 0
            assert h["weight_change"] > 0
    changes = [h["weight_change"] for h in result.history if "weight_change" in h]
    assert changes == sorted(changes)  # a few Adam steps at a constant lr move the weights further and further
    assert "adv_token_norm" not in result.history[1] and 0 < result.history[-1]["adv_token_norm"] <= 1.0 + 1e-4
    # Diagnostics have their own evaluation counter: the training's count does not include them.
    assert result.metadata["diagnostic_evaluations"] > 0
    quiet = erase(build_tiny_model(), ["nudity"], _config(iterations=5, attack_epsilon=1.0))
    assert quiet.unet_evaluations == result.unet_evaluations
    assert not any("uncond_drift" in h for h in quiet.history)


def test_alignment_is_one_for_the_concept_itself_and_zero_for_the_empty_prompt(tiny_model):
    conds = encode_prompts(tiny_model, ["nudity", "", "a photo of a dog"]).float()
    uncond = encode_prompts(tiny_model, [""]).float()
    alignment = concept_alignment(tiny_model, UNetRunner(tiny_model.unet), conds[:1], uncond, conds,
                                  num_inference_steps=8, guidance=3.0, seed=0)
    assert alignment.shape == (3, 1)
    assert alignment[0, 0].item() == pytest.approx(1.0, abs=1e-4)
    assert alignment[1, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert select_by_alignment(["c", "", "dog"], alignment, 0.5) == [1] + ([2] if alignment[2, 0] <= 0.5 else [])
    assert select_by_alignment(["c", "", "dog"], alignment, None) == [0, 1, 2]
    with pytest.raises(ErasureError, match="every retain prompt carries the concept"):
        select_by_alignment(["c"], alignment[:1], 0.5)


def test_retain_selection_drops_the_prompts_whose_alignment_exceeds_the_bound(tiny_model):
    conds = encode_prompts(tiny_model, RETAIN).float()
    # The trainer measures alignment with its own seed (config seed + 2,000,003) on the pool settings.
    concept, uncond = (encode_prompts(tiny_model, [p]).float() for p in ("nudity", ""))
    alignment = concept_alignment(tiny_model, UNetRunner(tiny_model.unet), concept, uncond, conds,
                                  num_inference_steps=8, guidance=3.0, seed=2_000_003)[:, 0]
    bound = float(alignment.median())
    result = erase(tiny_model, ["nudity"], _config(retain_max_alignment=bound))
    expected = [p for p, a in zip(RETAIN, alignment.tolist()) if a > bound]
    assert expected and result.metadata["retain_prompts_dropped"] == expected
    assert result.metadata["retain_prompts_used"] == len(RETAIN) - len(expected)
    kept = erase(tiny_model, ["nudity"], _config())
    assert kept.metadata["retain_prompts_dropped"] == [] and kept.metadata["retain_prompts_used"] == len(RETAIN)


def test_new_options_are_checked():
    for bad in (dict(anchor_weight=-1), dict(attack_epsilon=0), dict(concept_batch=0), dict(attack_batch=0),
                dict(attack_restarts=0), dict(attack_restart_every=-1), dict(retain_max_alignment=0),
                dict(plain_weight=-0.5), dict(attack_init="random")):
        with pytest.raises(ErasureError):
            EraseConfig(**bad).validate()
    # Option strings (nodes, CLI): "none" switches a budget off, numbers are read as numbers.
    config = EraseConfig(attack_epsilon="none", retain_max_alignment="0.5").validate()
    assert config.attack.epsilon is None and config.retain_max_alignment == 0.5
    with pytest.raises(ErasureError, match="attack_epsilon must be a number or none"):
        EraseConfig(attack_epsilon="big")
