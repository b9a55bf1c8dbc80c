"""Noisy latents for training: partial DDIM sampling (eta 0, classifier-free guidance) with the FROZEN model.

AdvUnlearn trains on latents the original model itself produces for the concept: start from noise, run the
50-step DDIM sampler with guidance 3 for `timestep_index` steps, and train at the timestep reached.

Differences from the public code, on purpose:
- The latent after i DDIM steps is evaluated at the timestep it actually has (`scheduler.timesteps[i]`).
  The public code evaluates it at a timestep drawn from [20 i, 20 i + 20), the reverse end of the schedule.
- `LatentPool` samples whole trajectories once and keeps, at every step, the latent AND the two noise
  predictions the sampler computed there. Those predictions are exactly the teacher outputs the losses need
  (UNet(x_t, t, E0("")) and UNet(x_t, t, E0(c))), so a pooled training step or attack step costs no teacher
  evaluation and no re-sampling. The public code re-runs partial sampling for every attack step.

Every UNet call goes through a `UNetRunner`, which counts evaluations (one per latent in the batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler

from .models import SDModel


class UNetRunner:
    """Calls the frozen UNet and counts evaluations: `evaluations` = latents passed forward,
    `grad_evaluations` = those of them run with autograd on (each is later back-propagated once)."""

    def __init__(self, unet):
        self.unet = unet
        # Looked up once: diffusers' `unet.dtype` walks every submodule for casting hooks, 0.62 ms a call on the
        # demo model, about 3,400 calls (2 s) in the demo's AdvUnlearn training. A runner serves one training run
        # or probe, during which the frozen UNet is never cast.
        self.dtype = unet.dtype
        self.evaluations = 0
        self.grad_evaluations = 0

    def __call__(self, latents: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        batch = latents.shape[0]
        timesteps = torch.as_tensor(timesteps, device=latents.device).reshape(-1).expand(batch)
        cond = cond.expand(batch, -1, -1) if cond.shape[0] == 1 and batch > 1 else cond
        self.evaluations += batch
        if torch.is_grad_enabled():
            self.grad_evaluations += batch
        return self.unet(latents.to(self.dtype), timesteps, encoder_hidden_states=cond.to(self.dtype)).sample

    def guided_pair(self, latents, timestep, uncond, cond):
        """(eps_uncond, eps_cond) for a batch of latents, in ONE UNet call of twice the batch (as SD does)."""
        batch = latents.shape[0]
        uncond = uncond.expand(batch, -1, -1) if uncond.shape[0] == 1 else uncond
        cond = cond.expand(batch, -1, -1) if cond.shape[0] == 1 else cond
        eps = self(torch.cat([latents, latents]), timestep, torch.cat([uncond, cond]))
        return eps.float().chunk(2)


def ddim_scheduler(model: SDModel, num_inference_steps: int) -> DDIMScheduler:
    scheduler = DDIMScheduler.from_config(model.scheduler.config)
    scheduler.set_timesteps(num_inference_steps)
    return scheduler


def initial_noise(model: SDModel, batch: int, generator: torch.Generator | None) -> torch.Tensor:
    """Initial latents drawn on the CPU (the same numbers on every device), moved to the model's device."""
    shape = (batch, model.unet.config.in_channels, model.latent_size, model.latent_size)
    return torch.randn(shape, generator=generator).to(model.device)


