"""The erasure loop: layer selection, a frozen UNet, exact resume, divergence, cost counting, presets."""

import itertools

import pytest
import torch

from erasure_core.errors import ErasureCancelled, ErasureDiverged, ErasureError
from erasure_core.files import atomic_save_safetensors
from erasure_core.latents import LatentPool, UNetRunner
from erasure_core.losses import esd_target, mse
from erasure_core.models import build_tiny_model
from erasure_core.presets import load_retain_prompts
from erasure_core.prompts import slot_prompt
from erasure_core.sampling import encode_prompts
from erasure_core.training import EraseConfig, erase, read_checkpoint, select_trainable_parameters

# Small but complete runs: warm-up, then attack refreshes; a short DDIM schedule keeps the pools cheap.
FAST = dict(iterations=5, warmup_iterations=2, attack_steps=3, num_ddim_steps=8, concept_pool_size=2,
            retain_pool_size=4, retain_batch=2, lr=1e-3, checkpoint_every=0)


def _changed(before, after):
    return {name for name in before if not torch.equal(before[name], after[name])}


@pytest.mark.parametrize("layers", ["all", "mlp", "attention", [1]])
def test_only_selected_layers_change_and_unet_is_bit_identical(layers):
    model = build_tiny_model(layers=12)
    encoder_before = {k: v.clone() for k, v in model.text_encoder.state_dict().items()}
    unet_before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    result = erase(model, ["nudity"], EraseConfig(**{**FAST, "iterations": 3}, layers=layers))
    changed = _changed(encoder_before, result.text_encoder.state_dict())
    if layers == "all":
        assert {n.split(".")[2] for n in changed if n.startswith("encoder.layers.")} == {str(i) for i in range(12)}
        assert "final_layer_norm.weight" in changed
    elif layers == "mlp":
        assert changed and all(".mlp." in n for n in changed)
    elif layers == "attention":
        assert changed and all(".self_attn." in n for n in changed)
    else:  # layer 1 only: not 10 or 11, which a name-prefix match would also catch
        assert changed and all(n.startswith("encoder.layers.1.") for n in changed)
    assert not any("embeddings" in n for n in changed)
    # The model's own encoder and UNet are untouched, to the bit, and no UNet gradient exists.
    assert not _changed(encoder_before, model.text_encoder.state_dict())
    assert not _changed(unet_before, model.unet.state_dict())
    assert all(p.grad is None and not p.requires_grad for p in model.unet.parameters())


def test_layer_selection_is_by_index_and_checked():
    encoder = build_tiny_model(layers=12).text_encoder
    names = [n for n, _ in select_trainable_parameters(encoder, [1])]
    assert names and all(n.startswith("encoder.layers.1.") for n in names)
    assert [n for n, _ in select_trainable_parameters(encoder, "10,11")][0].startswith("encoder.layers.10.")
    with pytest.raises(ErasureError, match="out of range"):
        select_trainable_parameters(encoder, [12])
    with pytest.raises(ErasureError, match="unknown layers"):
        EraseConfig(layers="ffn")


def test_weights_only_leaves_every_bias_and_norm_out():
    encoder = build_tiny_model().text_encoder
    every = dict(select_trainable_parameters(encoder))
    weights = dict(select_trainable_parameters(encoder, train_biases_and_norms=False))
    left_out = set(every) - set(weights)
    assert weights and all(name.endswith(".weight") and p.ndim == 2 for name, p in weights.items())
    assert any("layer_norm" in n for n in left_out) and any(n.endswith(".bias") for n in left_out)
    assert set(weights) == {n for n, p in every.items() if p.ndim == 2}
    with pytest.raises(ErasureError, match="train_biases_and_norms is on or off"):
        EraseConfig(train_biases_and_norms="no").validate()


