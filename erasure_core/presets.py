"""Presets: the AdvUnlearn paper's defaults per concept kind, and the shipped retain prompt lists.

Shared by all presets (paper / public code defaults): Adam lr 1e-5, 1000 iterations, 200 warm-up iterations,
30 inner attack steps refreshed every iteration, k = 1 adversarial token as a prefix, retain batch 5,
negative guidance 1, DDIM 50 steps with guidance 3 for the training latents.
They differ in the retain weight gamma and the retain set: nudity uses 0.3 and a list with no people,
body or clothing words (so the encoder is not asked to keep what it must forget); style and object 0.5.
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
    # The embedded shapes-world model: about 50x smaller than SD1.5, so it takes a 300x larger learning rate
    # and far fewer iterations (the demo must finish in minutes on a CPU); its own captions as the retain set.
    # Tuned on "circle" against the soft-prompt probe (16 prompts, 1 seed, shipped weights): retain weight 10
    # gave AdvUnlearn pre/post-attack ASR 0.31/0.62 with retain accuracy 0.81 (ESD 0.25/0.81, 0.56); retain
    # weight 3 erased harder (0.19/0.69) but lost utility (retain 0.25). 10 attack steps held the attack
    # better than 5 on earlier weights, and 150 iterations did not hold it. On 32 prompts: 300 iterations gave
    # 0.31/0.62/0.66 (ESD 0.34/0.78/0.75); 600 iterations did worse (0.47/0.91/0.62), and so did training on
    # five captions naming the concept besides the bare word (0.72/0.84/0.19).
    "demo": dict(
        lr=3e-3, iterations=300, warmup_iterations=20, attack_steps=10, attack_k=3, attack_lr=1e-2,
        attack_insertion="prefix", retain_weight=10.0, retain_batch=8, retain_set="shapes_world",
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
