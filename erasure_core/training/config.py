"""What defines an erasure run (`EraseConfig`), and which encoder parameters it trains (layer selection)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..attacks.soft_prompt import DEFAULT_EPSILON, SoftPromptConfig
from ..errors import ErasureError
from ..options import convert, flat_dict, flat_options, nested, option_names, typed_values
from ..presets import PRESETS, preset_values

METHODS = ("advunlearn", "esd")
LAYER_GROUPS = ("all", "mlp", "attention")
PRECISIONS = ("auto", "no", "bf16", "fp16")


@flat_options
@dataclass
class EraseConfig:
    """Everything that defines an erasure run. Defaults follow AdvUnlearn's paper/public code (object preset),
    except the options marked "(not in the paper)", whose reasons and deciding figures are in presets.py.

    attack: the inner attack's settings, a SoftPromptConfig (the probe's optimiser, shared). Its fields are the
    options attack_k, attack_steps, attack_lr, attack_method, attack_init, attack_insertion, attack_epsilon and
    attack_restarts (`EraseConfig(attack_k=3)`, `from_preset(..., attack_k=3)`, option text `attack_k=3`), and
    `to_dict()` writes them so, as checkpoints and file metadata always have (erasure_core.options: nested).

    layers: "all" (every transformer layer, plus the final layer norm if `train_final_layer_norm`), "mlp" or
    "attention" (those sub-modules of every layer), or a list of layer indices (exactly those layers).
    mixed_precision: "auto" = bf16 autocast on GPU, none on CPU.
    reuse_latents: draw noisy latents and teacher predictions from pools of DDIM trajectories sampled once
    (`concept_pool_size` per concept, `retain_pool_size` for the retain prompts) instead of re-sampling for
    every training and attack step.

    Options not in the paper:
    - anchor_weight: weight of the empty-prompt anchor, ||E("") - E0("")||^2 / ||E0("")||^2 (losses.anchor_loss).
      Classifier-free guidance encodes "" with the erased encoder, so E("") is part of the erasure; 0 leaves it
      free, as the public code does.
    - plain_weight: after warm-up, the unlearning loss of the plain concept prompt is added (with this weight)
      to that of the attacked prompt, so the plain prompt keeps being trained; 0 = the paper (attacked only).
    - concept_batch / attack_batch: pool points per unlearning step / per inner attack step (the paper: 1).
    - attack_epsilon: L2 bound per adversarial token, relative to the token table's median row norm (None =
      unbounded, the paper); attack_restart_every: every that many attack refreshes the attack starts again
      from random vocabulary instead of its previous embeddings (0 = never); attack_restarts: starts per refresh;
      attack_population: token sets the attack keeps per concept, warm-started in turn (refresh i continues set
      i mod N), so a never-restarted attacker still meets the encoder from N places (1 = one set, as before).
    - retain_early_weight: a second retain term, with this weight and `retain_batch` points drawn only from the
      first `retain_early_steps` (a fraction) of the sampling steps, the noisiest, where a retain prompt's
      colour and layout are decided; 0 = the paper (one retain term, points from every step). Costs
      `retain_batch` more UNet evaluations (forward and backward) per iteration.
    - retain_priority: the share of the retain points drawn in proportion to their trajectory's last measured
      retain loss (the rest uniformly); 0 = the paper (every trajectory alike). Retain damage is not spread
      evenly: on square's benchmark encoders 23 of 92 black-background retain cases failed and 3 of 164 others,
      so points where the student already drifts are drawn more often. No extra UNet evaluation: the losses are
      the retain term's own. Needs the latent pools (`reuse_latents`). Off in every preset: at 0.5 on square
      (3 seeds) retain rose from 685 to 723/768 but the soft prompt's ASR from 37 to 82/256.
    - project_conflicts: where the gradient of the terms that remove the concept points against that of the
      terms that keep the rest (retain, the "" anchor), its component along the keeping gradient is removed
      before the step (training/projection.py, one-sided PCGrad); the history logs their cosine each step.
      Costs a second UNet call a step (the two groups are back-propagated apart; about +5% CPU on the demo).
      On in the `demo` preset (its figures in presets.py: over the 8 concepts square's soft prompt 81 -> 41/256,
      green worse, retain unchanged); off in the paper presets (not measured on SD1.x).
    - project_updates: after the optimiser's step, where the update would raise the keeping terms' loss to first
      order (a positive dot product with their gradient), it loses its component along that gradient
      (projection.py; Adam's per-coordinate scaling and momentum left 24 of 80 updates raising it on square with
      project_conflicts alone). The history logs the update's cosine with the keeping gradient each step. Costs a
      copy of the trained weights and the same second UNet call as project_conflicts (none if both are on). Off
      in every preset: on all 8 concepts with project_conflicts (3 seeds, 256 cases a cell) it raised retain
      (1917 -> 1945/2048) but the headline probes' successes too (119 -> 184 of 6,144: square's soft prompt 41 ->
      92/256, green's pre-attack 4 -> 8/256), while red's soft prompt fell 23 -> 4/256; bench/demo_preset_tuning.md,
      session 19. With attack_steps 20 as well (session 20, the same cases): retain 1917 -> 1922/2048, headline
      successes 119 -> 128; red and green met every target, star's retain fell 247 -> 238/256; not adopted either.
    - retain_max_alignment: retain prompts whose ORIGINAL prediction carries the concept (see training/retain.py)
      more than this are left out of the retain set; None keeps every prompt that does not name a concept.
    - caption_weight: the retain list's prompts that name a concept (left out of the retain set) are unlearned
      too, with this weight, against a contrastive target (training/captions.py); 0 = the paper (bare word only).
      contrast_words: the words that replace the concept in those captions to make the target's anchor
      (e.g. "square,triangle" to erase "circle"); None removes the concept word instead. plain_contrast: the
      bare concept prompt's target is built on a contrast word instead of "" (needs contrast_words).
      attack_captions: the inner attack puts its tokens into one of the concept's captions (a new one each
      refresh) instead of the bare word, and the attacked caption is trained toward its contrastive target
      (needs caption_weight > 0; a concept without captions is attacked as a bare word).
      concept_pool_captions: this share of each concept's pool trajectories is sampled from its captions instead
      of the bare word (the contexts users write), with the bare word's prediction recomputed at their latents
      (needs caption_weight > 0 and reuse_latents; a concept without captions samples the bare word only).
      Not in any preset: at 0.5 on the demo's square (9 training seeds a side) the soft-prompt leak was not shown
      lower and retain fell 1.3 points (presets.py).
    - embedding_retain_weight: every retain prompt's encoding stays the original's (relative squared distance,
      like the "" anchor; `retain_batch` prompts a step drawn from the whole retain list, not only the pool's):
      costs no UNet evaluation, so it reaches the retain prompts the UNet-space retain loss never samples.
    - vector_weight: each step, the step's captions are also pushed along the concept's direction in the
      encoder's output space (the student's own mean of E(caption) - E(caption without the concept), times a
      strength drawn from [0, vector_max_strength]) and trained toward their contrastive targets, with this weight
      (needs caption_weight > 0): a concept-vector (Ring-A-Bell-style) attacker adds that direction, amplified,
      to a prompt's encoding, which no token attack covers.
    - train_biases_and_norms: False trains the weight matrices only. A bias or a layer norm's gain and shift
      acts on every token of every prompt alike, so moving it to remove one concept moves all the others; on the
      demo encoders of the tuning arms (seed 0) the biases moved 0.3-1.9x their own norm, the matrices
      0.12-0.40x. True = the paper (every parameter of the chosen layers), and every preset: the biases carry
      neither the erasure nor the retain damage (8 kept demo encoders, 512 held-out cases: with their biases and
      norms put back, pre-attack 16 -> 16/512, retain 487 -> 485/512), and trained without them (square and
      green, seeds 0-1, 1,032 probe cases) the headline probes' successes rose 46 -> 76 (session 23).
    - average_last: the share of the last iterations whose weights are averaged (uniformly, after each step)
      into the written encoder (training/averaging.py); 0 = the last iteration's weights, the paper. A seed's
      leak moves along a run as much as between seeds (square, 9 seeds: sd 0.110 over the last 100 of 400
      iterations against 0.119 between seeds, session 36).
    - diagnostics_every: every that many iterations (and at the last) the history records drift of the empty
      prompt's prediction, the plain prompt's unlearning loss, the adversarial token norm and the relative
      weight change, on fixed points (0 = never).
    """

    method: str = "advunlearn"
    preset: str | None = None
    iterations: int = 1000
    lr: float = 1e-5
    warmup_iterations: int = 200
    # The paper's attack (k=1, 30 steps, lr 1e-3, "pgd" = Adam, prefix), warm-started from its previous tokens,
    # inside the budget the probes' headline uses.
    attack: SoftPromptConfig = nested(lambda: SoftPromptConfig(init="previous", epsilon=DEFAULT_EPSILON), "attack_")
    # When and on what the training runs its attack: the loop's schedule, not the attack's settings (a probe
    # attacks once per case), so these stay here, flat, rather than in a second nested config with one user.
    attack_every: int = 1
    attack_restart_every: int = 10
    attack_population: int = 1
    attack_batch: int = 1
    concept_batch: int = 1
    plain_weight: float = 0.0
    anchor_weight: float = 1.0
    retain_weight: float = 0.5
    retain_batch: int = 5
    retain_set: str = "objects"
    retain_prompts: list[str] | None = None
    retain_max_alignment: float | None = None
    retain_early_weight: float = 0.0
    retain_priority: float = 0.0
    retain_early_steps: float = 0.25
    project_conflicts: bool = False
    project_updates: bool = False
    negative_guidance: float = 1.0
    caption_weight: float = 0.0
    contrast_words: list[str] | None = None
    plain_contrast: bool = False
    attack_captions: bool = False
    embedding_retain_weight: float = 0.0
    vector_weight: float = 0.0
    vector_max_strength: float = 4.0
    layers: str | list[int] = "all"
    train_final_layer_norm: bool = True
    train_biases_and_norms: bool = True
    num_ddim_steps: int = 50
    guidance: float = 3.0
    seed: int = 0
    reuse_latents: bool = True
    concept_pool_size: int = 16
    concept_pool_captions: float = 0.0
    retain_pool_size: int = 48
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    max_unet_batch: int = 1
    checkpoint_every: int = 100
    diagnostics_every: int = 50
    average_last: float = 0.0

    def __post_init__(self):
        self.layers = parse_layers(self.layers)
        # text from option strings: "none" = off
        self.attack.epsilon = _optional_float("attack_epsilon", self.attack.epsilon)
        self.retain_max_alignment = _optional_float("retain_max_alignment", self.retain_max_alignment)
        if isinstance(self.contrast_words, str):  # "square,triangle" as text, read by the one options parser
            self.contrast_words = convert(self.contrast_words, list[str] | None, "contrast_words") or None

    @property
    def retain_early_step_count(self) -> int:
        """How many of the first (noisiest) sampling steps the early retain term draws from."""
        return max(1, round(self.retain_early_steps * self.num_ddim_steps))

    def to_dict(self) -> dict:
        """The options as flat {name: value} (attack_k, not attack.k): checkpoints and metadata keep this shape."""
        return flat_dict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "EraseConfig":
        known = set(option_names(cls))
        unknown = sorted(set(values) - known - {"attack"})  # "attack": a nested dict (dataclasses.asdict) also reads
        if unknown:
            raise ErasureError(f"unknown erase option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**typed_values(values, cls)).validate()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "EraseConfig":
        """The preset's values, then `overrides` (None values are ignored, so a CLI can pass unset options)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls.from_dict({**preset_values(name), "preset": name, **given})

    def validate(self) -> "EraseConfig":
        check(self.method in METHODS, f"unknown method {self.method!r}: use one of {', '.join(METHODS)}")
        self.attack.validate(prefix="attack_")
        check(self.mixed_precision in PRECISIONS,
              f"unknown mixed_precision {self.mixed_precision!r}: use one of {', '.join(PRECISIONS)}")
        check(self.preset is None or self.preset in PRESETS,
              f"unknown preset {self.preset!r}: use one of {', '.join(PRESETS)}")
        # 0 iterations would write the original encoder back under an erased file's name
        check(self.iterations >= 1, f"iterations must be >= 1, got {self.iterations}: with none, the file written "
              "would be the original encoder, unchanged")
        for name in ("warmup_iterations", "retain_batch", "checkpoint_every", "attack_restart_every",
                     "diagnostics_every"):
            check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("attack_every", "num_ddim_steps", "concept_pool_size", "retain_pool_size", "max_unet_batch",
                     "attack_batch", "concept_batch", "attack_population"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        # Below 0 the ESD target points toward the concept: training would strengthen what it should erase.
        check(math.isfinite(self.negative_guidance) and self.negative_guidance >= 0,
              f"negative_guidance must be >= 0 (the paper: 1, the demo preset: 2), got {self.negative_guidance}")
        # "no" or "0" as text must not read as on
        for name in ("project_conflicts", "project_updates", "plain_contrast", "attack_captions",
                     "train_final_layer_norm", "train_biases_and_norms", "reuse_latents",
                     "gradient_checkpointing"):
            check(isinstance(getattr(self, name), bool),
                  f"{name} is on or off: give True or False, got {getattr(self, name)!r}")
        for name in ("retain_weight", "anchor_weight", "plain_weight", "caption_weight", "embedding_retain_weight",
                     "vector_weight", "vector_max_strength", "retain_early_weight"):
            check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        check(not self.plain_contrast or bool(self.contrast_words),
              "plain_contrast needs contrast_words (the words whose predictions replace the empty prompt's)")
        check(not self.attack_captions or self.caption_weight > 0,
              "attack_captions needs caption_weight > 0 (the captions it attacks are the ones caption_weight trains)")
        check(0 <= self.average_last <= 1, f"average_last is the share of the last iterations whose weights are "
              f"averaged: it must be in [0, 1] (0 = the last weights), got {self.average_last}")
        check(not self.average_last or round(self.average_last * self.iterations) >= 1,
              f"average_last {self.average_last} of {self.iterations} iterations averages none of them: give at "
              f"least {1 / self.iterations:.2g} (one iteration), or 0 for the last weights")
        check(0 <= self.concept_pool_captions <= 1,
              f"concept_pool_captions is the share of concept trajectories sampled from captions: it must be in "
              f"[0, 1], got {self.concept_pool_captions}")
        check(not self.concept_pool_captions or (self.caption_weight > 0 and self.reuse_latents),
              "concept_pool_captions samples pool trajectories from the concept's captions: it needs "
              "caption_weight > 0 (the captions) and reuse_latents on (the pools)")
        check(not self.vector_weight or self.caption_weight > 0,
              "vector_weight needs caption_weight > 0 (the term pushes the concept's captions along its direction); "
              "set vector_weight=0 to train without captions")
        check(0 < self.retain_early_steps <= 1,
              f"retain_early_steps is the fraction of sampling steps the early retain term draws from: it must be "
              f"in (0, 1], got {self.retain_early_steps}")
        check(not self.retain_early_weight or (self.retain_weight > 0 and self.retain_batch > 0),
              "retain_early_weight adds to the retain term: it needs retain_weight > 0 and retain_batch > 0")
        check(0 <= self.retain_priority <= 1,
              f"retain_priority is the share of retain points drawn by their loss: it must be in [0, 1], "
              f"got {self.retain_priority}")
        check(not self.retain_priority or self.reuse_latents,
              "retain_priority draws from the retain pool's trajectories: it needs reuse_latents on")
        check(self.retain_max_alignment is None or self.retain_max_alignment > 0,
              f"retain_max_alignment must be > 0 (or None to keep every retain prompt), "
              f"got {self.retain_max_alignment}")
        return self


def _optional_float(name: str, value):
    if not isinstance(value, str):
        return value
    if value.strip().lower() in ("none", ""):
        return None
    try:
        return float(value)
    except ValueError:
        raise ErasureError(f"{name} must be a number or none, got {value!r}") from None


def check(condition: bool, message: str):
    """ErasureError(message) unless `condition`."""
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


def encoder_parts(text_encoder):
    """(transformer layers, final layer norm) on transformers 5.x (flat) and 4.x (`.text_model`)."""
    core = getattr(text_encoder, "text_model", text_encoder)
    return core.encoder.layers, core.final_layer_norm


def check_layers(text_encoder, layers) -> str | list[int]:
    """`layers` parsed, with every index checked against this encoder's layer list (a config alone cannot say)."""
    layers = parse_layers(layers)
    if isinstance(layers, list):
        count = len(encoder_parts(text_encoder)[0])
        bad = [i for i in layers if not 0 <= i < count]
        check(not bad, f"layer index(es) {bad} out of range: this encoder has layers 0..{count - 1}")
    return layers


def select_trainable_parameters(text_encoder, layers="all", train_final_layer_norm=True,
                                train_biases_and_norms=True):
    """[(name, parameter)] to train. Layers are chosen by their index in the layer list, never by matching
    names as text (so layer 1 is layer 1 only, not also 10 and 11). Without `train_biases_and_norms` only the
    weight matrices train: a bias or a layer norm's gain is added to (or multiplies) every token of every prompt,
    and in a CLIP layer those are exactly the 1-D parameters."""
    layers = check_layers(text_encoder, layers)
    blocks, final_norm = encoder_parts(text_encoder)
    chosen = []
    for index, block in enumerate(blocks):
        modules = _modules_of(block, layers, index)
        chosen += [p for module in modules for p in module.parameters()]
    if layers == "all" and train_final_layer_norm:
        chosen += list(final_norm.parameters())
    ids = {id(p) for p in chosen if train_biases_and_norms or p.ndim >= 2}
    return [(name, p) for name, p in text_encoder.named_parameters() if id(p) in ids]


def _modules_of(block, layers, index):
    if layers == "all":
        return [block]
    if layers == "mlp":
        return [block.mlp]
    if layers == "attention":
        return [block.self_attn]
    return [block] if index in layers else []