def test_erase_without_biases_and_norms_changes_matrices_only():
    model = build_tiny_model()
    before = {k: v.clone() for k, v in model.text_encoder.state_dict().items()}
    result = erase(model, ["nudity"], EraseConfig(**{**FAST, "iterations": 3}, train_biases_and_norms=False))
    after = result.text_encoder.state_dict()
    changed = _changed(before, after)
    assert changed and all(after[n].ndim == 2 and not n.endswith(".bias") for n in changed)
    assert not any("layer_norm" in n or "embeddings" in n for n in changed)


def _evaluation_points(model, concept):
    """Fixed noisy latents of the concept, with the frozen model's predictions (an independent pool)."""
    runner = UNetRunner(model.unet)
    conds = encode_prompts(model, [concept])
    return LatentPool.build(model, runner, conds, encode_prompts(model, [""]), torch.zeros(4, dtype=torch.long),
                            num_inference_steps=8, generator=torch.Generator().manual_seed(123))


def _mean_unlearning_loss(model, encoder, concept, pool):
    cond = encode_prompts(model, [concept], text_encoder=encoder)
    runner = UNetRunner(model.unet)
    n, s = pool.latents.shape[:2]
    with torch.no_grad():
        losses = [
            mse(runner(pool.latents[i, j : j + 1], pool.timesteps[j : j + 1], cond),
                esd_target(pool.eps_uncond[i, j : j + 1], pool.eps_cond[i, j : j + 1]))
            for i in range(n) for j in range(s)
        ]
    return torch.stack(losses).mean().item()


@pytest.mark.parametrize("method", ["advunlearn", "esd"])
def test_erase_lowers_the_unlearning_loss(tiny_model, method):
    pool = _evaluation_points(tiny_model, "nudity")
    before = _mean_unlearning_loss(tiny_model, tiny_model.text_encoder, "nudity", pool)
    config = EraseConfig(**{**FAST, "iterations": 12, "warmup_iterations": 6, "lr": 3e-3}, method=method)
    result = erase(tiny_model, ["nudity"], config)
    after = _mean_unlearning_loss(tiny_model, result.text_encoder, "nudity", pool)
    assert after < 0.5 * before
    assert len(result.history) == 12
    adversarial = [h["adversarial"] for h in result.history]
    assert adversarial == [method == "advunlearn" and i >= 6 for i in range(12)]


