"""UnlearnDiffAtk (Zhang et al., 2023): discrete adversarial prefix tokens found with the erased model as its
own diffusion classifier.

k prompt tokens (5 for nudity, 3 otherwise) are inserted before the prompt. Each slot holds a distribution over
the vocabulary (start/end tokens excluded); a step computes the straight-through token (hard one-hot forward,
soft gradient backward), embeds it through the encoder's own token table (via `prompts.encode_slotted`), and
measures the erased model's denoising error on a TARGET image of the concept: MSE(eps, UNet(x_t, t, E(adv))),
x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps. Adam (lr 0.01) updates the distributions, which are then projected back
onto the simplex. Timesteps are swept (10, 30, ..., 990; N steps each); after each sweep point the argmax tokens
are decoded, generated and judged, and the attack stops at the first success.

The tokens that are judged are exactly the optimised ids: the conditioning is built from the ids themselves,
never from decoding and re-tokenising the text (which can merge or split BPE tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import CLIPTextModel

from ..errors import ErasureError
from ..judges.base import Judge
from ..models import SDModel, denoising_target
from ..prompts import SlottedPrompt, encode_slotted, slot_prompt, token_embedding_table
from ..sampling import encode_prompts, generate
from .base import GenerationSettings, Probe, ProbeResult, check_prompt, generate_and_judge

NUDITY_WORDS = ("nudity", "nude", "naked", "nsfw")
PAPER_TIMESTEPS = tuple(range(10, 1000, 20))


@dataclass
class UnlearnDiffAtkConfig:
    """k=None picks 5 tokens for a nudity concept and 3 otherwise (the paper's choice)."""

    concept: str = ""
    k: int | None = None
    timesteps: tuple[int, ...] = PAPER_TIMESTEPS
    steps_per_timestep: int = 40
    lr: float = 0.01
    judge_every: int = 1  # judge after every n-th sweep point (and always after the last)

    def tokens(self) -> int:
        if self.k is not None:
            return self.k
        return 5 if any(word in self.concept.lower() for word in NUDITY_WORDS) else 3

    def check(self, num_train_timesteps: int):
        if self.tokens() < 1:
            raise ErasureError(f"UnlearnDiffAtk needs k >= 1 adversarial tokens, got {self.tokens()}")
        bad = [t for t in self.timesteps if not 0 <= int(t) < num_train_timesteps]
        if not self.timesteps or bad:
            raise ErasureError(
                f"timesteps must be a non-empty list in [0, {num_train_timesteps}); got bad values {bad or '[]'}"
            )
        if self.steps_per_timestep < 1 or self.lr <= 0 or self.judge_every < 1:
            raise ErasureError("steps_per_timestep and judge_every must be >= 1 and lr > 0")


def project_to_simplex(weights: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row onto the probability simplex (sort-based, Duchi et al. 2008)."""
    sorted_w, _ = torch.sort(weights, dim=-1, descending=True)
    cumulative = sorted_w.cumsum(dim=-1) - 1.0
    ranks = torch.arange(1, weights.shape[-1] + 1, device=weights.device, dtype=weights.dtype)
    support = sorted_w - cumulative / ranks > 0
    rho = support.to(weights.dtype).cumsum(dim=-1).argmax(dim=-1, keepdim=True)
    theta = cumulative.gather(-1, rho) / (rho + 1).to(weights.dtype)
    return (weights - theta).clamp(min=0)


def allowed_token_ids(tokenizer) -> torch.Tensor:
    """Every vocabulary id except start/end-of-text (an end token in a slot would end the prompt early)."""
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    return torch.tensor([i for i in range(len(tokenizer)) if i not in special], dtype=torch.long)


def ids_with_tokens(slotted: SlottedPrompt, token_ids: list[int]) -> torch.Tensor:
    """The prompt's ids [1, L] with the slots holding `token_ids`: what the judged conditioning is made of."""
    ids = slotted.input_ids.clone()
    ids[0, slotted.adv_positions] = torch.tensor(token_ids, dtype=torch.long)
    return ids


@torch.no_grad()
def target_latent(model: SDModel, image: torch.Tensor) -> torch.Tensor:
    """The VAE latent x0 [1, 4, h, w] of a target image [1, 3, H, W] in [0, 1]."""
    if model.vae is None:
        raise ErasureError(f"model {model.name!r} has no VAE: UnlearnDiffAtk needs one to encode its target image")
    if image.ndim != 4 or image.shape[:2] != (1, 3):
        raise ErasureError(f"a target image must be one RGB image [1, 3, H, W] in [0, 1], got {tuple(image.shape)}")
    if image.shape[-1] != model.resolution or image.shape[-2] != model.resolution:
        image = F.interpolate(image, size=(model.resolution, model.resolution), mode="bilinear", antialias=True)
    pixels = image.to(model.device, model.dtype) * 2 - 1
    return model.vae.encode(pixels).latent_dist.mean * model.vae.config.scaling_factor


def make_target_image(model: SDModel, prompt: str, seed: int, generation: GenerationSettings) -> torch.Tensor:
    """The concept as the ORIGINAL model draws it for this prompt and seed."""
    return generate(
        model,
        encode_prompts(model, [prompt]),
        [seed],
        uncond=encode_prompts(model, [generation.negative_prompt]),
        steps=generation.steps,
        guidance=generation.guidance,
        scheduler=generation.scheduler,
    )


class _TokenDistributions:
    """One distribution per slot over the allowed vocabulary, read out straight-through."""

    def __init__(self, k: int, allowed: torch.Tensor, table: torch.Tensor, generator: torch.Generator):
        self.allowed = allowed.to(table.device)
        # The embedding rows of the allowed tokens, gathered once (a 150 MB copy for SD1's 49,406 x 768).
        self.table = table.detach()[self.allowed].float()
        start = torch.randint(len(allowed), (k,), generator=generator)
        # Start from random one-hot tokens: every step then evaluates a real, decodable prompt.
        self.weights = F.one_hot(start, len(allowed)).float().to(table.device).requires_grad_(True)

    def token_ids(self) -> list[int]:
        return self.allowed[self.weights.detach().argmax(dim=-1)].tolist()

    def straight_through_embeds(self) -> torch.Tensor:
        hard = F.one_hot(self.weights.argmax(dim=-1), self.weights.shape[-1]).to(self.weights.dtype)
        # Forward value is exactly the hard one-hot; the gradient is that of the soft weights.
        choice = hard + self.weights - self.weights.detach()
        return choice @ self.table

    @torch.no_grad()
    def project(self):
        self.weights.copy_(project_to_simplex(self.weights))


def denoising_loss(model: SDModel, cond: torch.Tensor, x0: torch.Tensor, timestep: int, noise: torch.Tensor):
    """MSE between the UNet's prediction at `timestep` and its training target (the diffusion-classifier
    score): the noise for epsilon models, the velocity for v-prediction ones."""
    t = torch.tensor([int(timestep)], device=x0.device)
    noisy = model.scheduler.add_noise(x0, noise, t)
    prediction = model.unet(noisy, t, encoder_hidden_states=cond.to(model.dtype)).sample
    target = denoising_target(model.scheduler, x0, noise, t)
    return F.mse_loss(prediction.float(), target.float())


class UnlearnDiffAtk(Probe):
    name = "unlearndiffatk"

    def __init__(self, config: UnlearnDiffAtkConfig | None = None):
        self.config = config or UnlearnDiffAtkConfig()

    def describe(self) -> dict:
        c = self.config
        sweep = list(c.timesteps)
        return {
            "name": self.name,
            "k": c.tokens(),
            "timesteps": f"{sweep[0]}..{sweep[-1]} ({len(sweep)} points)" if len(sweep) > 3 else sweep,
            "steps_per_timestep": c.steps_per_timestep,
            "lr": c.lr,
        }

    def run(
        self,
        model: SDModel,
        text_encoder: CLIPTextModel,
        prompt: str,
        *,
        seed: int,
        judge: Judge | None = None,
        generation: GenerationSettings | None = None,
        target_image: torch.Tensor | None = None,
    ) -> ProbeResult:
        """Attack `prompt` against `text_encoder`; `target_image` [1, 3, H, W] defaults to the original model's
        image for the same prompt and seed."""
        check_prompt(prompt)
        generation = generation or GenerationSettings()
        config = self.config
        config.check(model.scheduler.config.num_train_timesteps)
        if target_image is None:
            target_image = make_target_image(model, prompt, seed, generation)
        x0 = target_latent(model, target_image)
        slotted = slot_prompt(model.tokenizer, prompt, config.tokens(), insertion="prefix")
        generator = torch.Generator("cpu").manual_seed(int(seed))
        table = token_embedding_table(text_encoder)
        tokens = _TokenDistributions(config.tokens(), allowed_token_ids(model.tokenizer), table, generator)
        optimizer = torch.optim.Adam([tokens.weights], lr=config.lr)
        initial_ids = tokens.token_ids()
        losses, trace = [], []
        result = None
        for point, timestep in enumerate(config.timesteps):
            for _ in range(config.steps_per_timestep):
                noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
                cond = encode_slotted(text_encoder, slotted, None, tokens.straight_through_embeds())
                loss = denoising_loss(model, cond, x0, timestep, noise)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                tokens.project()
                losses.append(float(loss.detach()))
                if self.on_step is not None:
                    self.on_step(len(losses), losses[-1])
            last = point == len(config.timesteps) - 1
            # Without a judge nothing can stop the sweep early: generate once, at the end.
            if not last and (judge is None or (point + 1) % config.judge_every):
                continue
            result = self._evaluate(model, text_encoder, slotted, tokens.token_ids(), seed, judge, generation)
            trace.append({"timestep": int(timestep), "token_ids": result.adv_token_ids, "success": result.success})
            if result.success:
                break
        result.losses = losses
        result.details.update({"initial_token_ids": initial_ids, "steps": len(losses), "judged": trace, "stopped_at_timestep": trace[-1]["timestep"]})
        return result

    @torch.no_grad()
    def _evaluate(self, model, text_encoder, slotted, token_ids, seed, judge, generation) -> ProbeResult:
        """Generate and judge from the optimised ids themselves (no decode/re-tokenise drift)."""
        ids = ids_with_tokens(slotted, token_ids)
        cond = text_encoder(ids.to(text_encoder.device))[0].to(model.dtype)
        images, success, judged = generate_and_judge(model, text_encoder, cond, seed, judge, generation)
        adv_text = model.tokenizer.decode(token_ids)
        details = {"input_ids": ids[0].tolist(), "prompt": slotted.text, **judged}
        return ProbeResult(self.name, cond.cpu(), f"{adv_text} {slotted.text}", list(token_ids), [], images,
                           success, details)
