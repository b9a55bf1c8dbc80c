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
from ..sampling import GenerationSettings, encode_prompts, generate, generate_and_judge_batch
from .base import Probe, ProbeResult, cached_per_case, check_batch

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


# The projection needs a row's largest values only as far as its support reaches: measured during the demo's
# attack, a few hundred to 3,000 of the 49,406 vocabulary entries after the first step (up to 22,000 at the
# first). Sorting every entry of every slot was 21% of an UnlearnDiffAtk step on the demo model (0.47 s of a step
# at 32 prompts, one thread). So the largest 1,024 are taken by top-k, the rows whose support reaches the last
# of them again with 8,192, and only what is left is sorted in full: the same thresholds as the full sort, bit
# for bit (a test checks it), for about a fifth of its time.
PROJECTION_HEADS = (1024, 8192)


def project_to_simplex(weights: torch.Tensor, heads: tuple[int, ...] = PROJECTION_HEADS) -> torch.Tensor:
    """Euclidean projection of each row onto the probability simplex (sort-based, Duchi et al. 2008), sorting
    only as many of a row's largest entries as its support needs (`heads`, then all)."""
    rows = weights.reshape(-1, weights.shape[-1])
    theta = torch.empty(rows.shape[0], 1, dtype=rows.dtype, device=rows.device)
    pending = torch.arange(rows.shape[0], device=rows.device)
    for head in (*[h for h in heads if h < rows.shape[-1]], rows.shape[-1]):
        if head == rows.shape[-1]:
            largest = torch.sort(rows[pending], dim=-1, descending=True).values
        else:
            largest = torch.topk(rows[pending], head, dim=-1).values
        theta[pending], reaches_end = _simplex_threshold(largest)
        pending = pending[reaches_end]
        if not len(pending):
            break
    return (rows - theta).clamp(min=0).reshape(weights.shape)


