"""The losses of ESD / AdvUnlearn: one plain MSE (`mse`), its ESD target, and the empty-prompt anchor.

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


def mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element (batch, channels, height, width), in fp32, towards a constant
    target (no gradient flows into it). The one MSE of all three prediction-space terms: unlearning (student vs
    `esd_target`), retain (student vs the original encoder's prediction on a retain prompt) and the inner attack
    (the adversarial prompt's prediction vs the ORIGINAL model's prediction for the concept, to minimise)."""
    return F.mse_loss(prediction.float(), target.detach().float())


def anchor_loss(student_uncond: torch.Tensor, original_uncond: torch.Tensor) -> torch.Tensor:
    """How far the trained encoder's encoding of "" [1, L, D] moved from the original's: the mean squared
    difference relative to the original's mean square (scale-free, so one weight serves any encoder width).

    Anchored in the encoder's output rather than in the UNet's prediction: it costs no UNet evaluation and pins
    E("") wherever the sampled points are; a prediction-space anchor on one point per step left the drift to
    noise on a tiny model (tests/training/test_training_options.py)."""
    original = original_uncond.detach().float()
    return F.mse_loss(student_uncond.float(), original) / original.pow(2).mean().clamp_min(1e-12)
