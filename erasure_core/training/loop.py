"""AdvUnlearn (and plain ESD) erasure of a concept from an SD1.x text encoder: the training loop.

Per iteration (see shared notes, advunlearn-method.md):
1. draw a concept (several concepts: one per attack refresh);
2. after warm-up (method "advunlearn" only): the inner attack optimises k adversarial token embeddings, inside an
   L2 ball per token (`attack_epsilon`), so that the CURRENT encoder's prediction for "concept + adversarial
   tokens" matches the original model's prediction for the concept (the attacker brings the concept back). It
   warm-starts from its previous embeddings (with `attack_population` N, from the N sets it keeps, in turn) and
   starts again from random vocabulary every `attack_restart_every` refreshes;
3. unlearning loss on `concept_batch` points: the trained encoder's prediction for the attacked prompt (and,
   with `plain_weight`, for the plain prompt too) must match ESD's negative-guidance target; anchor loss: its
   encoding of "" must stay the original's; retain loss: on unrelated prompts it must match the original;
4. one Adam step on the selected encoder parameters (with `project_conflicts`, the removing terms' gradient first
   loses its component against the keeping terms'; with `project_updates`, the step's update after it;
   projection.py); with `average_last`, the encoder written is the mean of the last iterations' weights.

Cost choices (the public code's waste, not repeated): ONE frozen UNet serves as teacher and as the network
gradients pass through (requires_grad False: no UNet gradients are computed or stored); the original encoder's
encodings are computed once; with `reuse_latents` the noisy latents and the teacher predictions come from pools
of DDIM trajectories sampled once (points.py), so more points per step cost no teacher evaluation; autocast
bf16/fp16 on GPU; the loss terms of a step share UNet calls of up to `max_unet_batch` latents (terms.py: the
same gradient, activation memory bounded by one call); optional gradient checkpointing. Every UNet evaluation
is counted. `accelerate` is not used: the loop needs one device, and autocast and GradScaler are
two lines each here, while Accelerator would wrap the optimiser and RNG states the checkpoint must own.

Reproducibility: every random draw comes from one seeded CPU generator; its state, the trained weights, Adam's
state and the adversarial embeddings go into a safetensors checkpoint (checkpoint.py), so a resumed run ends
with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import functools
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..attacks.soft_prompt import optimize_adversarial_embeddings
from ..encoders import encoder_hash
from ..errors import ErasureCancelled, ErasureDiverged
from ..latents import UNetRunner
from ..losses import anchor_loss, esd_target, mse
from ..models import SDModel
from ..presets import load_retain_prompts
from ..prompts import check_concept, encode_slotted, slot_prompt
from .averaging import TailAverage
from .checkpoint import check_resumable, load_checkpoint_into, read_checkpoint, write_checkpoint
from .captions import ConceptCaptions
from .config import EraseConfig, check, select_trainable_parameters
from .diagnostics import Diagnostics
from .points import TrainingPoints, join_samples
from .precision import gradient_checkpointing, resolve_precision
from .projection import Projection
from .retain import cached_alignment, filter_retain_prompts, select_by_alignment
from .terms import EncoderTerm, UNetTerm, backward_terms, history_losses


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
    concepts = [concepts] if isinstance(concepts, str) else concepts
    check(bool(concepts), "give at least one concept to erase, e.g. 'nudity' or 'Van Gogh'")
    for concept in concepts:
        check_concept(model.tokenizer, concept)
    return [c.strip() for c in concepts]


class _Trainer:
    def __init__(self, model: SDModel, concepts: list[str], config: EraseConfig, checkpoint_path):
        self.model, self.concepts, self.config = model, concepts, config
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.last_checkpoint: Path | None = None
        self.device = model.device
        self.precision = resolve_precision(config.mixed_precision, self.device)
        model.unet.requires_grad_(False)
        model.text_encoder.requires_grad_(False)
        self.runner = UNetRunner(model.unet)
        # Identifies the base model's encoder in checkpoints (resume refuses another) and in result metadata.
        self.base_encoder_hash = encoder_hash(model.text_encoder)
        random.seed(config.seed)
        torch.manual_seed(config.seed)  # also seeds CUDA; the trainer's own draws use its generator
        self.rng = torch.Generator().manual_seed(config.seed)
        self._build_student()
        self._prepare_prompts()
        self.points = TrainingPoints(model, self.runner, config, self.rng, self.concept_conds, self.uncond,
                                     self._autocast, self.captions)
        self.diagnostics = Diagnostics(model, config, self.concept_conds, self.uncond, self.uncond_ids,
                                       self.plain_slots, model.text_encoder)
        self.adversarial: dict[int, torch.Tensor] = {}
        self.current_concept = 0
        self.start_step, self.history, self.previous_evaluations = 0, [], 0
        self.latent_cache, self.retain_dropped = None, []  # a dict from erase(); retain prompts left out

    # ----- set-up -----
    def _build_student(self):
        config = self.config
        self.student = copy.deepcopy(self.model.text_encoder).float().to(self.device).requires_grad_(False)
        self.named_params = select_trainable_parameters(self.student, config.layers, config.train_final_layer_norm,
                                                        config.train_biases_and_norms)
        check(bool(self.named_params), f"layers={config.layers!r} selects no parameters")
        self.average = TailAverage(self.named_params, config.iterations, config.average_last)
        for _, param in self.named_params:
            param.requires_grad_(True)
        self.optimizer = torch.optim.Adam([p for _, p in self.named_params], lr=config.lr)
        self.projection = Projection([p for _, p in self.named_params], config.project_conflicts,
                                     config.project_updates)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    @torch.no_grad()
    def _prepare_prompts(self):
        """Slots and the ORIGINAL encoder's encodings, computed once for the whole run."""
        tok, config, encoder = self.model.tokenizer, self.config, self.model.text_encoder
        self.plain_slots = [slot_prompt(tok, c, 0) for c in self.concepts]
        self.adv_slots = [
            slot_prompt(tok, c, config.attack.k, config.attack.insertion,
                        replace_word=c if config.attack.insertion == "replace" else None)
            for c in self.concepts
        ]
        self.encode0 = lambda ids: encoder(ids.to(encoder.device))[0].float().to(self.device)  # noqa: E731
        self.uncond_ids = slot_prompt(tok, "", 0).input_ids
        self.uncond = self.encode0(self.uncond_ids)
        self.concept_conds = torch.cat([self.encode0(s.input_ids) for s in self.plain_slots])
        prompts = config.retain_prompts if config.retain_prompts is not None else load_retain_prompts(config.retain_set)
        self.retain_prompts = filter_retain_prompts(list(prompts), self.concepts)
        self.captions = None
        if config.caption_weight > 0 or config.plain_contrast:  # the prompts the filter left out: the captions
            self.captions = ConceptCaptions(tok, self.encode0, list(prompts), self.concepts, config.contrast_words)
            check(not config.caption_weight or any(self.captions.count(c) for c in range(len(self.concepts))),
                  "caption_weight > 0 but no retain prompt names a concept being erased: add captions that name it "
                  "to retain_prompts, or set caption_weight 0")
        check(not self._uses_retain or bool(self.retain_prompts),
              "no retain prompts left (all mention a concept being erased): pass other retain_prompts")
        self.retain_ids = self.retain_conds = None
        if self._uses_retain:
            self._set_retain([slot_prompt(tok, p, 0).input_ids for p in self.retain_prompts])

    def _set_retain(self, ids: list[torch.Tensor]):
        self.retain_ids = torch.cat(ids)
        self.retain_conds = torch.cat([self.encode0(part) for part in self.retain_ids.split(64)])

    @property
    def _uses_retain(self) -> bool:
        return bool(self.config.retain_batch and self.config.retain_weight > 0)

    def _select_retain(self):
        """Leave out retain prompts for which the original model already draws a concept (training/retain.py)."""
        config = self.config
        if not self._uses_retain or config.retain_max_alignment is None:
            return
        with self._autocast():
            alignment = cached_alignment(self.model, self.runner, self.concepts, self.concept_conds, self.uncond,
                                         self.retain_prompts, self.retain_conds, config, self.latent_cache)
        keep = select_by_alignment(self.retain_prompts, alignment, config.retain_max_alignment)
        self.retain_dropped = [p for i, p in enumerate(self.retain_prompts) if i not in set(keep)]
        self.retain_prompts = [self.retain_prompts[i] for i in keep]
        self._set_retain([self.retain_ids[i : i + 1] for i in keep])

    def _pool_key(self) -> tuple:
        """Everything the pools depend on: equal keys mean identical pools."""
        c, retain = self.config, self._uses_retain
        captions = tuple(p for pairs in self.captions.pairs for p, _ in pairs) if c.concept_pool_captions else ()
        return (id(self.model.unet), id(self.model.text_encoder), tuple(self.concepts), c.num_ddim_steps, c.guidance,
                c.seed, tuple(self.retain_prompts) if retain else (), c.retain_pool_size if retain else 0,
                c.concept_pool_size, c.concept_pool_captions, captions, self.precision)

    def _autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)  # "no": full precision
        return nullcontext() if dtype is None else torch.autocast(device_type=self.device.type, dtype=dtype)

    # ----- one iteration -----
    def _is_adversarial(self, step: int) -> bool:
        return self.config.method == "advunlearn" and step >= self.config.warmup_iterations

    def _iteration(self, step: int, should_cancel) -> dict:
        config, adversarial = self.config, self._is_adversarial(step)
        refresh_index = (step - config.warmup_iterations) // config.attack_every if adversarial else None
        refresh = not adversarial or (step - config.warmup_iterations) % config.attack_every == 0
        if refresh:
            self.current_concept = int(torch.randint(len(self.concepts), (1,), generator=self.rng))
        # the token set the attack warm-starts from and updates: a concept keeps `attack_population` N, taken in turn
        # (N = 1: keyed by the concept's index alone, as in every checkpoint before the option)
        n = config.attack_population
        slot = self.current_concept * n + refresh_index % n if adversarial else None
        attack_losses = []
        if adversarial and refresh:
            every = config.attack_restart_every
            restart = bool(every) and refresh_index % every == 0
            attack_losses = self._attack(self.current_concept, slot, should_cancel, restart)
        logs = self._training_step(step, self.current_concept, slot)
        if attack_losses:
            logs.update(attack_loss_first=attack_losses[0], attack_loss_last=attack_losses[-1])
            if self.captions is not None and self.current_concept in self.captions.attacked:
                logs["attacked_caption"] = self.captions.pairs[self.current_concept][
                    self.captions.attacked[self.current_concept]][0]
        return logs

    def _attack(self, concept: int, slot: int, should_cancel, restart: bool) -> list[float]:
        """The inner attack: adversarial embeddings that make the current encoder reproduce the concept, warm-started
        from the token set in `slot` (unless `restart`) and stored back there."""
        if self.config.attack_captions:
            self.captions.choose_attacked(concept, self.rng)
        queue: list = []

        def objective(cond):
            if should_cancel is not None and should_cancel():
                raise _CancelRequested()
            if not queue:
                queue.extend(self._attack_points(concept))
            points, goal = queue.pop(0)
            return mse(self.runner(points.latents, points.timesteps, cond), goal)

        init = None if restart else self.adversarial.get(slot)
        with self._autocast():
            result = optimize_adversarial_embeddings(self.student, self._attacked_prompt(concept), objective,
                                                     self.config.attack, init=init, generator=self.rng)
        self.adversarial[slot] = result.embeds
        return result.losses

    def _attack_points(self, concept: int) -> list[tuple]:
        """(points, goal) for each step of an attack, drawn at once: with one start per refresh (every preset),
        the same draws, in the same order, as one step at a time. The attacked caption's teacher predictions for
        all of them come from one UNet call: on the demo model (one CPU thread), 10 calls of 2 latents took 4.8 s
        per 20 refreshes."""
        samples = [self.points.concept(concept, self.config.attack_batch, need_uncond=False)
                   for _ in range(self.config.attack.steps)]
        if self.captions is None:
            return [(s, s.eps_cond) for s in samples]
        goals = self.captions.attacked_teacher(self.runner, join_samples(samples), concept)
        return list(zip(samples, goals.split([len(s.timesteps) for s in samples])))

    def _attacked_prompt(self, concept: int):
        """The prompt the attacker's tokens go into: the bare concept, or the caption under attack."""
        if self.captions is None or concept not in self.captions.attacked:
            return self.adv_slots[concept]
        replace = self.concepts[concept] if self.config.attack.insertion == "replace" else None
        return self.captions.attacked_prompt(concept, self.config.attack.k, self.config.attack.insertion, replace)

    def _training_step(self, step: int, concept: int, slot: int | None) -> dict:
        """One Adam step on every loss term (terms.py back-propagates them together). The terms are built in a
        fixed order: each may draw from the trainer's generator, and the order keeps runs reproducible. `slot`:
        the attack's token set this step trains against (None: before the attack starts, or ESD)."""
        config = self.config
        adversarial = slot is not None
        self.optimizer.zero_grad(set_to_none=True)
        points = self.points.concept(concept, config.concept_batch, need_uncond=True)
        target = esd_target(points.eps_uncond, points.eps_cond, config.negative_guidance)
        if config.plain_contrast:
            target = self.captions.plain_target(self.runner, points, self.rng, config.negative_guidance)
        unet_terms, encoder_terms = [], []
        if adversarial:
            adv = self.adversarial[slot]
            adv_target = target if self.captions is None else self.captions.attacked_target(
                self.runner, points, concept, target, config.negative_guidance)
            unet_terms.append(self._term("unlearn", 1.0, points, adv_target, self._attacked_prompt(concept), adv))
        plain_weight = config.plain_weight if adversarial else 1.0
        if plain_weight > 0:
            unet_terms.append(self._term("plain", plain_weight, points, target, self.plain_slots[concept]))
        if config.caption_weight > 0 and (captions := self.captions).count(concept):
            with self._autocast():
                rows, caption_target = captions.term_inputs(self.runner, points, concept, self.rng,
                                                            config.negative_guidance)
            strengths = torch.rand(len(rows), generator=self.rng) * config.vector_max_strength \
                if config.vector_weight > 0 else None  # drawn only when on, so other runs keep their draws
            unet_terms += captions.unet_terms(self.student, points, concept, rows, caption_target,
                                              config.caption_weight, config.vector_weight, strengths)
        if config.embedding_retain_weight > 0 and self._uses_retain:
            picked = torch.randint(len(self.retain_ids), (config.retain_batch,), generator=self.rng)
            # bound now (picked=picked): the loss runs at backward, after later code may reuse the name
            encoder_terms.append(EncoderTerm("embedding_retain", config.embedding_retain_weight, lambda picked=picked:
                anchor_loss(encode_slotted(self.student, self.retain_ids[picked]), self.retain_conds[picked])))
        if config.anchor_weight > 0:
            encoder_terms.append(EncoderTerm("anchor", config.anchor_weight, lambda: anchor_loss(
                encode_slotted(self.student, self.uncond_ids), self.uncond)))
        retain = self.points.retain_terms() if self._uses_retain else []
        for name, weight, sample in retain:
            unet_terms.append(self._term(name, weight, sample, sample.eps_cond, self.retain_ids[sample.prompt_index]))
        row_losses = {}
        run = functools.partial(backward_terms, self.runner, max_batch=config.max_unet_batch, scale=self.scaler.scale,
                                autocast=self._autocast, row_losses=row_losses,
                                check_finite=lambda name, loss: self._check_finite(step, name, loss))
        losses, projected = self.projection.backward(run, unet_terms, encoder_terms)
        if retain:
            self.points.observe_retain(retain[0][2], row_losses["retain"])
        projected.update(self.projection.step(functools.partial(self.scaler.step, self.optimizer)))
        self.scaler.update()
        return {**self._step_logs(step, concept, adversarial, points, losses), **projected}

    def _term(self, name: str, weight: float, points, target, prompt, adv_embeds=None) -> UNetTerm:
        """A prediction-space term on `points`; its encoding, the student's of `prompt` (slotted or ids)."""
        return UNetTerm(name, weight, points.latents, points.timesteps, target,
                        lambda: encode_slotted(self.student, prompt, adv_embeds=adv_embeds))

    def _step_logs(self, step, concept, adversarial, points, losses: dict[str, float]) -> dict:
        return dict(iteration=step + 1, concept=self.concepts[concept], adversarial=adversarial,
                    timestep=int(points.timesteps[0]), **history_losses(losses))

    def _check_finite(self, step: int, which: str, loss: torch.Tensor):
        if not torch.isfinite(loss.detach()).all():
            where = f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else \
                "no checkpoint was written before it (set checkpoint_every and a checkpoint path)"
            raise ErasureDiverged(
                f"the {which.replace('_', ' ')} loss became {float(loss.detach())} at iteration {step + 1}; {where}. "
                "Lower lr, or use mixed_precision='no' or 'bf16' instead of 'fp16'.", self.last_checkpoint)

    def _check_weights_finite(self, step: int):
        bad = [name for name, p in self.named_params if not torch.isfinite(p.detach()).all()]
        if bad:
            raise ErasureDiverged(
                f"the encoder weights became NaN/inf at iteration {step + 1} ({bad[0]}...); the last good checkpoint "
                f"is {self.last_checkpoint}. Lower lr.", self.last_checkpoint)

    # ----- the loop -----
    def run(self, progress, should_cancel) -> EraseResult:
        config, started = self.config, time.time()
        self._select_retain()
        self.points.build_pools(self.retain_conds if self._uses_retain else None, self._pool_key(),
                                self.latent_cache)
        self.student.train()  # SD1 CLIP has no dropout; train mode enables gradient checkpointing if asked
        with gradient_checkpointing(self.student, self.model.unet, config.gradient_checkpointing):
            for step in range(self.start_step, config.iterations):
                rng_state = self.rng.get_state()
                try:
                    if should_cancel is not None and should_cancel():
                        raise _CancelRequested()
                    logs = self._iteration(step, should_cancel)
                except _CancelRequested:
                    self._cancel(step, rng_state)
                self.average.observe(step + 1)
                logs["unet_evaluations"] = self.total_evaluations
                if self.diagnostics.due(step + 1):
                    logs.update(self.diagnostics.measure(self.student, self.named_params, self.adversarial))
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

    def _cancel(self, step: int, rng_state: torch.Tensor):
        self.optimizer.zero_grad(set_to_none=True)
        if self.checkpoint_path is None:
            raise ErasureCancelled(f"erasure cancelled at iteration {step + 1}; no checkpoint path was given, "
                                   "so nothing was saved", None)
        path = self.save(step, rng_state)
        raise ErasureCancelled(f"erasure cancelled at iteration {step + 1}; resume from {path}", path)

    def _result(self, seconds: float) -> EraseResult:
        self.student.eval().requires_grad_(False)
        self.average.write_into_params()
        metadata = dict(
            concepts=self.concepts, method=self.config.method, preset=self.config.preset,
            config=self.config.to_dict(), unet_evaluations=self.total_evaluations,
            unet_grad_evaluations=self.runner.grad_evaluations, pool_evaluations=self.points.pool_evaluations,
            diagnostic_evaluations=self.diagnostics.runner.evaluations,
            seconds=round(seconds, 3), mixed_precision=self.precision,
            trainable_parameters=sum(p.numel() for _, p in self.named_params),
            base_encoder_fingerprint=self.base_encoder_hash,
            resumed_from_step=self.start_step or None,
            retain_prompts_used=len(self.retain_prompts) if self._uses_retain else 0,
            retain_prompts_dropped=self.retain_dropped, averaged_iterations=self.average.count,
        )
        return EraseResult(self.student, self.history, self.config, self.total_evaluations, metadata)

    # ----- checkpoints -----
    def save(self, step: int, rng_state: torch.Tensor) -> Path:
        metadata = dict(
            step=step, concepts=self.concepts, config=self.config.to_dict(), history=self.history,
            current_concept=self.current_concept, unet_evaluations=self.total_evaluations,
            attack_captions=sorted(self.captions.attacked.items()) if self.captions is not None else [],
            scaler=self.scaler.state_dict(), base_encoder_fingerprint=self.base_encoder_hash,
            retain_scores=self.points.scores_record(), **self.average.metadata(),
        )
        write_checkpoint(self.checkpoint_path, named_params=self.named_params, optimizer=self.optimizer,
                         adversarial=self.adversarial, rng_state=rng_state, metadata=metadata,
                         extra=self.average.tensors())
        self.last_checkpoint = self.checkpoint_path
        return self.checkpoint_path

    def restore(self, path):
        tensors, meta = read_checkpoint(path)
        check_resumable(meta, path, self.concepts, self.config.to_dict(), self.base_encoder_hash,
                        self.config.iterations, defaults=type(self.config)().to_dict())
        self.adversarial = load_checkpoint_into(tensors, meta, named_params=self.named_params,
                                                optimizer=self.optimizer, device=self.device)
        self.rng.set_state(tensors["rng.trainer"])
        if meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        self.start_step, self.history = int(meta["step"]), list(meta["history"])
        self.average.restore(tensors, meta, self.start_step, path)
        self.current_concept = int(meta["current_concept"])
        if self.captions is not None:
            self.captions.attacked = {int(c): int(row) for c, row in meta.get("attack_captions", [])}
        self.previous_evaluations = int(meta["unet_evaluations"])
        self.points.restore_scores(meta.get("retain_scores"))
