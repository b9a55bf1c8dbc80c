"""`concept_pool_captions`: a share of the concept pool's trajectories is sampled from the concept's captions, and
the bare word's prediction is put in at their latents (the bare-word terms keep their own teacher)."""

import contextlib

import pytest
import torch

from erasure_core.errors import ErasureError
from erasure_core.latents import LatentPool, UNetRunner, ddim_scheduler
from erasure_core.models import build_tiny_model
from erasure_core.sampling import encode_prompts
from erasure_core.training import EraseConfig, erase
from erasure_core.training.captions import ConceptCaptions
from erasure_core.training.points import TrainingPoints

PROMPTS = ["a photo of a dog", "a red car", "a tree", "nudity on a beach", "a painting of nudity, dark"]
FAST = dict(iterations=3, warmup_iterations=1, attack_steps=2, num_ddim_steps=6, concept_pool_size=4,
            retain_pool_size=4, retain_batch=2, lr=3e-3, checkpoint_every=0, diagnostics_every=0,
            retain_prompts=PROMPTS, caption_weight=1.0, contrast_words=["clothes"])
GUIDANCE = 3.0


def _concept_pools(model, share: float, concepts=("nudity",)) -> list[LatentPool]:
    config = EraseConfig(**FAST, concept_pool_captions=share, guidance=GUIDANCE).validate()
    encode0 = lambda ids: model.text_encoder(ids)[0].float()  # noqa: E731
    captions = ConceptCaptions(model.tokenizer, encode0, PROMPTS, list(concepts), ["clothes"])
    points = TrainingPoints(model, UNetRunner(model.unet), config, torch.Generator().manual_seed(0),
                            encode_prompts(model, list(concepts)), encode_prompts(model, [""]),
                            contextlib.nullcontext, captions)
    points.build_pools(None, key=(), cache=None)
    return points.concept_pools


def _concept_pool(model, share: float) -> LatentPool:
    return _concept_pools(model, share)[0]


def _guided_by_stored_teacher(model, pool: LatentPool, row: int) -> bool:
    """Whether the trajectory's first DDIM step is the one its stored (cond, uncond) predictions give."""
    scheduler = ddim_scheduler(model, pool.latents.shape[1])
    t = pool.timesteps[0]
    eps = pool.eps_uncond[row, 0] + GUIDANCE * (pool.eps_cond[row, 0] - pool.eps_uncond[row, 0])
    step = scheduler.step(eps[None], t, pool.latents[row, 0][None], eta=0.0).prev_sample[0]
    return torch.allclose(step, pool.latents[row, 1], atol=1e-5)


def test_half_the_trajectories_come_from_captions_taught_with_the_bare_word(tiny_model):
    pool = _concept_pool(tiny_model, 0.5)
    assert pool.size == FAST["concept_pool_size"]
    # The bare word's trajectories follow their stored teacher; the captions' were guided by another prompt.
    assert [_guided_by_stored_teacher(tiny_model, pool, r) for r in range(pool.size)] == [True, True, False, False]
    # At every latent, eps_cond is the bare word's own prediction, as the plain term and the bare-word attack need.
    runner, cond = UNetRunner(tiny_model.unet), encode_prompts(tiny_model, ["nudity"])
    with torch.no_grad():
        for row in range(pool.size):
            expected = runner(pool.latents[row], pool.timesteps, cond.expand(len(pool.timesteps), -1, -1)).float()
            assert torch.allclose(pool.eps_cond[row], expected, atol=1e-5)
    assert pool.prompt_index.tolist() == [0, 0, 0, 0]


def test_no_share_samples_the_bare_word_only(tiny_model):
    pool = _concept_pool(tiny_model, 0.0)
    assert all(_guided_by_stored_teacher(tiny_model, pool, r) for r in range(pool.size))
    everything = _concept_pool(tiny_model, 1.0)
    assert not any(_guided_by_stored_teacher(tiny_model, everything, r) for r in range(everything.size))


def test_a_concept_without_captions_samples_the_bare_word_only(tiny_model):
    nudity, cat = _concept_pools(tiny_model, 0.5, concepts=("nudity", "cat"))  # no prompt names "cat"
    assert [_guided_by_stored_teacher(tiny_model, nudity, r) for r in range(nudity.size)] == [True, True, False, False]
    assert all(_guided_by_stored_teacher(tiny_model, cat, r) for r in range(cat.size))


def test_a_run_with_caption_trajectories_trains_and_differs_from_one_without():
    model, cache = build_tiny_model(), {}  # one model and pool cache: the share must be part of the pools' key
    plain = erase(model, ["nudity"], EraseConfig(**FAST), latent_cache=cache)
    mixed = erase(model, ["nudity"], EraseConfig(**FAST, concept_pool_captions=0.5), latent_cache=cache)
    assert mixed.config.concept_pool_captions == 0.5 and len(cache) == 2
    a, b = plain.text_encoder.state_dict(), mixed.text_encoder.state_dict()
    assert not all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("bad, words", [
    (dict(concept_pool_captions=1.5), r"must be in \[0, 1\]"),
    (dict(concept_pool_captions=-0.1), r"must be in \[0, 1\]"),
    (dict(concept_pool_captions=0.5, caption_weight=0.0), "needs caption_weight > 0"),
    (dict(concept_pool_captions=0.5, reuse_latents=False), "reuse_latents on"),
])
def test_the_share_is_checked(bad, words):
    with pytest.raises(ErasureError, match=words):
        EraseConfig(**{**FAST, **bad}).validate()
