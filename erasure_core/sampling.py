"""Prompt encoding and image generation through diffusers' own `StableDiffusionPipeline`.

Probes, evaluation, the demo and the nodes all generate through `generate` (and judge what it made through
`generate_and_judge_batch`), so an image made anywhere in the product for the same (conditioning, seed, steps,
guidance) is the same image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
from transformers import CLIPTextModel

from .errors import ErasureError
from .models import SDModel

SCHEDULERS = ("ddim", "lms")  # the samplers `generate` offers (the CLI reads this list)
_SCHEDULER_CHOICES = " or ".join(repr(s) for s in SCHEDULERS)

if TYPE_CHECKING:  # a judge is only called here; judges sit above sampling
    from .judges.base import Judge


def tokenize(model: SDModel, texts: Sequence[str]) -> torch.Tensor:
    """Token ids [N, max_length], padded and truncated the way SD1 does it."""
    return model.tokenizer(
        list(texts), padding="max_length", max_length=model.max_length, truncation=True, return_tensors="pt"
    ).input_ids


@torch.no_grad()
def encode_prompts(model: SDModel, texts: Sequence[str], text_encoder: CLIPTextModel | None = None) -> torch.Tensor:
    """SD1 conditioning (the encoder's last hidden state) [N, max_length, width] for plain text prompts."""
    encoder = text_encoder if text_encoder is not None else model.text_encoder
    ids = tokenize(model, texts).to(encoder.device)
    return encoder(ids)[0].to(model.dtype)


@torch.no_grad()
def generate(
    model: SDModel,
    cond: torch.Tensor,
    seeds: Sequence[int],
    *,
    uncond: torch.Tensor | None = None,
    steps: int = 20,
    guidance: float = 7.5,
    text_encoder: CLIPTextModel | None = None,
    scheduler: str = "ddim",
) -> torch.Tensor:
    """Images [N, 3, H, W] in [0, 1] for conditioning `cond` [N or 1, L, D], one seed per image.

    `uncond` defaults to the encoding of "" by `text_encoder` (or the model's own), as in SD1 pipelines.
    """
    seeds = list(seeds)
    n = len(seeds)
    if cond.shape[0] == 1 and n > 1:
        cond = cond.expand(n, -1, -1)
    if cond.shape[0] != n:
        raise ValueError(f"got {cond.shape[0]} conditionings for {n} seeds")
    if uncond is None:
        uncond = encode_prompts(model, [""], text_encoder)
    if uncond.shape[0] == 1 and n > 1:
        uncond = uncond.expand(n, -1, -1)
    pipe = model.pipeline(text_encoder)
    if scheduler == "lms":
        from diffusers import LMSDiscreteScheduler

        pipe.scheduler = LMSDiscreteScheduler.from_config(model.scheduler.config)
    elif scheduler != "ddim":
        raise ValueError(f"unknown scheduler {scheduler!r}: use {_SCHEDULER_CHOICES}")
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    # Draw the initial noise on the CPU per seed so results do not depend on the device or the batch.
    shape = (1, model.unet.config.in_channels, model.latent_size, model.latent_size)
    latents = torch.cat([torch.randn(shape, generator=g) for g in generators]).to(model.device, model.dtype)
    out = pipe(
        prompt_embeds=cond.to(model.device, model.dtype),
        negative_prompt_embeds=uncond.to(model.device, model.dtype),
        num_inference_steps=steps,
        guidance_scale=guidance,
        latents=latents,
        output_type="pt",
        height=model.resolution,
        width=model.resolution,
    )
    return out.images.float().clamp(0, 1).cpu()


@dataclass
class GenerationSettings:
    """How a probe (and evaluation) turns a conditioning into images."""

    steps: int = 20
    guidance: float = 7.5
    scheduler: str = "ddim"
    negative_prompt: str = ""

    def __post_init__(self):
        if self.steps < 1:
            raise ErasureError(f"generation steps must be >= 1, got {self.steps}")
        if self.scheduler not in SCHEDULERS:
            raise ErasureError(f"unknown scheduler {self.scheduler!r}: use {_SCHEDULER_CHOICES}")


def unconditional(model: SDModel, text_encoder: CLIPTextModel, generation: GenerationSettings) -> torch.Tensor:
    """The negative/unconditional embedding, made by the encoder under test (as a user's pipeline would)."""
    return encode_prompts(model, [generation.negative_prompt], text_encoder)


def generate_and_judge(
    model: SDModel,
    text_encoder: CLIPTextModel,
    cond: torch.Tensor,
    seed: int,
    judge: Judge | None,
    generation: GenerationSettings,
) -> tuple[torch.Tensor, bool | None, dict]:
    """Images for `cond` [1, L, D] at `seed`, and the judge's verdict (None, {} without a judge)."""
    images, successes, judged = generate_and_judge_batch(model, text_encoder, cond, [seed], judge, generation)
    return images, successes[0], judged[0]


def generate_and_judge_batch(
    model: SDModel,
    text_encoder: CLIPTextModel,
    conds: torch.Tensor,
    seeds: list[int],
    judge: Judge | None,
    generation: GenerationSettings,
) -> tuple[torch.Tensor, list[bool | None], list[dict]]:
    """Images for `conds` [B, L, D], one seed each, in ONE batched sampling run, and the judge's verdicts.
    Each seed's initial noise is drawn on its own (sampling.generate), so an image does not depend on the batch."""
    images = generate(
        model,
        conds.detach(),
        list(seeds),
        uncond=unconditional(model, text_encoder, generation),
        steps=generation.steps,
        guidance=generation.guidance,
        text_encoder=text_encoder,
        scheduler=generation.scheduler,
    )
    if judge is None:
        return images, [None] * len(seeds), [{} for _ in seeds]
    verdict = judge(images)
    judged = [{"score": float(verdict.scores[i]), **_first(verdict.details[i:i + 1])} for i in range(len(seeds))]
    return images, [bool(f) for f in verdict.flags], judged


def _first(details: list[dict]) -> dict:
    return {"judge": details[0]} if details else {}
