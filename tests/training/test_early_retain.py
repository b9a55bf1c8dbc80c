"""The early retain term (`retain_early_weight`): its points come from the first, noisiest sampling steps only,
from the pool and from fresh sampling alike, and it is trained, logged and checked."""

import contextlib

import pytest
import torch

from erasure_core.errors import ErasureError
from erasure_core.latents import LatentPool, UNetRunner, ddim_scheduler
from erasure_core.models import build_tiny_model
from erasure_core.sampling import encode_prompts
from erasure_core.training import EraseConfig, erase
from erasure_core.training.points import TrainingPoints

RETAIN = ["a photo of a dog", "a photo of a cat", "a red car", "a tree", "a house"]
FAST = dict(iterations=4, warmup_iterations=2, attack_steps=2, num_ddim_steps=8, concept_pool_size=2,
            retain_pool_size=4, retain_batch=2, lr=3e-3, checkpoint_every=0, retain_prompts=RETAIN)


def _pool(model):
    conds = encode_prompts(model, RETAIN[:2])
    return LatentPool.build(model, UNetRunner(model.unet), conds, encode_prompts(model, [""]),
                            torch.tensor([0, 1, 0, 1]), num_inference_steps=8,
                            generator=torch.Generator().manual_seed(0))


def test_pool_draws_from_the_first_steps_only(tiny_model):
    pool = _pool(tiny_model)
    rng = torch.Generator().manual_seed(1)
    early = pool.draw(300, rng, first_steps=2)
    assert set(early.timesteps.tolist()) == set(pool.timesteps[:2].tolist())  # both, and nothing else
    assert pool.timesteps[0] > pool.timesteps[-1]  # the first steps are the noisiest
    # Latents and teacher predictions are those of the drawn step, not of another one.
    step = (pool.timesteps == early.timesteps[0]).nonzero().item()
    assert any(torch.equal(early.latents[0], pool.latents[r, step]) for r in range(pool.size))
    anywhere = pool.draw(300, rng)
    assert len(set(anywhere.timesteps.tolist())) == len(pool.timesteps)


def test_fresh_sampling_draws_from_the_first_steps_only(tiny_model):
    config = EraseConfig(**{**FAST, "reuse_latents": False})
    uncond = encode_prompts(tiny_model, [""])
    points = TrainingPoints(tiny_model, UNetRunner(tiny_model.unet), config, torch.Generator().manual_seed(0),
                            encode_prompts(tiny_model, ["nudity"]), uncond, contextlib.nullcontext)
    points.build_pools(encode_prompts(tiny_model, RETAIN), key=(), cache=None)
    first = ddim_scheduler(tiny_model, 8).timesteps[:3].tolist()
    drawn = {int(points.retain(1, first_steps=3).timesteps[0]) for _ in range(40)}
    assert drawn == set(first)


def test_early_retain_term_is_trained_logged_and_costs_its_points():
    plain = erase(build_tiny_model(), ["nudity"], EraseConfig(**FAST))
    early = erase(build_tiny_model(), ["nudity"], EraseConfig(**FAST, retain_early_weight=1.0))
    assert all(h["retain_early_loss"] > 0 for h in early.history)
    assert "retain_early_loss" not in plain.history[-1]
    a, b = plain.text_encoder.state_dict(), early.text_encoder.state_dict()
    assert not all(torch.equal(a[k], b[k]) for k in a)
    # retain_batch more student points a step (the runner counts one evaluation per point), 4 iterations; the
    # teacher's predictions come from the pool, which both runs sample alike.
    assert early.unet_evaluations - plain.unet_evaluations == 4 * FAST["retain_batch"]


@pytest.mark.parametrize("bad, words", [
    (dict(retain_early_steps=0.0), "retain_early_steps"),
    (dict(retain_early_steps=1.5), "retain_early_steps"),
    (dict(retain_early_weight=-1.0), "retain_early_weight must be >= 0"),
    (dict(retain_early_weight=1.0, retain_weight=0.0), "needs retain_weight > 0"),
])
def test_early_retain_options_are_checked(bad, words):
    with pytest.raises(ErasureError, match=words):
        EraseConfig(**bad).validate()
