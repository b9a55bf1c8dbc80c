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
    # its own captions as the retain set. Departures from the paper and the figures that decided them (soft-prompt
    # probe at epsilon 1, 64 cases per cell and training seed; the whole log: bench/demo_preset_tuning.md):
    # - lr 1e-3 (not 3e-3): 3e-3 moved the trained weights by ||dW||/||W|| = 0.45 in 200 iterations, 1e-3 by 0.13.
    # - caption_weight 1 with attack_captions (training/captions.py; the demo and the benchmark pass the concept's
    #   siblings as contrast_words): trained on the bare word only, "red" stayed in captions (pre-attack 61/128,
    #   post-attack 120/128, seeds 0+1); captions alone brought red to 1/128 / 76/128, attacking captions too to
    #   2/128 / 40/128. Circle: 38/128 post-attack without captions, 2/128 with them, 1/128 attacked too.
    # - retain weight 10: with the caption attack, retain accuracy on red (seed 0) was 47/64 at weight 3 and 54/64
    #   at 10 (original 63/64); at 10, seeds 0+1: red 113/128 (original 126/128), circle 123/128 (128/128).
    # - 400 iterations with the attack refreshed every 2nd (attack_every 2; the same number of attack refreshes as
    #   200 iterations refreshed every one, 1.44x the UNet evaluations): red's attacked ASR fell from 40/128 to
    #   3/128 (seeds 0+1), circle's stayed at 1/128; retain accuracy: red 113 -> 119/128, circle 123 -> 114/128
    #   (the price). 300 iterations every 3rd gave red 25/128; 200 every 2nd at lr 2e-3 red 40/128 (pre 7/128).
    #   Every one again at the current preset (attack_every 1, session 32, square and red, 3 seeds, +13% UNet
    #   evaluations): headline successes 79 -> 117 of 1,536 (square's soft prompt 56 -> 63/256, concept vector
    #   16 -> 33/256), retain 486 -> 474/512 (red 246 -> 239/256: its target lost).
    #   Stopped at 300 (session 36, square, the 9 seeds' own trainings at iteration 300, so paired): soft prompt
    #   656 -> 698/2304 (not shown either way), retain 2170 -> 2153/2304; a seed's leak moved as much in the last
    #   100 iterations (sd 0.110) as between seeds (0.119).
    # - average_last 0 (the EraseConfig default: the last weights are written): the mean of the weights over
    #   iterations 301-400 (session 37, square, the same 9 trainings, so paired): soft prompt 656 -> 665/2304 (paired
    #   t of the per-seed difference [-0.056, +0.063]: not shown), retain 2170 -> 2169/2304; seeds closer (sd 0.119
    #   -> 0.084), not lower on average.
    # - vector_weight 1 (training/captions.py: the captions pushed along the encoder's own concept direction, as
    #   the concept-vector probe does): yellow's concept-vector ASR, the full benchmark's worst cell at 94/256 =
    #   0.37 (seeds 39/88, 52/84, 3/84), was 36/256 = 0.14 [0.10, 0.19] with it (8/88, 3/84, 25/84) on the same
    #   cases; retain 221 -> 231/256. Star (seed 1): 20 -> 19/84, no change. +7% UNet evaluations.
    #   Turned off again (session 9, vector_weight 0, the EraseConfig default): red, seeds 0-2, the retrained judge,
    #   256 cases a seed: with the term pre-attack 52/768 and soft prompt 118/256 = 0.46, without it 0/768 and
    #   4/256 = 0.02. Yellow, the same runs: concept vector 4/768 with the term, 37/768 = 0.05 without (inside the
    #   0.10 target; the 94/256 above was judged by the old judge, which over-called yellow), retain 667 -> 697/768.
    # - retain_early_weight 0 (the EraseConfig default): an extra retain term at weight 10 on the first quarter of
    #   the sampling steps brought retain within 5 points of the original on red, square and yellow (3 seeds each:
    #   square 685 -> 741/768), but raised square's concept vector 56 -> 99/768 and soft prompt 37 -> 62/256.
    # - attack_epsilon 1 (the EraseConfig default, the headline probe's budget): 2, a training ball twice the probe's
    #   (sessions 29-30, all 8 concepts, 3 seeds, the same cases as the preset's), cut the headline successes 105 ->
    #   78 of 6,144 (square's concept vector 16 -> 8/256, green's 20 -> 0/256) and met square's and circle's retain
    #   targets, but retain over the 8 fell 1949 -> 1942/2048 and yellow lost its retain target (245 -> 240/256):
    #   the rule written before the run failed on both counts, so 1 stays.
    # - attack_population 1 (the EraseConfig default): 4 token sets warm-started in turn (sessions 30-31, square and
    #   red, 3 seeds) gave headline successes 79 -> 82 of 1,536 and square's pre-attack 0 -> 8/256 (its target
    #   lost) for retain 486 -> 493/512: the pointer written before the run failed, so 1 stays.
    # - concept_pool_size 16: 64 trajectories a concept (session 31, square and red, seeds 0-1, stopped there) doubled
    #   the headline successes, 47 -> 94 of 1,032 (square's soft prompt 30 -> 69/172); 8 (3 seeds) raised them 79 ->
    #   92 of 1,536 and cost retain 486 -> 469/512 (red's target lost). 16 stays.
    # - concept_pool_captions 0 (the EraseConfig default): half the concept trajectories sampled from the concept's
    #   captions (session 35, square, 9 training seeds a side, 2,304 cases): soft prompt 656 -> 531 (by seed 0.285 ->
    #   0.230, the difference not shown: Welch [-0.159, +0.050]), retain 2170 -> 2139 (1.3 points lower). 0 stays.
    # - retain_batch 16 (not 8; 32 since session 28, below): the same retain term (weight 10 on the mean of its
    #   points) on twice the points a step, so half its gradient noise, for 3,200 more UNet evaluations a run (+13%).
    #   Square, seeds 0-2, 256 cases a seed: retain 685 -> 722/768, pre-attack 10 -> 0/768, concept vector 56 ->
    #   2/768, soft prompt 37 -> 37/256 (seeds on thirds). Star, the same: retain 680 -> 715/768 (0.885 -> 0.931),
    #   pre-attack 0 -> 0/768, concept vector 1 -> 2/768, soft prompt 0 -> 0/256. The first change that raised retain
    #   without raising any probe.
    #   32 (+23% UNet evaluations): with `layers` [0] and a never-restarted attacker, below (session 28).
    # - project_conflicts (training/projection.py, sessions 17-18): all 8 concepts, 3 training seeds each, the full
    #   benchmark's cases, against its encoders (same seeds, one thread each): square's soft prompt 81 -> 41/256
    #   (lower on every seed), retain 223 -> 240/256; star's retain 240 -> 247; green worse (concept vector 7 ->
    #   20/256, pre-attack 0 -> 4/256, retain 238 -> 225); retain over the 8: 1913 -> 1917/2048; the concepts that
    #   meet every AdvUnlearn target 2 -> 3 (triangle, blue; + star). About +5% CPU.
    # Its other departures from the paper, and what stands behind each:
    # - negative_guidance 2 (the paper: 1), set in the first tuning of this model (commit 018d4ea) with no figure
    #   kept. At 1 (session 21, square and green, training seeds 0-1, 344 cases) the headline probes' successes were
    #   135 of 1,032 against 46 at 2, pre-attack 10/344 against 1/344, retain 322 against 318/344. At 3 (sessions
    #   21-22: 6 of the 8 concepts, 3 seeds, 1,536 cases; triangle and blue not run, the rule already decided):
    #   headline successes 110 against 119 of 4,608, retain 1,390 against 1,416/1,536 (red's soft prompt 23 -> 6/256,
    #   square's 41 -> 62/256), and star's retain 247 -> 241/256 loses its met target. 2 stays.
    # - attack_steps 10 (the paper: 30; the probe runs 30). 20 was measured twice and not adopted: square, 3 seeds,
    #   soft prompt 89 -> 64/256 for 1.5x the training time (renders-only judge); with project_updates on all 8
    #   concepts, headline successes 119 -> 128 of 6,144. 30 was not measured (3x the attack's time). 5 at the
    #   current preset (session 32, square and red, 3 seeds): headline successes 79 -> 107 of 1,536 (square's soft
    #   prompt 56 -> 72/256: 7 / 19 / 46 by seed), retain 486 -> 488/512 (red 246 -> 248/256).
    # - attack_k 3 (the paper: 1): as many tokens as the headline probes insert (UnlearnDiffAtk's k for objects and
    #   styles), so the training attack searches the space the probes search; 1 was not measured. 5 (session 32,
    #   square and red, seed 0, stopped there): red's retain 82 -> 70 of 88 and soft prompt 0 -> 19 of 88.
    # - warmup_iterations 20 (the paper: 200 of 1000): not measured against a longer warm-up.
    # - concept_batch 4, attack_batch 2 (the paper: 1 each): pool points cost no teacher evaluation
    #   (training/points.py); not measured apart from the retune they came with (commit a242e5c). concept_batch 8
    #   (session 31, square and red, seed 0, stopped there) cost red's retain 82 -> 72 of 88 for 1.5x the time.
    #   attack_batch 4 (session 31, square and red, 3 seeds): headline successes 79 -> 98 of 1,536 (square's soft
    #   prompt 56 -> 70/256, red's 6 -> 0/256), retain 486 -> 484/512.
    # - layers [0], attack_restart_every 0 and retain_batch 32, together (session 28; EraseConfig's defaults:
    #   every layer, a fresh attack every 10th refresh, 16 retain points here and 5 in the paper): the first of the
    #   encoder's 2 layers alone, trained against an attacker that keeps its tokens for the whole run, with 32 retain
    #   points a step. All 8 concepts, 3 training seeds, 256 cases a cell, against the preset before it on the same
    #   cases, judged by a rule written before session 25 (no met target lost, retain and headline successes no worse
    #   over the 8): retain 1917 -> 1949/2048, headline successes 119 -> 105 of 6,144, pre-attack 4 -> 0 of 2,048;
    #   the concepts meeting every AdvUnlearn target 3 -> 5 (red and yellow join triangle, star and blue; red's soft
    #   prompt 23 -> 6/256, green's headline successes 37 -> 22 of 768). Square pays: soft prompt 41 -> 56/256,
    #   concept vector 6 -> 16/256; its targets were missed before too.
    #   Each part alone lost somewhere: layer 0 alone (sessions 23-24) raised retain but square's soft prompt 41 ->
    #   63/256 (over the 8, more headline successes than the preset's 119); never restarting the attacker at layer 0
    #   (sessions 25-26) cut the headline successes on six concepts 119 -> 85 of 4,608 but red's retain 233 -> 218/256,
    #   which the 32 retain points bought back (246/256). A fresh attack at every refresh lost both (seed 0: retain 135
    #   against 163 of 176), one every 40th lost retain (square and red, seeds 0-1: 299 against 311 of 344). Every
    #   bias and norm stays trained: the matrices alone (seeds 0-1) raised the headline successes 46 -> 76 of 1,032.
    #   About +20% training CPU. ESD keeps every layer and 16 retain points (demo/run.py ESD_BASELINE): the
    #   baseline as it was measured.
    # - num_ddim_steps 20, guidance 5 (the paper: 50, 3): the demo model's own sampling settings, with which its
    #   quality and every benchmark image were measured.
    "demo": dict(
        lr=1e-3, iterations=400, attack_every=2, warmup_iterations=20, attack_steps=10, attack_k=3, attack_lr=1e-2,
        attack_insertion="prefix", attack_batch=2, concept_batch=4, plain_weight=1.0,
        retain_weight=10.0, retain_batch=32, retain_set="shapes_world", caption_weight=1.0, attack_captions=True,
        negative_guidance=2.0, num_ddim_steps=20, guidance=5.0, concept_pool_size=16, retain_pool_size=64,
        max_unet_batch=32,  # a small UNet on a CPU: one call on 20 latents with backward took 0.17 s, 4 calls 0.24 s
        project_conflicts=True, layers=[0], attack_restart_every=0,
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
