"""AdvUnlearn (and plain ESD) erasure of a concept from an SD1.x text encoder.

The loop, per iteration (see shared notes, advunlearn-method.md):
1. draw a concept (several concepts: one per attack refresh);
2. after warm-up (method "advunlearn" only): the inner attack optimises k adversarial token embeddings so
   that the CURRENT encoder's prediction for "concept + adversarial tokens" matches the original model's
   prediction for the concept (the attacker brings the concept back);
3. unlearning loss: the trained encoder's prediction for the (attacked) concept prompt must match ESD's
   negative-guidance target; retain loss: on a batch of unrelated prompts it must match the original encoder;
4. one Adam step on the selected encoder parameters.

Cost choices (the public code's waste, not repeated): ONE frozen UNet serves as teacher and as the network
gradients pass through (requires_grad False: no UNet gradients are computed or stored); the original encoder's
encodings of concepts, "" and retain prompts are computed once; with `reuse_latents` the noisy latents and the
teacher predictions come from a pool of DDIM trajectories sampled once (see latents.py); autocast bf16/fp16 on
GPU; the retain batch is back-propagated in micro-batches of `max_unet_batch` latents (same gradient, less
activation memory); optional gradient checkpointing. Every UNet evaluation is counted.

Reproducibility: every random draw comes from one seeded CPU generator; its state, the trained weights, Adam's
state and the adversarial embeddings go into a safetensors checkpoint, so a resumed run ends with the same
weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open

from .attacks.soft_prompt import ATTACK_METHODS, SoftPromptConfig, optimize_adversarial_embeddings
from .encoders import encoder_hash
from .errors import ErasureCancelled, ErasureDiverged, ErasureError
from .io import atomic_save_safetensors
from .latents import LatentPool, PoolSample, UNetRunner, sample_noisy_latents
from .losses import attack_loss, esd_target, retain_loss, unlearning_loss
from .models import SDModel
from .presets import PRESETS, filter_retain_prompts, load_retain_prompts, preset_values
from .prompts import INSERTIONS, check_concept, slot_prompt, encode_slotted

METHODS = ("advunlearn", "esd")
LAYER_GROUPS = ("all", "mlp", "attention")
PRECISIONS = ("auto", "no", "bf16", "fp16")
CHECKPOINT_FORMAT = "erasure_core.checkpoint/1"
# Fields that may differ between a checkpoint's config and the config given to resume it.
RESUMABLE_CHANGES = {"iterations", "checkpoint_every"}


@dataclass
class EraseConfig:
    """Everything that defines an erasure run. Defaults follow AdvUnlearn's paper/public code (object preset).

    layers: "all" (every transformer layer, plus the final layer norm if `train_final_layer_norm`), "mlp" or
    "attention" (those sub-modules of every layer), or a list of layer indices (exactly those layers).
    mixed_precision: "auto" = bf16 autocast on GPU, none on CPU.
    reuse_latents: draw noisy latents and teacher predictions from pools of DDIM trajectories sampled once
    (`concept_pool_size` per concept, `retain_pool_size` for the retain prompts) instead of re-sampling for
    every training and attack step.
    """

    method: str = "advunlearn"
    preset: str | None = None
    iterations: int = 1000
    lr: float = 1e-5
    warmup_iterations: int = 200
    attack_steps: int = 30
    attack_k: int = 1
    attack_method: str = "pgd"
    attack_lr: float = 1e-3
    attack_init: str = "previous"
    attack_insertion: str = "prefix"
    attack_every: int = 1
    retain_weight: float = 0.5
    retain_batch: int = 5
    retain_set: str = "objects"
    retain_prompts: list[str] | None = None
    negative_guidance: float = 1.0
    layers: str | list[int] = "all"
    train_final_layer_norm: bool = True
    num_ddim_steps: int = 50
    guidance: float = 3.0
    seed: int = 0
    reuse_latents: bool = True
    concept_pool_size: int = 16
    retain_pool_size: int = 48
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    max_unet_batch: int = 1
    checkpoint_every: int = 100

    def __post_init__(self):
        self.layers = parse_layers(self.layers)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "EraseConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ErasureError(f"unknown erase option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values).validate()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "EraseConfig":
        """The preset's values, then `overrides` (None values are ignored, so a CLI can pass unset options)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls.from_dict({**preset_values(name), "preset": name, **given})

    def attack_config(self) -> SoftPromptConfig:
        init = "previous" if self.attack_init == "previous" else "random_vocab"
        return SoftPromptConfig(k=self.attack_k, steps=self.attack_steps, lr=self.attack_lr,
                                method=self.attack_method, init=init, insertion=self.attack_insertion)

    def validate(self) -> "EraseConfig":
        _check(self.method in METHODS, f"unknown method {self.method!r}: use one of {', '.join(METHODS)}")
        _check(self.attack_method in ATTACK_METHODS,
               f"unknown attack method {self.attack_method!r}: use one of {', '.join(ATTACK_METHODS)}")
        _check(self.attack_insertion in INSERTIONS,
               f"unknown insertion {self.attack_insertion!r}: use one of {', '.join(INSERTIONS)}")
        _check(self.attack_init in ("previous", "random_vocab", "random"),
               f"unknown attack init {self.attack_init!r}: use 'previous' or 'random_vocab'")
        _check(self.mixed_precision in PRECISIONS,
               f"unknown mixed_precision {self.mixed_precision!r}: use one of {', '.join(PRECISIONS)}")
        _check(self.preset is None or self.preset in PRESETS,
               f"unknown preset {self.preset!r}: use one of {', '.join(PRESETS)}")
        for name in ("iterations", "warmup_iterations", "attack_steps", "retain_batch", "checkpoint_every"):
            _check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("attack_k", "attack_every", "num_ddim_steps", "concept_pool_size", "retain_pool_size",
                     "max_unet_batch"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        _check(self.lr > 0 and self.attack_lr > 0, "lr and attack_lr must be > 0")
        _check(self.retain_weight >= 0, f"retain_weight must be >= 0, got {self.retain_weight}")
        return self


def _check(condition: bool, message: str):
    if not condition:
        raise ErasureError(message)


def parse_layers(layers) -> str | list[int]:
    """"all" | "mlp" | "attention" | a list of layer indices (also "1,3" as text)."""
    if isinstance(layers, str):
        if layers in LAYER_GROUPS:
            return layers
        try:
            return [int(part) for part in layers.split(",") if part.strip()]
        except ValueError:
            raise ErasureError(f"unknown layers {layers!r}: use all, mlp, attention or layer indices like 0,1,2")
    if isinstance(layers, (list, tuple)) and layers and all(isinstance(i, int) for i in layers):
        return sorted(set(int(i) for i in layers))
    raise ErasureError(f"unknown layers {layers!r}: use all, mlp, attention or a non-empty list of layer indices")


def _encoder_parts(text_encoder):
    """(transformer layers, final layer norm) on transformers 5.x (flat) and 4.x (`.text_model`)."""
    core = getattr(text_encoder, "text_model", text_encoder)
    return core.encoder.layers, core.final_layer_norm


def select_trainable_parameters(text_encoder, layers="all", train_final_layer_norm=True):
    """[(name, parameter)] to train. Layers are chosen by their index in the layer list, never by matching
    names as text (so layer 1 is layer 1 only, not also 10 and 11)."""
    layers = parse_layers(layers)
    blocks, final_norm = _encoder_parts(text_encoder)
    if isinstance(layers, list):
        bad = [i for i in layers if not 0 <= i < len(blocks)]
        _check(not bad, f"layer index(es) {bad} out of range: this encoder has layers 0..{len(blocks) - 1}")
    chosen = []
    for index, block in enumerate(blocks):
        modules = _modules_of(block, layers, index)
        chosen += [p for module in modules for p in module.parameters()]
    if layers == "all" and train_final_layer_norm:
        chosen += list(final_norm.parameters())
    ids = {id(p) for p in chosen}
    return [(name, p) for name, p in text_encoder.named_parameters() if id(p) in ids]


def _modules_of(block, layers, index):
    if layers == "all":
        return [block]
    if layers == "mlp":
        return [block.mlp]
    if layers == "attention":
        return [block.self_attn]
    return [block] if index in layers else []


@dataclass
class EraseResult:
    text_encoder: object  # CLIPTextModel: the trained copy
    history: list[dict]
    config: EraseConfig
    unet_evaluations: int
    metadata: dict = field(default_factory=dict)


class _CancelRequested(Exception):
    """Raised inside an iteration to abandon it; the checkpoint then holds the state before the iteration."""


def erase(
    model: SDModel,
    concepts: list[str],
    config: EraseConfig | None = None,
    *,
    progress: Callable[[int, int, dict], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    checkpoint_path: str | Path | None = None,
    resume_from: str | Path | None = None,
    latent_cache: dict | None = None,
) -> EraseResult:
    """Erase `concepts` from a copy of `model.text_encoder`; `model` itself is left untouched.

    latent_cache: a dict kept by the caller across runs on the same model; runs whose pools would be identical
    (same concepts, retain prompts, sampling settings and seed; ESD and AdvUnlearn of one concept, say) sample
    them once and share them.

    progress(step, total, logs) is called after every iteration; should_cancel() is polled during it. On
    cancel a checkpoint is written to `checkpoint_path` and ErasureCancelled raised; a NaN/inf loss raises
    ErasureDiverged naming the iteration and the last good checkpoint. `resume_from` continues a checkpoint.
    """
    config = (config or EraseConfig()).validate()
    # A resumed run keeps checkpointing into the file it came from unless told otherwise.
    trainer = _Trainer(model, _clean_concepts(model, concepts), config, checkpoint_path or resume_from)
    trainer.latent_cache = latent_cache
    if resume_from is not None:
        trainer.restore(resume_from)
    return trainer.run(progress, should_cancel)


def _clean_concepts(model, concepts) -> list[str]:
    if isinstance(concepts, str):
        concepts = [concepts]
    _check(bool(concepts), "give at least one concept to erase, e.g. 'nudity' or 'Van Gogh'")
    for concept in concepts:
        check_concept(model.tokenizer, concept)
    return [c.strip() for c in concepts]


class _Trainer:
    def __init__(self, model: SDModel, concepts: list[str], config: EraseConfig, checkpoint_path):
        self.model, self.concepts, self.config = model, concepts, config
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.last_checkpoint: Path | None = None
        self.device = model.device
        self.precision = _resolve_precision(config.mixed_precision, self.device)
        model.unet.requires_grad_(False)
        model.text_encoder.requires_grad_(False)
        self.runner = UNetRunner(model.unet)
        # Identifies the base model's encoder in checkpoints (resume refuses another) and in result metadata.
        self.base_encoder_hash = encoder_hash(model.text_encoder)
        self._seed_everything(config.seed)
        self.rng = torch.Generator().manual_seed(config.seed)
        self._build_student()
        self._prepare_prompts()
        self.adversarial: dict[int, torch.Tensor] = {}
        self.current_concept = 0
        self.start_step, self.history, self.previous_evaluations = 0, [], 0
        self.pool_evaluations = 0
        self.concept_pools: list[LatentPool] | None = None
        self.retain_pool: LatentPool | None = None
        self.latent_cache: dict | None = None

    # ----- set-up -----
    @staticmethod
    def _seed_everything(seed: int):
        random.seed(seed)
        torch.manual_seed(seed)  # also seeds CUDA; the trainer's own draws use its generator

    def _build_student(self):
        config = self.config
        self.student = copy.deepcopy(self.model.text_encoder).float().to(self.device)
        self.student.requires_grad_(False)
        self.named_params = select_trainable_parameters(self.student, config.layers, config.train_final_layer_norm)
        _check(bool(self.named_params), f"layers={config.layers!r} selects no parameters")
        for _, param in self.named_params:
            param.requires_grad_(True)
        self.optimizer = torch.optim.Adam([p for _, p in self.named_params], lr=config.lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    @torch.no_grad()
    def _prepare_prompts(self):
        """Slots and the ORIGINAL encoder's encodings, computed once for the whole run."""
        tok, config, encoder = self.model.tokenizer, self.config, self.model.text_encoder
        self.plain_slots = [slot_prompt(tok, c, 0) for c in self.concepts]
        self.adv_slots = [
            slot_prompt(tok, c, config.attack_k, config.attack_insertion,
                        replace_word=c if config.attack_insertion == "replace" else None)
            for c in self.concepts
        ]
        encode = lambda ids: encoder(ids.to(encoder.device))[0].float().to(self.device)  # noqa: E731
        self.uncond = encode(slot_prompt(tok, "", 0).input_ids)
        self.concept_conds = torch.cat([encode(s.input_ids) for s in self.plain_slots])
        prompts = config.retain_prompts if config.retain_prompts is not None else load_retain_prompts(config.retain_set)
        self.retain_prompts = filter_retain_prompts(list(prompts), self.concepts)
        _check(config.retain_batch == 0 or bool(self.retain_prompts),
               "no retain prompts left (all mention a concept being erased): pass other retain_prompts")
        if self.retain_prompts:
            self.retain_ids = torch.cat([slot_prompt(tok, p, 0).input_ids for p in self.retain_prompts])
            self.retain_conds = torch.cat([encode(ids) for ids in self.retain_ids.split(64)])

    def _build_pools(self):
        """Pools come from their own generator, so a resumed run rebuilds exactly the same pools."""
        config = self.config
        if not config.reuse_latents or self.concept_pools is not None:
            return
        key = self._pool_key()
        if self.latent_cache is not None and key in self.latent_cache:
            self.concept_pools, self.retain_pool = self.latent_cache[key]
            return
        before = self.runner.evaluations
        pool_rng = torch.Generator().manual_seed(config.seed + 1_000_003)
        build = lambda conds, index, keep: LatentPool.build(  # noqa: E731
            self.model, self.runner, conds, self.uncond, index, num_inference_steps=config.num_ddim_steps,
            guidance=config.guidance, generator=pool_rng, keep_uncond=keep)
        with self._autocast():
            self.concept_pools = [
                build(self.concept_conds[c : c + 1], torch.zeros(config.concept_pool_size, dtype=torch.long), True)
                for c in range(len(self.concepts))
            ]
            if config.retain_batch and config.retain_weight > 0:
                order = torch.randperm(len(self.retain_prompts), generator=pool_rng)
                index = order.repeat(config.retain_pool_size // len(order) + 1)[: config.retain_pool_size]
                self.retain_pool = build(self.retain_conds, index, False)
        self.pool_evaluations = self.runner.evaluations - before
        if self.latent_cache is not None:
            self.latent_cache[key] = (self.concept_pools, self.retain_pool)

    def _pool_key(self) -> tuple:
        """Everything the pools depend on: equal keys mean identical pools."""
        c = self.config
        uses_retain = bool(c.retain_batch and c.retain_weight > 0)
        return (id(self.model.unet), id(self.model.text_encoder), tuple(self.concepts),
                tuple(self.retain_prompts) if uses_retain else (), c.num_ddim_steps, c.guidance, c.seed,
                c.concept_pool_size, c.retain_pool_size if uses_retain else 0, self.precision)

    def _autocast(self):
        if self.precision == "no":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # ----- noisy latents and teacher predictions -----
    def _concept_points(self, concept: int, need_uncond: bool) -> PoolSample:
        """One noisy latent of the concept with the frozen model's prediction(s) there."""
        if self.concept_pools is not None:
            return self.concept_pools[concept].draw(1, self.rng, self.device)
        cond = self.concept_conds[concept : concept + 1]
        x_t, t = self._fresh_latents(cond, 1)
        with torch.no_grad():
            if need_uncond:
                eps_uncond, eps_cond = self.runner.guided_pair(x_t, t, self.uncond, cond)
            else:
                eps_uncond, eps_cond = None, self.runner(x_t, t, cond).float()
        return PoolSample(x_t, t.reshape(1), eps_cond, eps_uncond, torch.tensor([concept]))

    def _retain_points(self, count: int) -> PoolSample:
        if self.retain_pool is not None:
            return self.retain_pool.draw(count, self.rng, self.device)
        index = torch.randint(len(self.retain_prompts), (count,), generator=self.rng)
        conds = self.retain_conds[index.to(self.device)]
        x_t, t = self._fresh_latents(conds, count)
        with torch.no_grad():
            teacher = self.runner(x_t, t, conds).float()
        return PoolSample(x_t, t.reshape(1).expand(count), teacher, None, index)

    def _fresh_latents(self, conds, count):
        """Partial DDIM sampling from new noise, as the public code does for every loss evaluation."""
        index = int(torch.randint(self.config.num_ddim_steps, (1,), generator=self.rng))
        shape = (count, self.model.unet.config.in_channels, self.model.latent_size, self.model.latent_size)
        noise = torch.randn(shape, generator=self.rng).to(self.device)
        return sample_noisy_latents(self.model, conds, self.uncond, index, noise=noise, runner=self.runner,
                                    num_inference_steps=self.config.num_ddim_steps, guidance=self.config.guidance)

    # ----- one iteration -----
    def _is_adversarial(self, step: int) -> bool:
        return self.config.method == "advunlearn" and step >= self.config.warmup_iterations

    def _iteration(self, step: int, should_cancel) -> dict:
        config = self.config
        adversarial = self._is_adversarial(step)
        refresh = not adversarial or (step - config.warmup_iterations) % config.attack_every == 0
        if refresh:
            self.current_concept = int(torch.randint(len(self.concepts), (1,), generator=self.rng))
        attack_losses = self._attack(self.current_concept, should_cancel) if adversarial and refresh else []
        logs = self._training_step(step, self.current_concept, adversarial)
        if attack_losses:
            logs.update(attack_loss_first=attack_losses[0], attack_loss_last=attack_losses[-1])
        return logs

    def _attack(self, concept: int, should_cancel) -> list[float]:
        """The inner attack: adversarial embeddings that make the current encoder reproduce the concept."""

        def objective(cond):
            if should_cancel is not None and should_cancel():
                raise _CancelRequested()
            point = self._concept_points(concept, need_uncond=False)
            eps = self.runner(point.latents, point.timesteps, cond)
            return attack_loss(eps, point.eps_cond)

        with self._autocast():
            result = optimize_adversarial_embeddings(
                self.student, self.adv_slots[concept], objective, self.config.attack_config(),
                init=self.adversarial.get(concept), generator=self.rng)
        self.adversarial[concept] = result.embeds
        return result.losses

    def _training_step(self, step: int, concept: int, adversarial: bool) -> dict:
        config = self.config
        self.optimizer.zero_grad(set_to_none=True)
        point = self._concept_points(concept, need_uncond=True)
        slot = self.adv_slots[concept] if adversarial else self.plain_slots[concept]
        with self._autocast():
            cond = encode_slotted(self.student, slot, adv_embeds=self.adversarial.get(concept) if adversarial else None)
            eps = self.runner(point.latents, point.timesteps, cond)
            target = esd_target(point.eps_uncond, point.eps_cond, config.negative_guidance)
            unlearn = unlearning_loss(eps, target)
        self._check_finite(step, "unlearning", unlearn)
        self.scaler.scale(unlearn).backward()
        retain = self._retain_step(step) if config.retain_batch and config.retain_weight > 0 else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        logs = dict(iteration=step + 1, concept=self.concepts[concept], adversarial=adversarial,
                    timestep=int(point.timesteps[0]), unlearn_loss=float(unlearn.detach()), retain_loss=retain)
        return logs

    def _retain_step(self, step: int) -> float:
        """Retain loss, back-propagated in micro-batches (the gradient of the mean, split into parts)."""
        config = self.config
        points = self._retain_points(config.retain_batch)
        total = 0.0
        for rows in torch.arange(config.retain_batch).split(config.max_unet_batch):
            ids = self.retain_ids[points.prompt_index[rows]]
            with self._autocast():
                cond = encode_slotted(self.student, ids)
                eps = self.runner(points.latents[rows], points.timesteps[rows], cond)
                part = retain_loss(eps, points.eps_cond[rows]) * (len(rows) / config.retain_batch)
            self._check_finite(step, "retain", part)
            self.scaler.scale(config.retain_weight * part).backward()
            total += float(part.detach())
        return total

    def _check_finite(self, step: int, which: str, loss: torch.Tensor):
        if not torch.isfinite(loss.detach()).all():
            where = f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else \
                "no checkpoint was written before it (set checkpoint_every and a checkpoint path)"
            raise ErasureDiverged(
                f"the {which} loss became {float(loss.detach())} at iteration {step + 1}; {where}. Lower lr, or use "
                "mixed_precision='no' or 'bf16' instead of 'fp16'.", self.last_checkpoint)

    def _check_weights_finite(self, step: int):
        bad = [name for name, p in self.named_params if not torch.isfinite(p.detach()).all()]
        if bad:
            raise ErasureDiverged(
                f"the encoder weights became NaN/inf at iteration {step + 1} ({bad[0]}...); the last good checkpoint "
                f"is {self.last_checkpoint}. Lower lr.", self.last_checkpoint)

    # ----- the loop -----
    def run(self, progress, should_cancel) -> EraseResult:
        config = self.config
        started = time.time()
        self._build_pools()
        self.student.train()  # SD1 CLIP has no dropout; train mode enables gradient checkpointing if asked
        with self._gradient_checkpointing():
            for step in range(self.start_step, config.iterations):
                rng_state = self.rng.get_state()
                try:
                    if should_cancel is not None and should_cancel():
                        raise _CancelRequested()
                    logs = self._iteration(step, should_cancel)
                except _CancelRequested:
                    self._cancel(step, rng_state)
                logs["unet_evaluations"] = self.total_evaluations
                self.history.append(logs)
                if progress is not None:
                    progress(step + 1, config.iterations, logs)
                if self._checkpoint_due(step + 1):
                    self._check_weights_finite(step)  # never let a bad step overwrite the last good checkpoint
                    self.save(step + 1, self.rng.get_state())
        return self._result(time.time() - started)

    def _checkpoint_due(self, done: int) -> bool:
        every = self.config.checkpoint_every
        return bool(self.checkpoint_path and every and done % every == 0 and done < self.config.iterations)

    @property
    def total_evaluations(self) -> int:
        return self.previous_evaluations + self.runner.evaluations

    @contextmanager
    def _gradient_checkpointing(self):
        unet = self.model.unet
        was_on = bool(getattr(unet, "is_gradient_checkpointing", False))
        if self.config.gradient_checkpointing:
            _encoder_checkpointing(self.student, True)
            unet.enable_gradient_checkpointing()
        try:
            yield
        finally:
            if self.config.gradient_checkpointing:
                _encoder_checkpointing(self.student, False)
                if not was_on:
                    unet.disable_gradient_checkpointing()

    def _cancel(self, step: int, rng_state: torch.Tensor):
        self.optimizer.zero_grad(set_to_none=True)
        if self.checkpoint_path is None:
            raise ErasureCancelled(f"erasure cancelled at iteration {step + 1}; no checkpoint path was given, "
                                   "so nothing was saved", None)
        path = self.save(step, rng_state)
        raise ErasureCancelled(f"erasure cancelled at iteration {step + 1}; resume from {path}", path)

    def _result(self, seconds: float) -> EraseResult:
        self.student.eval()
        self.student.requires_grad_(False)
        metadata = dict(
            concepts=self.concepts, method=self.config.method, preset=self.config.preset,
            config=self.config.to_dict(), unet_evaluations=self.total_evaluations,
            unet_grad_evaluations=self.runner.grad_evaluations, pool_evaluations=self.pool_evaluations,
            seconds=round(seconds, 3), mixed_precision=self.precision,
            trainable_parameters=sum(p.numel() for _, p in self.named_params),
            base_encoder_fingerprint=self.base_encoder_hash,
            resumed_from_step=self.start_step or None,
        )
        return EraseResult(self.student, self.history, self.config, self.total_evaluations, metadata)

    # ----- checkpoints -----
    def save(self, step: int, rng_state: torch.Tensor) -> Path:
        """Trainable weights, Adam state, adversarial embeddings, RNG states and the step, as safetensors."""
        tensors = {f"encoder.{name}": p.detach() for name, p in self.named_params}
        state = self.optimizer.state_dict()
        for index, values in state["state"].items():
            for key, value in values.items():
                tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value)
        tensors.update({f"adversarial.{c}": e for c, e in self.adversarial.items()})
        tensors["rng.trainer"] = rng_state
        tensors["rng.torch"] = torch.get_rng_state()
        metadata = dict(
            format=CHECKPOINT_FORMAT, step=step, concepts=self.concepts, config=self.config.to_dict(),
            history=self.history, param_groups=state["param_groups"], current_concept=self.current_concept,
            unet_evaluations=self.total_evaluations, scaler=self.scaler.state_dict(),
            base_encoder_fingerprint=self.base_encoder_hash,
        )
        atomic_save_safetensors(tensors, self.checkpoint_path, metadata)
        self.last_checkpoint = self.checkpoint_path
        return self.checkpoint_path

    def restore(self, path):
        tensors, meta = read_checkpoint(path)
        self._check_resumable(meta, path)
        named = dict(self.named_params)
        with torch.no_grad():
            for name, param in named.items():
                param.copy_(tensors[f"encoder.{name}"])
        self.optimizer.load_state_dict(_optimizer_state(tensors, meta["param_groups"]))
        self.adversarial = {int(k.split(".")[1]): v.to(self.device) for k, v in tensors.items()
                            if k.startswith("adversarial.")}
        self.rng.set_state(tensors["rng.trainer"])
        torch.set_rng_state(tensors["rng.torch"])
        if meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        self.start_step, self.history = int(meta["step"]), list(meta["history"])
        self.current_concept = int(meta["current_concept"])
        self.previous_evaluations = int(meta["unet_evaluations"])

    def _check_resumable(self, meta, path):
        _check(meta.get("format") == CHECKPOINT_FORMAT, f"{path} is not an erasure checkpoint")
        _check(meta["concepts"] == self.concepts,
               f"{path} erases {meta['concepts']}, not {self.concepts}: resume with the same concepts")
        saved, given = meta["config"], self.config.to_dict()
        differ = sorted(k for k in given if k not in RESUMABLE_CHANGES and saved.get(k) != given[k])
        _check(not differ, f"{path} was made with other settings ({', '.join(differ)}); resume with the same config "
                           f"(only {', '.join(sorted(RESUMABLE_CHANGES))} may change)")
        _check(meta["base_encoder_fingerprint"] == self.base_encoder_hash,
               f"{path} was trained from another text encoder than this model's")
        _check(int(meta["step"]) <= self.config.iterations,
               f"{path} is at iteration {meta['step']}, beyond iterations={self.config.iterations}")


def read_checkpoint(path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and decoded JSON metadata of a training checkpoint."""
    path = Path(path)
    _check(path.is_file(), f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # a truncated or foreign file
        raise ErasureError(f"cannot read checkpoint {path}: {error}") from error
    meta = {}
    for key, value in raw.items():
        try:
            meta[key] = json.loads(value)
        except json.JSONDecodeError:
            meta[key] = value
    return tensors, meta


def _optimizer_state(tensors, param_groups) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": param_groups}


def _encoder_checkpointing(encoder, on: bool):
    """Activation checkpointing of the encoder's layers (transformers 5 renamed the 4.x methods)."""
    if on:
        kwargs = {"use_reentrant": False}  # re-entrant checkpointing drops gradients of frozen-input layers
        if hasattr(encoder, "activation_checkpointing_enable"):
            encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    elif hasattr(encoder, "activation_checkpointing_disable"):
        encoder.activation_checkpointing_disable()
    else:
        encoder.gradient_checkpointing_disable()


def _resolve_precision(requested: str, device: torch.device) -> str:
    if requested == "auto":
        return "bf16" if device.type == "cuda" else "no"
    return requested
