"""Conflict projection (`project_conflicts`): the removing terms' gradient loses its component against the keeping
terms' gradient, only when they conflict; `project_updates`: the optimiser's update loses its component that raises
the keeping terms' loss. The trainer applies them, logs the cosines, and stays reproducible."""

from contextlib import nullcontext

import pytest
import torch

from erasure_core.errors import ErasureError
from erasure_core.models import build_tiny_model
from erasure_core.training import EraseConfig, erase
from erasure_core.training.projection import (Projection, project_and_add, remove_raising_component,
                                                split_terms, take_gradients)
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
    """The trainer's path (Projection.backward over terms.backward_terms) on two linear losses whose gradients
    conflict: remove a = (-2, 1), keep b = (1, 0); projected, the step's gradient is b + (0, 1)."""
    w = torch.nn.Parameter(torch.tensor([0.5, -0.5]))
    a, b = torch.tensor([-2.0, 1.0]), torch.tensor([1.0, 0.0])
    terms = [EncoderTerm("unlearn", 1.0, lambda: w @ a), EncoderTerm("retain", 1.0, lambda: w @ b)]
    losses, logs = Projection([w], gradients=enabled, updates=False).backward(_run, [], terms)
    assert losses == {"unlearn": pytest.approx(-1.5), "retain": pytest.approx(0.5)}
    if enabled:
        assert torch.allclose(w.grad, torch.tensor([1.0, 1.0]))
        assert logs["conflict_cosine"] == pytest.approx(-2 / 5 ** 0.5)
    else:
        assert torch.allclose(w.grad, a + b) and logs == {}


def test_an_update_that_raises_the_keeping_loss_loses_that_component():
    """keeping gradient (1, 0): an update (+2, 1) raises the keeping loss (dot 2 > 0) -> (0, 1); an update (-2, 1)
    lowers it and is kept."""
    for step, expected in (([2.0, 1.0], [0.0, 1.0]), ([-2.0, 1.0], [-2.0, 1.0])):
        w = torch.nn.Parameter(torch.zeros(2))
        before = [w.detach().clone()]
        with torch.no_grad():
            w += torch.tensor(step)
        cosine = remove_raising_component([w], before, torch.tensor([1.0, 0.0]))
        assert torch.allclose(w.detach(), torch.tensor(expected))
        assert cosine == pytest.approx(step[0] / 5 ** 0.5)


@pytest.mark.parametrize("gradients", [True, False])
def test_the_update_projection_corrects_what_the_optimiser_does(gradients):
    """Adam's step from a projected gradient can still raise the keeping loss (its per-coordinate scaling); with
    `updates` the step's update never has a positive dot product with the keeping gradient."""
    w = torch.nn.Parameter(torch.tensor([0.5, -0.5]))
    # remove a, keep b: a . b = -10, a conflict; projected, a' = (12, 4), and with or without the projection the
    # summed gradient's signs are (+, +), so Adam's first step, -lr * sign, has b . step = 2 lr > 0
    a, b = torch.tensor([11.0, 7.0]), torch.tensor([1.0, -3.0])
    terms = [EncoderTerm("unlearn", 1.0, lambda: w @ a), EncoderTerm("retain", 1.0, lambda: w @ b)]
    optimizer = torch.optim.Adam([w], lr=0.1)
    projection = Projection([w], gradients=gradients, updates=True)
    for _ in range(3):
        before = w.detach().clone()
        projection.backward(_run, [], terms)
        logs = projection.step(optimizer.step)
        optimizer.zero_grad()
        assert float((w.detach() - before) @ b) <= 1e-6
    assert -1.0 <= logs["update_cosine"] <= 1.0
    # without it the same Adam steps raise the keeping loss: Adam's first step is lr * sign(gradient)
    w2 = torch.nn.Parameter(torch.tensor([0.5, -0.5]))
    plain = Projection([w2], gradients=gradients, updates=False)
    optimizer2 = torch.optim.Adam([w2], lr=0.1)
    plain.backward(_run, [], [EncoderTerm("unlearn", 1.0, lambda: w2 @ a), EncoderTerm("retain", 1.0, lambda: w2 @ b)])
    before = w2.detach().clone()
    assert plain.step(optimizer2.step) == {}
    assert float((w2.detach() - before) @ b) > 0


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


def test_the_trainer_projects_updates_logs_and_reproduces():
    plain = erase(build_tiny_model(), ["nudity"], EraseConfig(**FAST))
    runs = [erase(build_tiny_model(), ["nudity"], EraseConfig(**FAST, project_updates=True)) for _ in range(2)]
    cosines = [h["update_cosine"] for h in runs[0].history]
    assert len(cosines) == FAST["iterations"] and all(-1.0 <= c <= 1.0 for c in cosines)
    b, c = (r.text_encoder.state_dict() for r in runs)
    assert all(torch.equal(b[k], c[k]) for k in b)
    a = plain.text_encoder.state_dict()
    # an update was corrected (a positive cosine) exactly when the weights differ from the plain run's
    assert any(c > 0 for c in cosines) == any(not torch.allclose(a[k], b[k]) for k in a)
    assert runs[0].unet_evaluations == plain.unet_evaluations


def test_without_keeping_terms_it_changes_nothing():
    bare = dict(FAST, retain_weight=0.0, anchor_weight=0.0)
    off = erase(build_tiny_model(), ["nudity"], EraseConfig(**bare))
    on = erase(build_tiny_model(), ["nudity"], EraseConfig(**bare, project_conflicts=True, project_updates=True))
    a, b = off.text_encoder.state_dict(), on.text_encoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "conflict_cosine" not in on.history[-1] and "update_cosine" not in on.history[-1]


@pytest.mark.parametrize("name", ["project_conflicts", "project_updates"])
@pytest.mark.parametrize("value", ["yes", "no", 1, None])
def test_the_switch_must_be_a_bool(name, value):
    with pytest.raises(ErasureError, match=f"{name} is on or off: give True or False, got {value!r}"):
        EraseConfig(**{name: value}).validate()
