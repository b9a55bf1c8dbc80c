"""Conflict projection (`project_conflicts`): the removing terms' gradient loses its component against the keeping
terms' gradient, only when they conflict; the trainer applies it, logs the cosine, and stays reproducible."""

from contextlib import nullcontext

import pytest
import torch

from erasure_core.errors import ErasureError
from erasure_core.models import build_tiny_model
from erasure_core.training import EraseConfig, erase
from erasure_core.training.projection import backward_projected, project_and_add, split_terms, take_gradients
from erasure_core.training.terms import EncoderTerm, backward_terms

RETAIN = ["a photo of a dog", "a photo of a cat", "a red car", "a tree", "a house"]
FAST = dict(iterations=4, warmup_iterations=2, attack_steps=2, num_ddim_steps=8, concept_pool_size=2,
            retain_pool_size=4, retain_batch=2, lr=3e-3, checkpoint_every=0, retain_prompts=RETAIN)


def _params(keep: list[list[float]]):
    params = [torch.nn.Parameter(torch.zeros(len(g))) for g in keep]
    for p, g in zip(params, keep):
        p.grad = torch.tensor(g)
    return params


def test_a_conflicting_gradient_loses_its_component_along_the_keeping_one():
    params = _params([[1.0, 0.0], [0.0]])  # keeping gradient (1, 0, 0), over two parameters
    cosine = project_and_add(params, [torch.tensor([-2.0, 1.0]), torch.tensor([3.0])])
    total = torch.cat([p.grad for p in params])
    # removing (-2, 1, 3) projected off (1, 0, 0) -> (0, 1, 3); plus the keeping gradient
    assert torch.allclose(total, torch.tensor([1.0, 1.0, 3.0]))
    assert cosine == pytest.approx(-2 / 14 ** 0.5)
    assert float(total @ torch.tensor([1.0, 0.0, 0.0])) >= 1.0 - 1e-6  # never against the keeping gradient


def test_a_gradient_that_agrees_is_added_unchanged():
    params = _params([[1.0, 2.0]])
    cosine = project_and_add(params, [torch.tensor([3.0, -1.0])])
    assert torch.equal(params[0].grad, torch.tensor([4.0, 1.0]))
    assert cosine > 0


def test_zero_gradients_are_left_alone():
    params = _params([[0.0, 0.0]])
    assert project_and_add(params, [torch.tensor([1.0, -1.0])]) == 0.0
    assert torch.equal(params[0].grad, torch.tensor([1.0, -1.0]))


def test_terms_are_split_by_what_they_do_and_gradients_taken_away():
    terms = [EncoderTerm(n, 1.0, lambda: None) for n in ("unlearn", "anchor", "caption", "retain")]
    removing, keeping = split_terms(terms)
    assert [t.name for t in removing] == ["unlearn", "caption"] and [t.name for t in keeping] == ["anchor", "retain"]
    params = _params([[1.0], [2.0]])
    params[1].grad = None
    grads = take_gradients(params)
    assert [g.tolist() for g in grads] == [[1.0], [0.0]] and all(p.grad is None for p in params)


def _run(unet_terms, encoder_terms):
    return backward_terms(None, unet_terms, encoder_terms, max_batch=1, scale=lambda x: x, autocast=nullcontext,
                          check_finite=lambda name, loss: None)


@pytest.mark.parametrize("enabled", [True, False])
def test_a_step_back_propagates_the_groups_apart_and_sums_them_projected(enabled):
    """The trainer's path (backward_projected over terms.backward_terms) on two linear losses whose gradients
    conflict: remove a = (-2, 1), keep b = (1, 0); projected, the step's gradient is b + (0, 1)."""
    w = torch.nn.Parameter(torch.tensor([0.5, -0.5]))
    a, b = torch.tensor([-2.0, 1.0]), torch.tensor([1.0, 0.0])
    terms = [EncoderTerm("unlearn", 1.0, lambda: w @ a), EncoderTerm("retain", 1.0, lambda: w @ b)]
    losses, cosine = backward_projected(_run, [], terms, [w], enabled)
    assert losses == {"unlearn": pytest.approx(-1.5), "retain": pytest.approx(0.5)}
    if enabled:
        assert torch.allclose(w.grad, torch.tensor([1.0, 1.0])) and cosine == pytest.approx(-2 / 5 ** 0.5)
    else:
        assert torch.allclose(w.grad, a + b) and cosine is None


def test_the_trainer_projects_logs_and_reproduces():
    plain = erase(build_tiny_model(), ["nudity"], EraseConfig(**FAST))
    projected = erase(build_tiny_model(), ["nudity"], EraseConfig(**FAST, project_conflicts=True))
    again = erase(build_tiny_model(), ["nudity"], EraseConfig(**FAST, project_conflicts=True))
    cosines = [h["conflict_cosine"] for h in projected.history]
    assert len(cosines) == FAST["iterations"] and all(-1.0 <= c <= 1.0 for c in cosines)
    assert "conflict_cosine" not in plain.history[-1]
    b, c = (r.text_encoder.state_dict() for r in (projected, again))
    assert all(torch.equal(b[k], c[k]) for k in b)  # seeded: the same run gives the same weights
    # the same UNet evaluations: the two groups are back-propagated apart, not evaluated twice
    assert projected.unet_evaluations == plain.unet_evaluations


def test_without_keeping_terms_it_changes_nothing():
    bare = dict(FAST, retain_weight=0.0, anchor_weight=0.0)
    off = erase(build_tiny_model(), ["nudity"], EraseConfig(**bare))
    on = erase(build_tiny_model(), ["nudity"], EraseConfig(**bare, project_conflicts=True))
    a, b = off.text_encoder.state_dict(), on.text_encoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "conflict_cosine" not in on.history[-1]


@pytest.mark.parametrize("value", ["yes", "no", 1, None])
def test_the_switch_must_be_a_bool(value):
    with pytest.raises(ErasureError, match=f"project_conflicts is on or off: give True or False, got {value!r}"):
        EraseConfig(project_conflicts=value).validate()
