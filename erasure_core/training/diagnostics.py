"""What the history records every `diagnostics_every` iterations, on points fixed for the whole run.

- uncond_drift: MSE between the trained and the original encoder's predictions for the EMPTY prompt. Classifier-
  free guidance encodes "" with the erased encoder, so a drift here changes every generation; compare it with
  concept_signal = MSE(eps0(c), eps0("")), the size of the concept's own guidance (on the demo model, unanchored
  training drifted 0.086 by iteration 50 against a concept signal of 0.0053: the drift, not the erasure, then
  decided what was drawn).
- plain_unlearn_loss: the unlearning loss of the plain concept prompt (what a user types), also after warm-up when
  training sees the attacked prompt.
- adv_token_norm: the adversarial tokens' mean L2 norm, relative to the token table's median row norm (the unit
  of attack_epsilon).
- weight_change: ||W - W0|| / ||W0|| over the trained weights (0.26 after 50 iterations at lr 3e-3 on the demo
  model: the encoder was being rewritten, not nudged).
Evaluations run through their own counter, so the training's UNet evaluation count is unchanged by them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attacks.soft_prompt import typical_token_norm
from ..latents import LatentPool, UNetRunner
from ..losses import esd_target
from ..prompts import encode_slotted

DIAGNOSTIC_POINTS = 4


class Diagnostics:
    def __init__(self, model, config, concept_conds, uncond, uncond_ids, plain_slots, original_encoder):
        self.model, self.config = model, config
        self.concept_conds, self.uncond = concept_conds, uncond
        self.uncond_ids, self.plain_slots = uncond_ids, plain_slots
        self.original = dict(original_encoder.named_parameters())
        self.runner = UNetRunner(model.unet)
        self.points = None
        self.unit = typical_token_norm(original_encoder)

    def due(self, done: int) -> bool:
        every = self.config.diagnostics_every
        return bool(every) and (done % every == 0 or done == self.config.iterations)

    def _points(self):
        """One trajectory per concept from a generator of its own: the same points at every call and resume."""
        if self.points is None:
            generator = torch.Generator().manual_seed(self.config.seed + 3_000_017)
            self.points = [
                LatentPool.build(self.model, self.runner, self.concept_conds[c : c + 1], self.uncond,
                                 torch.zeros(1, dtype=torch.long), num_inference_steps=self.config.num_ddim_steps,
                                 guidance=self.config.guidance, generator=generator)
                .draw(DIAGNOSTIC_POINTS, generator, self.model.device)
                for c in range(self.concept_conds.shape[0])
            ]
        return self.points

    @torch.no_grad()
    def measure(self, student, named_params, adversarial: dict) -> dict:
        drift, signal, plain = [], [], []
        uncond_now = encode_slotted(student, self.uncond_ids)
        for c, points in enumerate(self._points()):
            eps_uncond = self.runner(points.latents, points.timesteps, uncond_now).float()
            drift.append(F.mse_loss(eps_uncond, points.eps_uncond))
            signal.append(F.mse_loss(points.eps_cond, points.eps_uncond))
            eps_plain = self.runner(points.latents, points.timesteps, encode_slotted(student, self.plain_slots[c]))
            target = esd_target(points.eps_uncond, points.eps_cond, self.config.negative_guidance)
            plain.append(F.mse_loss(eps_plain.float(), target))
        mean = lambda values: float(torch.stack(values).mean())  # noqa: E731
        logs = dict(uncond_drift=mean(drift), concept_signal=mean(signal), plain_unlearn_loss=mean(plain),
                    weight_change=self._weight_change(named_params))
        if adversarial:
            norms = torch.cat([e.float().norm(dim=-1) for e in adversarial.values()])
            logs["adv_token_norm"] = float(norms.mean()) / self.unit
        return logs

    def _weight_change(self, named_params) -> float:
        moved = sum(float((p.detach().float() - self.original[n].float()).pow(2).sum()) for n, p in named_params)
        size = sum(float(self.original[n].float().pow(2).sum()) for n, _ in named_params)
        return (moved / max(size, 1e-30)) ** 0.5