@torch.no_grad()
def sample_noisy_latents(
    model: SDModel,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    timestep_index: int,
    *,
    num_inference_steps: int = 50,
    guidance: float = 3.0,
    generator: torch.Generator | None = None,
    runner: UNetRunner | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `timestep_index` DDIM steps (eta 0, guidance `guidance`) from noise; return (x_t, t).

    `cond` [B, L, D] (or [1, L, D] with `noise` of batch B) is the prompt conditioning, `uncond` the
    empty prompt's. x_t has the noise level of t = scheduler.timesteps[timestep_index]. Costs
    2 * B * timestep_index UNet evaluations.
    """
    if not 0 <= timestep_index < num_inference_steps:
        raise ValueError(f"timestep_index must be in [0, {num_inference_steps}), got {timestep_index}")
    runner = runner or UNetRunner(model.unet)
    scheduler = ddim_scheduler(model, num_inference_steps)
    latents = noise if noise is not None else initial_noise(model, cond.shape[0], generator)
    for t in scheduler.timesteps[:timestep_index]:
        eps_uncond, eps_cond = runner.guided_pair(latents, t, uncond, cond)
        eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        latents = scheduler.step(eps, t, latents.float(), eta=0.0).prev_sample
    return latents.float(), scheduler.timesteps[timestep_index].to(latents.device)


@dataclass
class PoolSample:
    """Pooled latents [N, C, H, W] with their timesteps [N] and the frozen model's predictions there."""

    latents: torch.Tensor
    timesteps: torch.Tensor
    eps_cond: torch.Tensor
    eps_uncond: torch.Tensor | None
    prompt_index: torch.Tensor
    pool_rows: torch.Tensor | None = None  # the trajectory each point was drawn from (None: not from a pool)

    def to(self, device) -> "PoolSample":
        move = lambda x: None if x is None else x.to(device)  # noqa: E731
        return PoolSample(move(self.latents), move(self.timesteps), move(self.eps_cond), move(self.eps_uncond),
                          self.prompt_index, self.pool_rows)


@dataclass
class LatentPool:
    """Whole DDIM trajectories of the frozen model, kept on the CPU: for trajectory n and step s, the latent
    x_s, and the guided sampler's two predictions at it (cond and, if kept, uncond).

    Drawing (trajectory, step) pairs at random gives training points distributed like the public code's
    (uniform step, fresh-looking latent) at a fraction of the cost: building costs
    2 * num_inference_steps evaluations per trajectory, once; a draw costs nothing.
    """

    latents: torch.Tensor  # [N, S, C, H, W]
    eps_cond: torch.Tensor  # [N, S, C, H, W]
    eps_uncond: torch.Tensor | None  # [N, S, C, H, W] or None
    timesteps: torch.Tensor  # [S]
    prompt_index: torch.Tensor  # [N]: which conditioning each trajectory was sampled with

    @property
    def size(self) -> int:
        return int(self.latents.shape[0])

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        model: SDModel,
        runner: UNetRunner,
        conds: torch.Tensor,
        uncond: torch.Tensor,
        prompt_index: torch.Tensor,
        *,
        num_inference_steps: int = 50,
        guidance: float = 3.0,
        generator: torch.Generator | None = None,
        keep_uncond: bool = True,
        batch_size: int = 4,
    ) -> "LatentPool":
        """One trajectory per entry of `prompt_index` (an index into `conds` [P, L, D])."""
        scheduler = ddim_scheduler(model, num_inference_steps)
        chunks = [cls._trajectories(model, runner, scheduler, conds[idx], uncond, guidance, generator, keep_uncond)
                  for idx in prompt_index.split(batch_size)]
        latents, eps_cond, eps_uncond = (list(parts) for parts in zip(*chunks))
        return cls(
            latents=torch.cat(latents),
            eps_cond=torch.cat(eps_cond),
            eps_uncond=torch.cat(eps_uncond) if keep_uncond else None,
            timesteps=scheduler.timesteps.clone().cpu(),
            prompt_index=prompt_index.clone().cpu(),
        )

    @staticmethod
    def _trajectories(model, runner, scheduler, cond, uncond, guidance, generator, keep_uncond):
        latents = initial_noise(model, cond.shape[0], generator)
        xs, conds, unconds = [], [], []
        for t in scheduler.timesteps:
            eps_uncond, eps_cond = runner.guided_pair(latents, t, uncond, cond)
            xs.append(latents.float().cpu())
            conds.append(eps_cond.cpu())
            if keep_uncond:
                unconds.append(eps_uncond.cpu())
            eps = eps_uncond + guidance * (eps_cond - eps_uncond)
            latents = scheduler.step(eps, t, latents.float(), eta=0.0).prev_sample
        stack = lambda parts: torch.stack(parts, dim=1) if parts else None  # noqa: E731
        return stack(xs), stack(conds), stack(unconds)

    @torch.no_grad()
    def relabel(self, runner: UNetRunner, cond: torch.Tensor, batch_size: int) -> "LatentPool":
        """The same latents with `cond`'s prediction [1, L, D] as eps_cond (and prompt_index 0): trajectories
        sampled from one prompt, taught with another's (one evaluation per latent, `batch_size` latents a call)."""
        flat = self.latents.flatten(0, 1)
        steps = self.timesteps.repeat(self.size)
        eps = torch.cat([runner(x.to(cond.device), t.to(cond.device), cond.expand(len(x), -1, -1)).float().cpu()
                         for x, t in zip(flat.split(batch_size), steps.split(batch_size))])
        return LatentPool(self.latents, eps.view_as(self.eps_cond), self.eps_uncond, self.timesteps,
                          torch.zeros_like(self.prompt_index))

    @classmethod
    def concat(cls, pools: list["LatentPool"]) -> "LatentPool":
        """One pool of the trajectories of `pools` (same sampling steps; uncond kept by all or by none)."""
        join = lambda name: torch.cat([getattr(p, name) for p in pools])  # noqa: E731
        uncond = None if pools[0].eps_uncond is None else join("eps_uncond")
        return cls(join("latents"), join("eps_cond"), uncond, pools[0].timesteps, join("prompt_index"))

    def draw(self, count: int, generator: torch.Generator | None = None, device=None,
             first_steps: int | None = None, row_weights: torch.Tensor | None = None) -> PoolSample:
        """`count` random (trajectory, step) pairs, drawn independently and uniformly; from the first
        `first_steps` sampling steps only (the noisiest) when given; trajectories in proportion to `row_weights`
        (one per trajectory) when given."""
        if first_steps is not None and not 1 <= first_steps <= len(self.timesteps):
            raise ValueError(f"first_steps must be in [1, {len(self.timesteps)}] (the pool's steps), got {first_steps}")
        rows = torch.randint(self.size, (count,), generator=generator) if row_weights is None else \
            torch.multinomial(row_weights, count, replacement=True, generator=generator)
        steps = torch.randint(first_steps or len(self.timesteps), (count,), generator=generator)
        sample = PoolSample(
            latents=self.latents[rows, steps],
            timesteps=self.timesteps[steps],
            eps_cond=self.eps_cond[rows, steps],
            eps_uncond=None if self.eps_uncond is None else self.eps_uncond[rows, steps],
            prompt_index=self.prompt_index[rows],
            pool_rows=rows,
        )
        return sample.to(device) if device is not None else sample

    def nbytes(self) -> int:
        tensors = [self.latents, self.eps_cond] + ([self.eps_uncond] if self.eps_uncond is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)
