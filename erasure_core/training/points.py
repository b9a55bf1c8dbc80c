"""Where the training draws its noisy latents and teacher predictions: pools of DDIM trajectories sampled once
(`reuse_latents`, see latents.py), or fresh partial DDIM sampling per draw, as the public AdvUnlearn code does.

Every draw comes from the trainer's one seeded generator; the pools come from their own generator, so a resumed
run rebuilds exactly the same pools.
"""

from __future__ import annotations

import torch

from ..latents import LatentPool, PoolSample, UNetRunner, sample_noisy_latents


class TrainingPoints:
    def __init__(self, model, runner: UNetRunner, config, rng: torch.Generator, concept_conds, uncond, autocast,
                 captions=None):
        self.model, self.runner, self.config, self.rng = model, runner, config, rng
        self.concept_conds, self.uncond, self.autocast = concept_conds, uncond, autocast
        self.captions = captions  # ConceptCaptions or None: where `concept_pool_captions` samples from
        self.retain_conds: torch.Tensor | None = None
        self.concept_pools: list[LatentPool] | None = None
        self.retain_pool: LatentPool | None = None
        self.retain_scores: torch.Tensor | None = None  # per retain trajectory: its last retain loss (NaN: unseen)
        self.pool_evaluations = 0

    @property
    def device(self):
        return self.model.device

    def build_pools(self, retain_conds: torch.Tensor | None, key: tuple, cache: dict | None):
        """Sample the pools (unless `reuse_latents` is off); `cache` shares identical pools between runs."""
        config = self.config
        self.retain_conds = retain_conds
        if not config.reuse_latents or self.concept_pools is not None:
            return
        if cache is not None and key in cache:
            self.concept_pools, self.retain_pool = cache[key]
            self._init_scores()
            return
        before = self.runner.evaluations
        pool_rng = torch.Generator().manual_seed(config.seed + 1_000_003)
        build = lambda conds, index, keep: LatentPool.build(  # noqa: E731
            self.model, self.runner, conds, self.uncond, index, num_inference_steps=config.num_ddim_steps,
            guidance=config.guidance, generator=pool_rng, keep_uncond=keep)
        with self.autocast():
            self.concept_pools = [self._concept_pool(c, build, pool_rng) for c in range(self.concept_conds.shape[0])]
            if retain_conds is not None:
                order = torch.randperm(retain_conds.shape[0], generator=pool_rng)
                index = order.repeat(config.retain_pool_size // len(order) + 1)[: config.retain_pool_size]
                self.retain_pool = build(retain_conds, index, False)
        self.pool_evaluations = self.runner.evaluations - before
        if cache is not None:
            cache[key] = (self.concept_pools, self.retain_pool)
        self._init_scores()

    def _concept_pool(self, concept: int, build, pool_rng: torch.Generator) -> LatentPool:
        """The concept's trajectories: a `concept_pool_captions` share of them sampled from its captions (the
        contexts users write; captions in a random order), with the bare word's prediction put in at their latents
        so the bare-word terms keep their teacher; the rest from the bare word. A concept without captions: all."""
        size, cond = self.config.concept_pool_size, self.concept_conds[concept : concept + 1]
        captions = None if self.captions is None else self.captions.conds[concept]
        from_captions = 0 if captions is None else round(size * self.config.concept_pool_captions)
        parts = [build(cond, torch.zeros(size - from_captions, dtype=torch.long), True)] if size > from_captions else []
        if from_captions:
            order = torch.randperm(captions.shape[0], generator=pool_rng)
            index = order.repeat(from_captions // len(order) + 1)[:from_captions]
            parts.append(build(captions, index, True).relabel(self.runner, cond, self.config.max_unet_batch))
        return LatentPool.concat(parts) if len(parts) > 1 else parts[0]

    def _init_scores(self):
        if self.retain_pool is not None and self.config.retain_priority > 0 and self.retain_scores is None:
            self.retain_scores = torch.full((self.retain_pool.size,), float("nan"))

    def concept(self, concept: int, count: int, need_uncond: bool) -> PoolSample:
        """`count` noisy latents of the concept with the frozen model's prediction(s) there."""
        if self.concept_pools is not None:
            return self.concept_pools[concept].draw(count, self.rng, self.device)
        cond = self.concept_conds[concept : concept + 1]
        x_t, t = self._fresh_latents(cond, count)
        with torch.no_grad():
            if need_uncond:
                eps_uncond, eps_cond = self.runner.guided_pair(x_t, t, self.uncond, cond)
            else:
                eps_uncond, eps_cond = None, self.runner(x_t, t, cond).float()
        return PoolSample(x_t, t.reshape(1).expand(count), eps_cond, eps_uncond, torch.full((count,), concept))

    def retain_terms(self) -> list[tuple[str, float, PoolSample]]:
        """(term name, weight, points) of the retain terms: `retain_batch` points from any step, and as many
        again from the first, noisiest steps when `retain_early_weight` is on (config.py)."""
        config = self.config
        terms = [("retain", config.retain_weight, self.retain(config.retain_batch))]
        if config.retain_early_weight > 0:
            early = self.retain(config.retain_batch, config.retain_early_step_count)
            terms.append(("retain_early", config.retain_early_weight, early))
        return terms

    def retain(self, count: int, first_steps: int | None = None) -> PoolSample:
        """`count` retain points with the frozen model's prediction; from the first `first_steps` sampling
        steps only when given (None: any step)."""
        if self.retain_pool is not None:
            return self.retain_pool.draw(count, self.rng, self.device, first_steps=first_steps,
                                         row_weights=self._retain_row_weights())
        index = torch.randint(self.retain_conds.shape[0], (count,), generator=self.rng)
        conds = self.retain_conds[index.to(self.device)]
        x_t, t = self._fresh_latents(conds, count, first_steps)
        with torch.no_grad():
            teacher = self.runner(x_t, t, conds).float()
        return PoolSample(x_t, t.reshape(1).expand(count), teacher, None, index)

    def _retain_row_weights(self) -> torch.Tensor | None:
        """With `retain_priority` p: (1 - p) / N + p * score / sum(scores) per trajectory, a trajectory not yet
        seen scoring as the highest seen (so each is drawn and measured); None (uniform) when off."""
        scores = self.retain_scores
        if scores is None:
            return None
        seen = ~scores.isnan()
        if not seen.any():
            return None
        filled = torch.where(seen, scores, scores[seen].max()).clamp_min(1e-12)
        share = self.config.retain_priority
        return (1 - share) / len(filled) + share * filled / filled.sum()

    def observe_retain(self, sample: PoolSample, row_losses: torch.Tensor):
        """Record the retain loss of each drawn point as its trajectory's score (the latest measurement)."""
        if self.retain_scores is not None and sample.pool_rows is not None:
            self.retain_scores[sample.pool_rows.cpu()] = row_losses.detach().float().cpu()

    def scores_record(self) -> list | None:
        """The retain scores for a checkpoint's JSON metadata (None for a trajectory not yet seen)."""
        if self.retain_scores is None:
            return None
        return [None if score != score else float(score) for score in self.retain_scores.tolist()]

    def restore_scores(self, record: list | None):
        if record is not None:
            self.retain_scores = torch.tensor([float("nan") if v is None else v for v in record])

    def _fresh_latents(self, conds, count, first_steps: int | None = None):
        """Partial DDIM sampling from new noise, as the public code does for every loss evaluation."""
        index = int(torch.randint(first_steps or self.config.num_ddim_steps, (1,), generator=self.rng))
        shape = (count, self.model.unet.config.in_channels, self.model.latent_size, self.model.latent_size)
        noise = torch.randn(shape, generator=self.rng).to(self.device)
        return sample_noisy_latents(self.model, conds, self.uncond, index, noise=noise, runner=self.runner,
                                    num_inference_steps=self.config.num_ddim_steps, guidance=self.config.guidance)


def join_samples(samples: list[PoolSample]) -> PoolSample:
    """Pool samples concatenated into one (e.g. the points of a whole attack, for one teacher call)."""
    join = lambda name: torch.cat([getattr(s, name) for s in samples])  # noqa: E731
    uncond = None if samples[0].eps_uncond is None else join("eps_uncond")
    return PoolSample(join("latents"), join("timesteps"), join("eps_cond"), uncond, join("prompt_index"))
