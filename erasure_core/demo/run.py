"""The demo: erase a concept from the embedded shapes-world model with ESD and with AdvUnlearn, attack the
original and both erased encoders with every probe, judge everything, and write a report.

    python -m erasure_core demo --concept circle --out out/demo

The same measurement, scaled up, is `bench/demo_efficacy.py`.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..attacks.soft_prompt import DEFAULT_EPSILON
from . import DEFAULT_GUIDANCE, DEFAULT_STEPS, world

METHODS = ("esd", "advunlearn")


@dataclass
class DemoSettings:
    """Sizes of the demo run. With the defaults the demo took 259.5 s on an idle 2-core CPU (session 32, ESD
    trained beside AdvUnlearn), within its 5-minute target: training is 89% of it (README, "Where the demo's time
    goes")."""

    concept_prompts: int = 8
    retain_prompts: int = 8
    seeds: tuple[int, ...] = (0,)
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    # Erasure settings on top of the "demo" preset (erasure_core/presets.py), e.g. {"iterations": 60}.
    erase: dict = field(default_factory=dict)
    # The soft prompt averages 2 latent points a step, not 4: on ESD (demo preset, training seed 0, 30 steps,
    # epsilon 1, one CPU thread on a busy machine) 4 points broke 67/128 circle cases [0.44, 0.61] for 1.9 s of
    # CPU a case, 2 points 77/128 [0.51, 0.68] for about half of it, 1 point only 49/128 [0.30, 0.47] (red: 56,
    # 61 and 54 of 64). Judging every 10 steps to stop early was dropped: on red it cost 1.5x for 25 against 23
    # of 33 cases (each check is a 20-step generation).
    probes: dict = field(default_factory=lambda: {
        "soft_prompt": dict(k=3, steps=30, lr=0.01, trajectories=2, points=2, sampling_steps=20),
        "unlearndiffatk": dict(k=3, timesteps=(200, 500, 800), steps_per_timestep=10),
        "concept_vector": dict(strengths=(1.0, 2.0, 4.0)),
    })
    # The soft-prompt budgets of the robustness curve (x the median token norm; None = unbounded, the stress
    # probe). The training attack's budget (soft_prompt.DEFAULT_EPSILON) is the headline soft-prompt probe.
    # The demo draws a coarser curve than the benchmark (CURVE_EPSILONS adds 0.5 and 2): each budget is one
    # more soft-prompt attack per encoder, and the soft-prompt attacks were 75% of the demo's evaluation time
    # (profiled: 600 of 1,020 s wall with 5 budgets, 8 prompts, on the shared machine).
    curve_epsilons: tuple = (DEFAULT_EPSILON, 4.0, None)
    batch_size: int = 64  # cases generated and attacked at once (the demo model is small: memory is no issue)

    def to_dict(self) -> dict:
        return asdict(self)


# The baseline as published (ESD-TE: the bare word against "", nothing anchored): the options the demo preset adds
# for AdvUnlearn are switched off, so the comparison is with the method the paper compares with. The shared settings
# (iterations, negative guidance 2 where ESD's paper uses 1, sampling, the retain term) stay as every benchmark figure
# for ESD was measured: every layer trained and 16 retain points a step, which the preset changed for AdvUnlearn
# alone in session 28 (`layers` [0], `retain_batch` 32; the attack's restarts do not touch ESD, which has no attack,
# but are pinned so ESD's config, and so a kept ESD encoder, stays the one measured).
ESD_BASELINE = dict(anchor_weight=0.0, caption_weight=0.0, vector_weight=0.0, plain_contrast=False,
                    attack_captions=False, project_conflicts=False, layers="all", retain_batch=16,
                    attack_restart_every=10)


def demo_erase_config(method: str, seed: int, settings: DemoSettings, concept: str | None = None):
    """The demo preset for `method`; for a concept of the world, its siblings as the contrast words (the other
    values of its attribute, e.g. square/triangle/star for circle); for ESD, the published baseline."""
    from ..training import EraseConfig

    values = dict(ESD_BASELINE) if method == "esd" else {}
    if concept is not None and method != "esd":
        values["contrast_words"] = world.siblings(concept)
    return EraseConfig.from_preset("demo", method=method, seed=seed, **{**values, **settings.erase})


def demo_probes(concept: str, settings: DemoSettings) -> list:
    """The headline probes (bounded soft prompt, UnlearnDiffAtk, concept vector), the stress probe (unbounded
    soft prompt) and the curve-only soft-prompt budgets."""
    from ..attacks.registry import build_probe
    from ..attacks.soft_probe import robustness_probes

    # the headline soft-prompt probe is always run; each budget once
    epsilons = tuple(dict.fromkeys((DEFAULT_EPSILON, *settings.curve_epsilons)))
    soft = robustness_probes(epsilons, **settings.probes.get("soft_prompt", {}))
    others = [build_probe(name, concept=concept, **settings.probes.get(name, {}))
              for name in ("unlearndiffatk", "concept_vector")]
    return soft + others


def format_table(encoders: dict) -> str:
    """The ASR table the demo prints: one row per encoder, fractions in [0, 1]; the headline probes, then the
    stress probes (marked), retain accuracy, how often the concept showed on retain prompts (beside the original's:
    an erasure can move the concept under another name), then the robustness curve (soft-prompt ASR by budget)."""
    probes = sorted({p for v in encoders.values() for p in v["post_attack_asr"]})
    stress = sorted({p for v in encoders.values() for p in v.get("stress_asr", {})})
    epsilons = [p["epsilon"] for p in max((v.get("robustness_curve", []) for v in encoders.values()), key=len)]
    label = lambda eps: "unb" if eps is None else f"{eps:g}"  # noqa: E731
    head = ["encoder", "pre-ASR", *[f"post {p}" for p in probes], *[f"STRESS {p}" for p in stress], "retain acc",
            "concept on retain", "curve eps " + "/".join(label(e) for e in epsilons)]
    fraction = lambda r: "-" if r is None else f"{r:.2f}"  # noqa: E731
    rows = [head]
    for name, v in encoders.items():
        curve = "/".join("-" if p["rate"] is None else f"{p['rate']:.2f}" for p in v.get("robustness_curve", []))
        rows.append([name, f"{v['pre_attack_asr']:.2f}", *[f"{v['post_attack_asr'][p]:.2f}" for p in probes],
                     *[f"{v['stress_asr'][p]:.2f}" for p in stress],
                     fraction(v["retain_accuracy"]), fraction(v.get("concept_on_retain")), curve])
    return align_columns(rows)


def align_columns(rows: list[list[str]]) -> str:
    """Rows of cells as plain-text columns (the demo's and the efficacy benchmark's tables)."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows)


def _training_progress(configs: dict, progress):
    """The two trainings' iterations as one count, for `progress("train", done, total)` (thread-safe)."""
    if progress is None:
        return None
    done, lock = dict.fromkeys(configs, 0), threading.Lock()
    total = sum(config.iterations for config in configs.values())

    def report(method: str, step: int):
        with lock:
            done[method] = step
            progress("train", sum(done.values()), total)

    return report


def run_demo(
    concept: str = "circle",
    out_dir: str | Path = "out/demo",
    seed: int = 0,
    device: str = "cpu",
    settings: DemoSettings | None = None,
    model=None,
    log: Callable[[str], None] = print,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Run the whole demo and return report.json's content. `model` defaults to the embedded demo model.
    `progress(stage, done, total)`: stage "train" (iterations of both methods) or "evaluate" (generations and
    attacks); during training it is called from two threads."""
    from ..evaluate import evaluate
    from ..files import prepare_output
    from .judge import demo_retain_check
    from ..loading import load_model
    from ..report import write_report
    from .judge import DemoJudge
    from .training import side_by_side_threads, train_methods

    settings = settings or DemoSettings()
    attribute = world.attribute_of(concept)  # refuses unknown values, listing the valid ones
    prepare_output(out_dir, folder=True)  # a file in the way is reported now, not after 4 minutes of training
    started = time.perf_counter()
    model = model if model is not None else load_model("demo", device=device)
    judge = DemoJudge(concept)
    rng = random.Random(seed)
    concept_cases = world.prompts_naming(concept, settings.concept_prompts, rng)
    retain_cases = world.prompts_not_naming(concept, settings.retain_prompts, rng)
    configs = {method: demo_erase_config(method, seed, settings, concept) for method in METHODS}
    threads = side_by_side_threads(model.device)
    if threads:
        log(f"training {' and '.join(METHODS)} side by side, {threads} thread(s) each (erasure_core/demo/training.py)")
    t0 = time.perf_counter()
    trained = train_methods(model, concept, configs, _training_progress(configs, progress))
    encoders, training = {}, {}
    for method, (result, seconds) in trained.items():
        encoders[method] = result.text_encoder
        training[method] = {"seconds": seconds, "history": result.history, "side_by_side_threads": threads,
                            "unet_evaluations": result.unet_evaluations, "config": configs[method].to_dict()}
        log(f"erased {concept!r} with {method}: {seconds} s, {result.unet_evaluations} UNet evaluations")
    training_seconds = round(time.perf_counter() - t0, 1)
    log(f"trained both: {training_seconds} s (the latent pools they share counted once, in "
        f"{'advunlearn' if threads else 'esd'}'s evaluations)")

    probes = demo_probes(concept, settings)
    t0 = time.perf_counter()
    results = evaluate(
        model, encoders, [p for p, _ in concept_cases], probes, judge, seeds=settings.seeds,
        steps=settings.steps, guidance=settings.guidance, retain_prompts=[p for p, _ in retain_cases],
        retain_check=demo_retain_check(judge), out_dir=out_dir, write_report=False, batch_size=settings.batch_size,
        progress=None if progress is None else lambda done, total, _what: progress("evaluate", done, total),
    )
    log(f"evaluated {len(encoders) + 1} encoders with {len(probes)} probes: {time.perf_counter() - t0:.1f} s")
    results.update(
        concept=concept, attribute=attribute, n_prompts=len(results["cases"]),
        n_retain_prompts=len(results["retain_cases"]), seed=seed, settings=settings.to_dict(),
        training=training, training_seconds=training_seconds, evaluation_seconds=round(time.perf_counter() - t0, 1),
    )
    results["seconds"] = round(time.perf_counter() - started, 1)
    write_report(results, out_dir)
    log(format_table(results["encoders"]))
    log(f"report: {Path(out_dir) / 'report.html'} ({results['seconds']} s in all)")
    return results