def test_resume_after_cancel_equals_uninterrupted_run(tmp_path):
    concepts = ["nudity", "Van Gogh"]
    config = EraseConfig(**FAST)
    straight = erase(build_tiny_model(), concepts, config)

    reported, polls_after_three = [], itertools.count()
    ckpt = tmp_path / "run.ckpt.safetensors"
    # After 3 iterations: the poll before iteration 4 says no, its attack's second step says cancel.
    cancel = lambda: len(reported) >= 3 and next(polls_after_three) >= 2  # noqa: E731
    with pytest.raises(ErasureCancelled) as cancelled:
        erase(build_tiny_model(), concepts, config, checkpoint_path=ckpt,
              progress=lambda step, total, logs: reported.append(step), should_cancel=cancel)
    assert cancelled.value.checkpoint == ckpt and ckpt.is_file()
    _, meta = read_checkpoint(ckpt)
    assert meta["step"] == 3  # cancelled inside iteration 4's attack: the state before it is kept

    resumed = erase(build_tiny_model(), concepts, config, resume_from=ckpt)
    assert [h["iteration"] for h in resumed.history] == list(range(1, 6))
    # Same losses at every iteration; only the evaluation counts differ (the resumed run rebuilt its pools).
    strip = lambda history: [{k: v for k, v in h.items() if k != "unet_evaluations"} for h in history]  # noqa: E731
    assert strip(resumed.history) == strip(straight.history)
    for (name, a), b in zip(straight.text_encoder.state_dict().items(), resumed.text_encoder.state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_refuses_other_settings(tmp_path):
    ckpt = tmp_path / "c.safetensors"
    erase(build_tiny_model(), ["nudity"], EraseConfig(**{**FAST, "iterations": 2, "checkpoint_every": 1}),
          checkpoint_path=ckpt)
    with pytest.raises(ErasureError, match="other settings"):
        erase(build_tiny_model(), ["nudity"], EraseConfig(**{**FAST, "lr": 0.5}), resume_from=ckpt)
    with pytest.raises(ErasureError, match="not \\['cat'\\]"):
        erase(build_tiny_model(), ["cat"], EraseConfig(**FAST), resume_from=ckpt)
    # More iterations than the checkpoint's run: allowed, continues from step 1.
    longer = erase(build_tiny_model(), ["nudity"], EraseConfig(**{**FAST, "iterations": 3}), resume_from=ckpt)
    assert len(longer.history) == 3 and longer.metadata["resumed_from_step"] == 1


def test_a_checkpoint_from_before_an_option_existed_resumes_at_its_default(tmp_path):
    """A checkpoint written before `attack_population` existed has no such key: its code behaved as the default
    (one token set), so a run at the default resumes from it, and a run asking for 2 sets is refused."""
    ckpt = tmp_path / "old.safetensors"
    erase(build_tiny_model(), ["nudity"], EraseConfig(**{**FAST, "iterations": 2, "checkpoint_every": 1}),
          checkpoint_path=ckpt)
    tensors, meta = read_checkpoint(ckpt)
    del meta["config"]["attack_population"]  # as a checkpoint written before the option existed
    atomic_save_safetensors(tensors, ckpt, meta)
    resumed = erase(build_tiny_model(), ["nudity"], EraseConfig(**{**FAST, "iterations": 3}), resume_from=ckpt)
    assert resumed.metadata["resumed_from_step"] == 1
    with pytest.raises(ErasureError, match="other settings \\(attack_population\\)"):
        erase(build_tiny_model(), ["nudity"], EraseConfig(**{**FAST, "attack_population": 2}), resume_from=ckpt)


def test_nan_loss_raises_diverged_and_keeps_last_good_checkpoint(tmp_path):
    model = build_tiny_model()
    poisoned = {"on": False}

    def poison(module, inputs, output):
        if poisoned["on"]:
            output.sample.fill_(float("nan"))
        return output

    def after_iteration(step, total, logs):
        poisoned["on"] = step >= 3  # iteration 4 onwards sees NaN predictions

    handle = model.unet.register_forward_hook(poison)
    ckpt = tmp_path / "d.safetensors"
    try:
        with pytest.raises(ErasureDiverged, match="iteration 4") as diverged:
            erase(model, ["nudity"], EraseConfig(**{**FAST, "checkpoint_every": 1, "warmup_iterations": 5}),
                  checkpoint_path=ckpt, progress=after_iteration)
    finally:
        handle.remove()
    assert diverged.value.checkpoint == ckpt
    tensors, meta = read_checkpoint(ckpt)
    assert meta["step"] == 3 and len(meta["history"]) == 3
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("encoder."))


def test_unet_evaluations_are_counted_exactly(tiny_model):
    config = EraseConfig(**{**FAST, "iterations": 3, "warmup_iterations": 1})
    result = erase(tiny_model, ["nudity"], config)
    pool = (2 + 4) * 8 * 2
    # warm-up: plain concept + 2 retain; adversarial: attacked concept + 2 retain + 3 attack steps (the anchor on
    # E("") costs no UNet evaluation)
    warm, adversarial = 1 + 2, 1 + 2 + 3
    assert result.metadata["pool_evaluations"] == pool
    assert result.unet_evaluations == pool + warm + 2 * adversarial
    assert result.metadata["unet_grad_evaluations"] == warm + 2 * adversarial

    # Several points per step: every term evaluates concept_batch (unlearning) or attack_batch (attack) latents;
    # the plain prompt is trained beside the attacked one after warm-up.
    multi = erase(tiny_model, ["nudity"], EraseConfig(**{**FAST, "iterations": 3, "warmup_iterations": 1},
                                                      concept_batch=3, attack_batch=2, plain_weight=1.0))
    warm, adversarial = 3 + 2, 3 + 3 + 2 + 3 * 2
    assert multi.unet_evaluations == pool + warm + 2 * adversarial

    fresh = erase(tiny_model, ["nudity"], EraseConfig(**{**FAST, "iterations": 2, "warmup_iterations": 1},
                                                      reuse_latents=False))
    assert fresh.metadata["pool_evaluations"] == 0
    # Without the pool every point costs partial sampling: more evaluations than the gradient ones alone.
    assert fresh.unet_evaluations > fresh.metadata["unet_grad_evaluations"] == 3 + 6


