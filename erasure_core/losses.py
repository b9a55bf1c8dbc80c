"""The two losses of ESD / AdvUnlearn, in plain MSE form.

Notation (all noise predictions of the ONE frozen UNet at the same noisy latent x_t and timestep t):
- eps_uncond  = UNet(x_t, t, E0(""))      the original encoder's empty prompt
- eps_concept = UNet(x_t, t, E0(c))       the original encoder's concept prompt
- student     = UNet(x_t, t, E_theta(p))  the encoder being trained, prompt p (c, or c with adversarial tokens)

ESD's negative-guidance target points AWAY from the concept:
    target = eps_uncond - eta * (eps_concept - eps_uncond)
and unlearning makes the student match it. The retain loss keeps the trained encoder's predictions on
unrelated prompts equal to the original encoder's, and the anchor loss keeps the encoding of the empty prompt
where it was (classifier-free guidance's unconditional branch, which a pipeline encodes with the erased encoder).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def esd_target(eps_uncond: torch.Tensor, eps_concept: torch.Tensor, negative_guidance: float = 1.0) -> torch.Tensor:
    """eps_uncond - negative_guidance * (eps_concept - eps_uncond); a constant (no gradient)."""
    return (eps_uncond - negative_guidance * (eps_concept - eps_uncond)).detach()


def unlearning_loss(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element (batch, channels, height, width), computed in fp32."""
    return F.mse_loss(student.float(), target.detach().float())


def retain_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the trained and the original encoder's predictions on retain prompts."""
    return F.mse_loss(student.float(), teacher.detach().float())


def attack_loss(student: torch.Tensor, concept_teacher: torch.Tensor) -> torch.Tensor:
    """The inner attack's objective (to minimise): MSE between the prediction with the adversarial prompt and
    the ORIGINAL model's prediction for the concept, i.e. how well the attack brings the concept back."""
    return F.mse_loss(student.float(), concept_teacher.detach().float())


def anchor_loss(student_uncond: torch.Tensor, original_uncond: torch.Tensor) -> torch.Tensor:
    """How far the trained encoder's encoding of "" [1, L, D] moved from the original's: the mean squared
    difference relative to the original's mean square (scale-free, so one weight serves any encoder width).

    Anchored in the encoder's output rather than in the UNet's prediction: it costs no UNet evaluation and pins
    E("") wherever the sampled points are; a prediction-space anchor on one point per step left the drift to
    noise on a tiny model (tests/test_training_options.py)."""
    original = original_uncond.detach().float()
    return F.mse_loss(student_uncond.float(), original) / original.pow(2).mean().clamp_min(1e-12)
