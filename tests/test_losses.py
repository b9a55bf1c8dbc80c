"""The ESD target, the MSE and the anchor loss against hand computations on tiny tensors."""

import pytest
import torch

from erasure_core.losses import anchor_loss, esd_target, mse


def test_esd_target_by_hand():
    eps_uncond = torch.tensor([1.0, 2.0, -1.0])
    eps_concept = torch.tensor([3.0, 2.0, 0.0])
    # uncond - eta * (concept - uncond): eta 1 -> [1-2, 2-0, -1-1]; eta 2 -> [1-4, 2-0, -1-2]
    assert torch.equal(esd_target(eps_uncond, eps_concept), torch.tensor([-1.0, 2.0, -2.0]))
    assert torch.equal(esd_target(eps_uncond, eps_concept, negative_guidance=2.0), torch.tensor([-3.0, 2.0, -3.0]))
    assert not esd_target(eps_uncond.requires_grad_(), eps_concept).requires_grad


def test_mse_by_hand():
    student = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    target = torch.tensor([[0.0, 2.0], [5.0, 1.0]], requires_grad=True)
    # squared errors 1, 0, 4, 9 -> mean 3.5
    loss = mse(student, target)
    assert loss.item() == 3.5
    loss.backward()
    # d/ds mean((s - t)^2) = 2 (s - t) / 4; the target is a constant: no gradient reaches it
    assert torch.allclose(student.grad, torch.tensor([[0.5, 0.0], [-1.0, 1.5]]))
    assert target.grad is None


def test_losses_are_fp32_for_half_inputs():
    student = torch.tensor([1.0, 3.0], dtype=torch.bfloat16)
    loss = mse(student, torch.tensor([0.0, 0.0], dtype=torch.bfloat16))
    assert loss.dtype == torch.float32 and loss.item() == 5.0


def test_anchor_loss_is_relative_to_the_original_by_hand():
    original = torch.tensor([[[1.0, -1.0], [2.0, 0.0]]])  # mean square (1 + 1 + 4 + 0) / 4 = 1.5
    moved = original + torch.tensor([[[1.0, 0.0], [0.0, -1.0]]])  # squared moves 1, 0, 0, 1 -> mean 0.5
    assert anchor_loss(moved, original).item() == pytest.approx(0.5 / 1.5)
    # scale-free: the same relative move of a 10x wider encoding weighs the same
    assert anchor_loss(moved * 10, original * 10).item() == pytest.approx(0.5 / 1.5)