def test_config_round_trip_presets_and_errors(tiny_model):
    config = EraseConfig.from_preset("nudity", iterations=7, layers=[0, 1])
    assert config.retain_weight == 0.3 and config.retain_set == "objects_no_body" and config.iterations == 7
    assert EraseConfig.from_dict(config.to_dict()) == config
    assert EraseConfig.from_preset("style").retain_weight == 0.5 == EraseConfig.from_preset("object").retain_weight
    for name in ("nudity", "style", "object"):  # the paper's presets; "demo" is tuned for the shapes world
        preset = EraseConfig.from_preset(name)
        assert (preset.lr, preset.iterations, preset.warmup_iterations, preset.attack.steps, preset.attack.k,
                preset.retain_batch) == (1e-5, 1000, 200, 30, 1, 5)
    with pytest.raises(ErasureError, match="unknown preset"):
        EraseConfig.from_preset("violence")
    with pytest.raises(ErasureError, match="unknown erase option"):
        EraseConfig.from_dict({"iteratons": 3})
    with pytest.raises(ErasureError, match="tokenizes to nothing"):
        erase(tiny_model, [" "], EraseConfig(**FAST))
    with pytest.raises(ErasureError, match="window"):
        erase(tiny_model, ["nudity"], EraseConfig(**FAST, attack_k=80))


def test_retain_lists():
    objects = load_retain_prompts("objects")
    no_body = load_retain_prompts("objects_no_body")
    assert len(objects) >= 150 and "a photo of a giraffe" in objects and "a photo of a person" in objects
    banned = ("person", "tie", "hair", "shirt", "dress", "sock", "shoe", "glove", "jacket", "scarf", "hat")
    assert no_body and not [p for p in no_body if any(word in p.split() or f"{word}</w>" in p for word in banned)]
    assert set(no_body) < set(objects)
    for erased in ("church", "garbage truck", "parachute", "tench"):
        assert not [p for p in objects if erased in p]
    tokenizer = build_tiny_model().tokenizer
    assert all(slot_prompt(tokenizer, p, 1).k == 1 for p in objects)


def test_memory_options_run_and_restore_the_unet(tiny_model):
    config = EraseConfig(**{**FAST, "iterations": 2, "warmup_iterations": 1, "checkpoint_every": 1},
                         gradient_checkpointing=True, mixed_precision="bf16", max_unet_batch=5)
    result = erase(tiny_model, ["nudity"], config)  # no checkpoint path: periodic checkpoints are skipped
    assert all(torch.isfinite(torch.tensor(h["unlearn_loss"])) for h in result.history)
    assert result.metadata["mixed_precision"] == "bf16"
    assert not tiny_model.unet.is_gradient_checkpointing
    assert not any(getattr(m, "gradient_checkpointing", False) for m in result.text_encoder.modules())


def test_shared_latent_cache_gives_the_same_encoders_for_fewer_unet_evaluations(tiny_model):
    alone = {m: erase(tiny_model, ["circle"], EraseConfig(**FAST, method=m)) for m in ("esd", "advunlearn")}
    cache: dict = {}
    shared = {m: erase(tiny_model, ["circle"], EraseConfig(**FAST, method=m), latent_cache=cache)
              for m in ("esd", "advunlearn")}
    assert len(cache) == 1  # both methods drew from one set of pools
    for method in alone:
        a, b = alone[method].text_encoder.state_dict(), shared[method].text_encoder.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    saved = alone["advunlearn"].unet_evaluations - shared["advunlearn"].unet_evaluations
    assert saved == alone["advunlearn"].metadata["pool_evaluations"] > 0