def _simplex_threshold(sorted_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(theta [R, 1], whether the support reaches the last given entry [R]) for rows sorted in descending order:
    the support is a prefix of them, so when it ends before the last entry the larger rest cannot change it."""
    cumulative = sorted_rows.cumsum(dim=-1) - 1.0
    ranks = torch.arange(1, sorted_rows.shape[-1] + 1, device=sorted_rows.device, dtype=sorted_rows.dtype)
    support = sorted_rows - cumulative / ranks > 0
    rho = support.to(sorted_rows.dtype).cumsum(dim=-1).argmax(dim=-1, keepdim=True)
    theta = cumulative.gather(-1, rho) / (rho + 1).to(sorted_rows.dtype)
    return theta, support[:, -1]


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
    return make_target_images(model, [prompt], [seed], generation)[0]


def make_target_images(model: SDModel, prompts: list[str], seeds: list[int], generation: GenerationSettings):
    """The ORIGINAL model's image [1, 3, H, W] for each prompt and seed, in one batched sampling run (cached
    per model: every encoder under test attacks towards the same targets)."""
    g = generation
    keys = [("unlearndiffatk-target", p, int(s), g.steps, g.guidance, g.scheduler, g.negative_prompt)
            for p, s in zip(prompts, seeds)]

    def compute(missing):
        images = generate(model, encode_prompts(model, [prompts[i] for i in missing]), [seeds[i] for i in missing],
                          uncond=encode_prompts(model, [g.negative_prompt]), steps=g.steps, guidance=g.guidance,
                          scheduler=g.scheduler)
        return [images[j:j + 1] for j in range(len(missing))]

    return cached_per_case(model, keys, compute)


class _TokenDistributions:
    """One distribution per slot over the allowed vocabulary, read out straight-through; a batch of prompts
    holds weights [B, k, V], one row of distributions per prompt."""

    def __init__(self, k: int, allowed: torch.Tensor, table: torch.Tensor, generators: list[torch.Generator]):
        self.allowed = allowed.to(table.device)
        # The embedding rows of the allowed tokens, gathered once (a 150 MB copy for SD1's 49,406 x 768).
        self.table = table.detach()[self.allowed].float()
        start = torch.stack([torch.randint(len(allowed), (k,), generator=g) for g in generators])
        # Start from random one-hot tokens: every step then evaluates a real, decodable prompt.
        self.weights = F.one_hot(start, len(allowed)).float().to(table.device).requires_grad_(True)

    def token_ids(self) -> list[list[int]]:
        return self.allowed[self.weights.detach().argmax(dim=-1)].tolist()

    def straight_through_embeds(self) -> torch.Tensor:
        hard = F.one_hot(self.weights.argmax(dim=-1), self.weights.shape[-1]).to(self.weights.dtype)
        # Forward value is exactly the hard one-hot; the gradient is that of the soft weights.
        choice = hard + self.weights - self.weights.detach()
        return choice @ self.table

    @torch.no_grad()
    def project(self):
        self.weights.copy_(project_to_simplex(self.weights))

    def keep(self, rows: list[int], optimizer: torch.optim.Adam) -> torch.optim.Adam:
        """Drop the prompts already won from the batch: the weights and Adam's moments of `rows` carry on
        (Adam acts element by element, so the others' trajectories are unchanged)."""
        state = optimizer.state.get(self.weights, {})
        self.weights = self.weights.detach()[rows].clone().requires_grad_(True)
        kept = torch.optim.Adam([self.weights], **{k: v for k, v in optimizer.defaults.items()
                                                   if k in ("lr", "betas", "eps")})
        if state:
            kept.state[self.weights] = {k: (v[rows].clone() if torch.is_tensor(v) and v.dim() else v)
                                        for k, v in state.items()}
        return kept


def denoising_loss(model: SDModel, cond: torch.Tensor, x0: torch.Tensor, timestep: int, noise: torch.Tensor):
    """MSE between the UNet's prediction at `timestep` and its training target (the diffusion-classifier
    score): the noise for epsilon models, the velocity for v-prediction ones. One loss per row of `x0` [B]."""
    t = torch.full((x0.shape[0],), int(timestep), device=x0.device, dtype=torch.long)
    noisy = model.scheduler.add_noise(x0, noise, t)
    prediction = model.unet(noisy, t, encoder_hidden_states=cond.to(model.dtype)).sample
    target = denoising_target(model.scheduler, x0, noise, t)
    return ((prediction.float() - target.float()) ** 2).flatten(1).mean(dim=1)


class UnlearnDiffAtk(Probe):
    name = "unlearndiffatk"

    def __init__(self, config: UnlearnDiffAtkConfig | None = None):
        self.config = config or UnlearnDiffAtkConfig()

    def check(self, model) -> None:
        self.config.check(model.scheduler.config.num_train_timesteps)

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
        return self.run_batch(model, text_encoder, [prompt], seeds=[seed], judge=judge, generation=generation,
                              target_images=None if target_image is None else [target_image])[0]

    def run_batch(
        self,
        model: SDModel,
        text_encoder: CLIPTextModel,
        prompts: list[str],
        *,
        seeds: list[int],
        judge: Judge | None = None,
        generation: GenerationSettings | None = None,
        target_images: list[torch.Tensor] | None = None,
    ) -> list[ProbeResult]:
        """Attack many prompts at once: one batched UNet call per step for the prompts not yet won. Every
        prompt's loss depends on its own tokens only and each draws its noise from its own seed, so a
        prompt's attack is the one it would get alone; a prompt leaves the batch at its first judged success."""
        check_batch(prompts, seeds)
        generation = generation or GenerationSettings()
        config = self.config
        self.check(model)
        if target_images is None:
            target_images = make_target_images(model, prompts, seeds, generation)
        x0 = torch.cat([target_latent(model, image) for image in target_images])
        slotted = [slot_prompt(model.tokenizer, p, config.tokens(), insertion="prefix") for p in prompts]
        generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
        tokens = _TokenDistributions(config.tokens(), allowed_token_ids(model.tokenizer),
                                     token_embedding_table(text_encoder), generators)
        optimizer = torch.optim.Adam([tokens.weights], lr=config.lr)
        initial_ids = tokens.token_ids()
        active = list(range(len(prompts)))  # the prompts still in the batch
        losses = [[] for _ in prompts]
        traces = [[] for _ in prompts]
        results: list[ProbeResult | None] = [None] * len(prompts)
        ids = torch.cat([s.input_ids for s in slotted])
        positions = slotted[0].adv_positions  # prefix slots: the same positions in every prompt
        for point, timestep in enumerate(config.timesteps):
            for _ in range(config.steps_per_timestep):
                noise = torch.cat([torch.randn(x0[i:i + 1].shape, generator=generators[i]) for i in active])
                cond = encode_slotted(text_encoder, ids[active], positions, tokens.straight_through_embeds())
                loss = denoising_loss(model, cond, x0[active], timestep, noise.to(x0.device, x0.dtype))
                optimizer.zero_grad(set_to_none=True)
                loss.sum().backward()
                optimizer.step()
                tokens.project()
                for j, i in enumerate(active):
                    losses[i].append(float(loss[j].detach()))
                if self.on_step is not None:
                    self.on_step(len(losses[active[0]]), float(loss.detach().mean()))
            last = point == len(config.timesteps) - 1
            # Without a judge nothing can stop the sweep early: generate once, at the end.
            if not last and (judge is None or (point + 1) % config.judge_every):
                continue
            judged = self._evaluate(model, text_encoder, [slotted[i] for i in active], tokens.token_ids(),
                                    [seeds[i] for i in active], judge, generation)
            still = []
            for j, i in enumerate(active):
                results[i] = judged[j]
                traces[i].append({"timestep": int(timestep), "token_ids": judged[j].adv_token_ids,
                                  "success": judged[j].success})
                if not judged[j].success:
                    still.append(j)
            if len(still) < len(active):
                if not still:
                    break
                optimizer = tokens.keep(still, optimizer)
                active = [active[j] for j in still]
        for i, result in enumerate(results):
            result.losses = losses[i]
            result.details.update({"initial_token_ids": initial_ids[i], "steps": len(losses[i]),
                                   "judged": traces[i], "stopped_at_timestep": traces[i][-1]["timestep"]})
        return results

    @torch.no_grad()
    def _evaluate(self, model, text_encoder, slotted, token_ids, seeds, judge, generation) -> list[ProbeResult]:
        """Generate and judge from the optimised ids themselves (no decode/re-tokenise drift), in one batch."""
        ids = torch.cat([ids_with_tokens(s, t) for s, t in zip(slotted, token_ids)])
        conds = text_encoder(ids.to(text_encoder.device))[0].to(model.dtype)
        images, successes, judged = generate_and_judge_batch(model, text_encoder, conds, seeds, judge, generation)
        results = []
        for j, (s, t) in enumerate(zip(slotted, token_ids)):
            details = {"input_ids": ids[j].tolist(), "prompt": s.text, **judged[j]}
            results.append(ProbeResult(self.name, conds[j:j + 1].cpu(), f"{model.tokenizer.decode(t)} {s.text}",
                                       list(t), [], images[j:j + 1], successes[j], details))
        return results
