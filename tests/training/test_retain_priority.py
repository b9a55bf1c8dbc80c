"""The retain priority (`retain_priority`): retain trajectories are drawn in proportion to their last measured
retain loss, unseen ones first, at no extra UNet evaluation; off (0), draws are the uniform ones of before."""

import contextlib

import pytest
import torch

from erasure_core.errors import ErasureError
from erasure_core.latents import UNetRunner
from erasure_core.models import build_tiny_model
from erasure_core.sampling import encode_prompts
from erasure_core.training import EraseConfig, erase
from erasure_core.training.points import TrainingPoints

RETAIN = ["a photo of a dog", "a photo of a cat", "a red car", "a tree", "a house"]
FAST = dict(iterations=8, warmup_iterations=2, attack_steps=2, num_ddim_steps=8, concept_pool_size=2,
            retain_pool_size=4, retain_batch=2, lr=3e-3, checkpoint_every=0, retain_prompts=RETAIN)


def _points(model, priority):
    config = EraseConfig(**FAST, retain_priority=priority)
    points = TrainingPoints(model, UNetRunner(model.unet), config, torch.Generator().manual_seed(0),
                            encode_prompts(model, ["nudity"]), encode_prompts(model, [""]), contextlib.nullcontext)
    points.build_pools(encode_prompts(model, RETAIN), key=(), cache=None)
    return points


def test_draws_follow_the_scores_and_unseen_trajectories_count_as_the_worst(tiny_model):
    points = _points(tiny_model, 1.0)
    assert points._retain_row_weights() is None  # nothing measured yet: uniform
    points.retain_scores = torch.tensor([4.0, 1.0, float("nan"), 1.0])
    weights = points._retain_row_weights()
    assert torch.allclose(weights, torch.tensor([0.4, 0.1, 0.4, 0.1]))  # the unseen one scores as the highest (4)
    rows = torch.cat([points.retain(2).pool_rows for _ in range(400)])
    share = torch.bincount(rows, minlength=4) / len(rows)
    assert torch.allclose(share, weights, atol=0.05)
    half = _points(tiny_model, 0.5)
    half.retain_scores = torch.tensor([4.0, 1.0, float("nan"), 1.0])
    assert torch.allclose(half._retain_row_weights(), 0.5 * 0.25 + 0.5 * weights)
    # A drawn point's loss becomes its trajectory's score.
    sample = points.retain(2)
    points.observe_retain(sample, torch.tensor([7.0, 7.0]))
    assert (points.retain_scores[sample.pool_rows] == 7.0).all()


def test_off_draws_uniformly_as_before_and_keeps_no_scores(tiny_model):
    points = _points(tiny_model, 0.0)
    assert points.retain_scores is None and points._retain_row_weights() is None
    before = torch.Generator().manual_seed(5)
    drawn = points.retain_pool.draw(6, before)
    again = torch.Generator().manual_seed(5)
    assert torch.equal(drawn.pool_rows, torch.randint(points.retain_pool.size, (6,), generator=again))


def test_training_scores_every_trajectory_at_no_extra_cost():
    plain = erase(build_tiny_model(), ["nudity"], EraseConfig(**FAST))
    prioritised = erase(build_tiny_model(), ["nudity"], EraseConfig(**FAST, retain_priority=1.0))
    assert prioritised.unet_evaluations == plain.unet_evaluations
    a, b = plain.text_encoder.state_dict(), prioritised.text_encoder.state_dict()
    assert not all(torch.equal(a[k], b[k]) for k in a)  # other retain points were drawn


@pytest.mark.parametrize("bad, words", [
    (dict(retain_priority=1.5), "retain_priority .* must be in \\[0, 1\\]"),
    (dict(retain_priority=-0.1), "retain_priority"),
    (dict(retain_priority=0.5, reuse_latents=False), "needs reuse_latents"),
])
def test_retain_priority_is_checked(bad, words):
    with pytest.raises(ErasureError, match=words):
        EraseConfig(**bad).validate()
