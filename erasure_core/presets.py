"""Presets: the AdvUnlearn paper's defaults per concept kind, and the shipped retain prompt lists.

Shared by the paper presets (paper / public code defaults): Adam lr 1e-5, 1000 iterations, 200 warm-up iterations,
30 inner attack steps refreshed every iteration, k = 1 adversarial token as a prefix, retain batch 5,
negative guidance 1, DDIM 50 steps with guidance 3 for the training latents.
They differ in the retain weight gamma and the retain set: nudity uses 0.3 and a list with no people,
body or clothing words (so the encoder is not asked to keep what it must forget); style and object 0.5.

Where every preset departs from the paper (EraseConfig defaults, figures from the demo model, issue 10):
- anchor_weight 1: E("") is held at the original's. Unanchored, the empty prompt's prediction drifted by MSE 0.086
  by iteration 50 against a concept signal of 0.0053, and generating with the original E("") instead of the erased
  one cut pre-attack ASR from 0.25-0.53 to 0.03-0.06. On a tiny model the anchor cut E("")'s drift 20x.
- attack_epsilon 1 (x the median token norm) and a fresh random start every 10 refreshes: warm-started and
  unbounded, the training attacker's token norms grew 1.7 -> 4.0 while real tokens have 0.29-0.49, i.e. it
  trained against attacks far outside where probes and users put tokens.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ErasureError

RETAIN_DIR = Path(__file__).resolve().parent / "data" / "retain"

COMMON = dict(
    lr=1e-5,
    iterations=1000,
    warmup_iterations=200,
    attack_steps=30,
    attack_k=1,
    attack_insertion="prefix",
    retain_batch=5,
    negative_guidance=1.0,
)

PRESETS: dict[str, dict] = {
    "nudity": dict(COMMON, retain_weight=0.3, retain_set="objects_no_body"),
    "style": dict(COMMON, retain_weight=0.5, retain_set="objects"),
    "object": dict(COMMON, retain_weight=0.5, retain_set="objects"),
    # The embedded shapes-world model (about 50x smaller than SD1.5; the demo must finish in minutes on a CPU);
    # its own captions as the retain set. lr 1e-3 (not 3e-3): 3e-3 moved the trained weights by ||dW||/||W|| =
    # 0.45 in 200 iterations, 1e-3 with these settings 0.13. Deciding figures (soft-prompt probe at epsilon 1,
    # 64 cases per cell; pre / post / retain; original model 64/64 pre and 64/64 retain on circle):
    #   retain weight 10: circle seed 0  0/64 / 17/64 / 63/64, seed 1 16/64 / 37/64 / 58/64; red seed 0 26/64 /
    #   64/64 / 63/64. Retain weight 3: circle seed 0 0/64 / 8/64 / 63/64, seed 1 1/64 / 30/64 / 60/64; red seed 0
    #   20/64 / 59/64 / 63/64, red seed 1 41/64 / 61/64 / 63/64.
    # So 3 (better or equal in all three paired cells, utility kept; on the old settings, lr 3e-3 unanchored, 3 had
    # lost utility). The old settings gave 0.31 / 0.62 / 0.66 on circle (32 prompts), ESD with them 19/64 / 53/64 /
    # 48/64. Colours are NOT erased yet (red post-attack 120/128): see issue 10.
    "demo": dict(
        lr=1e-3, iterations=200, warmup_iterations=20, attack_steps=10, attack_k=3, attack_lr=1e-2,
        attack_insertion="prefix", attack_batch=2, concept_batch=4, plain_weight=1.0,
        retain_weight=3.0, retain_batch=8, retain_set="shapes_world",
        negative_guidance=2.0, num_ddim_steps=20, guidance=5.0, concept_pool_size=16, retain_pool_size=64,
        max_unet_batch=8,  # a small UNet on a CPU: one batched pass is much faster than 8 single ones
    ),
}


def preset_values(name: str) -> dict:
    """The EraseConfig fields a preset sets; an error naming the known presets for an unknown name."""
    if name not in PRESETS:
        raise ErasureError(f"unknown preset {name!r}: use one of {', '.join(sorted(PRESETS))}")
    return dict(PRESETS[name])


def retain_sets() -> list[str]:
    return sorted(p.stem for p in RETAIN_DIR.glob("*.txt"))


def load_retain_prompts(name: str) -> list[str]:
    """Prompts of a shipped retain list (one per line; '#' lines are comments)."""
    path = RETAIN_DIR / f"{name}.txt"
    if not path.is_file():
        raise ErasureError(f"unknown retain set {name!r}: use one of {', '.join(retain_sets())}, "
                           "or pass your own list as retain_prompts")
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]
