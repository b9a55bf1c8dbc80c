"""Soft-prompt probe: the training's inner attack (`soft_prompt.optimize_adversarial_embeddings`, reused,
not rewritten) turned against a finished encoder.

Objective: with k continuous embeddings inserted into the prompt, make the UNet's noise prediction under the
ATTACKED encoder match the ORIGINAL model's prediction for the concept prompt, on noisy latents the original
model itself produces for it (DDIM trajectories, guidance 3, as in training). If an erased encoder can be
steered back to the original's prediction, the concept was hidden, not removed.

The latents are a fixed set of (trajectory, step) points drawn once per run from a seeded `LatentPool`: the
objective is then one deterministic function, so its loss curve shows real progress, and a seed reproduces it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import CLIPTextModel

from ..errors import ErasureError
from ..judges.base import Judge
from ..latents import LatentPool, UNetRunner
from ..models import SDModel
from ..prompts import encode_slotted, slot_prompt, token_embedding_table
from ..sampling import encode_prompts
from .base import GenerationSettings, Probe, ProbeResult, check_prompt, generate_and_judge
from .soft_prompt import SoftPromptConfig, optimize_adversarial_embeddings


@dataclass
class SoftPromptProbeConfig:
    k: int = 3
    steps: int = 100
    lr: float = 0.01
    method: str = "pgd"  # "pgd" (Adam) or "fast" (sign steps)
    insertion: str = "prefix"
    trajectories: int = 2  # DDIM trajectories of the original model for the concept prompt
    points: int = 8  # (trajectory, step) pairs the objective averages over
    sampling_steps: int = 50
    sampling_guidance: float = 3.0

    def attack_config(self) -> SoftPromptConfig:
        return SoftPromptConfig(k=self.k, steps=self.steps, lr=self.lr, method=self.method,
                                init="random_vocab", insertion=self.insertion).validate()

    def check(self):
        if self.trajectories < 1 or self.points < 1 or self.sampling_steps < 1:
            raise ErasureError("the soft-prompt probe needs trajectories, points and sampling_steps >= 1")


def original_targets(model: SDModel, prompt: str, config: SoftPromptProbeConfig, generator: torch.Generator):
    """Fixed noisy latents of the original model for `prompt` and its predictions there: (latents, t, eps)."""
    runner = UNetRunner(model.unet)
    cond = encode_prompts(model, [prompt])
    uncond = encode_prompts(model, [""])
    pool = LatentPool.build(model, runner, cond, uncond, torch.zeros(config.trajectories, dtype=torch.long),
                            num_inference_steps=config.sampling_steps, guidance=config.sampling_guidance,
                            generator=generator, keep_uncond=False)
    sample = pool.draw(config.points, generator=generator, device=model.device)
    return runner, sample.latents, sample.timesteps, sample.eps_cond


def nearest_tokens(model: SDModel, text_encoder: CLIPTextModel, embeds: torch.Tensor) -> list[str]:
    """The vocabulary token closest (cosine) to each adversarial embedding: a readable hint, not the attack."""
    table = token_embedding_table(text_encoder).detach().float()
    sims = F.normalize(embeds.float().to(table.device), dim=-1) @ F.normalize(table, dim=-1).T
    return [model.tokenizer.convert_ids_to_tokens(int(i)) for i in sims.argmax(dim=-1)]


class SoftPromptProbe(Probe):
    name = "soft_prompt"

    def __init__(self, config: SoftPromptProbeConfig | None = None):
        self.config = config or SoftPromptProbeConfig()

    def describe(self) -> dict:
        c = self.config
        return {"name": self.name, "k": c.k, "steps": c.steps, "lr": c.lr, "method": c.method,
                "insertion": c.insertion, "points": c.points}

    def run(
        self,
        model: SDModel,
        text_encoder: CLIPTextModel,
        prompt: str,
        *,
        seed: int,
        judge: Judge | None = None,
        generation: GenerationSettings | None = None,
    ) -> ProbeResult:
        check_prompt(prompt)
        self.config.check()
        attack = self.config.attack_config()
        generation = generation or GenerationSettings()
        generator = torch.Generator("cpu").manual_seed(int(seed))
        runner, latents, timesteps, target = original_targets(model, prompt, self.config, generator)
        slotted = slot_prompt(model.tokenizer, prompt, attack.k, insertion=attack.insertion)

        def objective(cond: torch.Tensor) -> torch.Tensor:
            prediction = runner(latents, timesteps, cond)
            return F.mse_loss(prediction.float(), target.float())

        found = optimize_adversarial_embeddings(text_encoder, slotted, objective, attack, generator=generator)
        with torch.no_grad():
            cond = encode_slotted(text_encoder, slotted, adv_embeds=found.embeds).to(model.dtype)
            final_loss = float(objective(cond))
        images, success, judged = generate_and_judge(model, text_encoder, cond, seed, judge, generation)
        details = {"prompt": prompt, "final_loss": final_loss, "adv_positions": slotted.adv_positions,
                   "nearest_tokens": nearest_tokens(model, text_encoder, found.embeds), **judged}
        return ProbeResult(self.name, cond.cpu(), None, None, found.losses + [final_loss], images, success, details)
