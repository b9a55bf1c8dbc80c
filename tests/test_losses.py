"""The ESD target and the MSE losses against hand computations on tiny tensors."""

import torch

from erasure_core.losses import attack_loss, esd_target, retain_loss, unlearning_loss


def test_esd_target_by_hand():
    eps_uncond = torch.tensor([1.0, 2.0, -1.0])
    eps_concept = torch.tensor([3.0, 2.0, 0.0])
    # uncond - eta * (concept - uncond): eta 1 -> [1-2, 2-0, -1-1]; eta 2 -> [1-4, 2-0, -1-2]
    assert torch.equal(esd_target(eps_uncond, eps_concept), torch.tensor([-1.0, 2.0, -2.0]))
    assert torch.equal(esd_target(eps_uncond, eps_concept, negative_guidance=2.0), torch.tensor([-3.0, 2.0, -3.0]))
    assert not esd_target(eps_uncond.requires_grad_(), eps_concept).requires_grad


def test_mse_losses_by_hand():
    student = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    target = torch.tensor([[0.0, 2.0], [5.0, 1.0]])
    # squared errors 1, 0, 4, 9 -> mean 3.5
    for loss_fn in (unlearning_loss, retain_loss, attack_loss):
        loss = loss_fn(student, target)
        assert loss.item() == 3.5
    unlearning_loss(student, target).backward()
    # d/ds mean((s - t)^2) = 2 (s - t) / 4
    assert torch.allclose(student.grad, torch.tensor([[0.5, 0.0], [-1.0, 1.5]]))


def test_losses_are_fp32_for_half_inputs():
    student = torch.tensor([1.0, 3.0], dtype=torch.bfloat16)
    loss = retain_loss(student, torch.tensor([0.0, 0.0], dtype=torch.bfloat16))
    assert loss.dtype == torch.float32 and loss.item() == 5.0
