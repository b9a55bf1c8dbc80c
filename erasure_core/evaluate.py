"""Check an erasure instead of trusting it: attack success rates before and after probes, and utility.

For every text encoder (the original first, then the erased ones) and every concept case (prompt, seed):
1. the plain prompt is generated and judged: pre-attack success;
2. every probe attacks the cases that were NOT already a success. Probes with a budget (the soft prompt's
   epsilon) run smallest ball first, and a larger ball attacks only the cases no smaller one broke: a point
   found inside a ball lies inside every larger ball of the same search space (nested budgets; on the same
   cases the curve is then monotone by construction and each budget's ASR is an honest lower bound, from one
   attack per budget).
   pre-attack ASR  = pre-attack successes / N
   post-attack ASR = (pre-attack successes + probe successes on the rest) / N   (per probe; the paper's "ASR")
   Both are reported with their counts (successes, n), never only as fractions.
   Probes have a role: "headline" ones make the post-attack ASR; "stress" ones (the unbounded soft prompt,
   which no text-encoder method can be expected to hold) are reported apart as stress ASR; "curve" ones are
   only points of the robustness curve (soft-prompt ASR against its budget epsilon, with epsilon 0 = pre-attack).
   `curve_cases` may restrict the curve-only probes to a subset of the cases (they cost a full attack on every
   case an erased encoder holds): a case outside it is never attacked by them and left out of their n, so each
   curve point states its own N and stays a lower bound over the cases it was measured on.
3. Utility on retain prompts: the erased encoder's image against the original's on the same seed (mean absolute
   pixel distance in [0, 1]) and, when the judge can say what a retain image should show, retain accuracy.
   The concept judge also looks at every retain image: `concept_on_retain` is how often a prompt that does not
   name the concept still shows it. Beside the original's rate it shows an erasure that moved the concept under
   another name, which no concept-prompt probe can see (on the demo model, with red erased, "a yellow square ..."
   came out red in 4 of 4 generation seeds; bench/demo_preset_tuning.md, session 25).

Work is batched across cases: one sampling run generates a batch of plain prompts, and every probe attacks a
batch of prompts at once (`Probe.run_batch`; one batched UNet call per optimisation step), `batch_size` cases at
a time. Each case keeps its own seed, so its figures do not depend on the batch it ran in.

Every case keeps its seed, adversarial prompt, loss curve, judge details and image paths; `report.write_report`
turns the result into report.json + report.html. Each encoder's `timings` say where the time went: wall and CPU
seconds of plain generation, of every probe (with the cases it really attacked) and of retain generation.

Large prompt sets are sharded across processes with `sharding.evaluate_sharded`; the rates are computed from
the records by `summaries.summarize`.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence

import torch
from transformers import CLIPTextModel

from .attacks.base import Probe, within_budget
from .attacks.replay import PromptCase, as_cases, case_generation
from .errors import ErasureError
from .files import prepare_output, safe_name, save_png
from .judges.base import Judge
from .models import SDModel
from .sampling import GenerationSettings, encode_prompts, generate, generate_and_judge_batch
# The rates live in summaries.py; their names stay importable from here, where callers have always found them.
from .summaries import asr_summary, headline_rates, summarize, utility_summary  # noqa: F401

SCHEMA = "erasure_core.evaluate/1"
ORIGINAL = "original"


# ------------------------------------------------------------------------------------------- images


class ImageSink:
    """Where case images go: PNGs under `out_dir` as soon as they exist (bounded memory on big runs), or kept
    in memory for `report.write_report` when there is no folder yet."""

    def __init__(self, out_dir: str | Path | None):
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.pending: dict[str, torch.Tensor] = {}

    def put(self, relpath: str, image: torch.Tensor) -> str:
        if self.out_dir is None:
            self.pending[relpath] = image.detach().cpu()
        else:
            save_png(image, self.out_dir / relpath)
        return relpath


# ------------------------------------------------------------------------------------------- evaluation


class _Run:
    """The shared state of one evaluation: model, settings, judge, where images go, progress."""

    def __init__(self, model, judge, generation, sink, progress, total, batch_size=8):
        self.model, self.judge, self.generation, self.sink = model, judge, generation, sink
        self.batch_size = batch_size
        self.progress, self.total, self.done = progress, total, 0
        self.timings: dict[str, dict] = {}  # per encoder: where the evaluation's time went (`timed`)

    @contextmanager
    def timed(self, enc_name: str, part: str, cases: int, probe: str | None = None):
        """Adds the wall and CPU seconds of the block, and the cases it worked on, to the encoder's timings
        (part "plain" or "retain", or part "probes" with the probe's name). CPU time beside wall time: on a
        shared machine the wall clock measures the neighbours as much as the run."""
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            entry = self.timings.setdefault(enc_name, _empty_timings())
            slot = entry[part] if probe is None else entry[part].setdefault(probe, _timing(0.0, 0.0, 0, "attacked"))
            _add_timing(slot, _timing(time.perf_counter() - wall, time.process_time() - cpu, cases,
                                      "cases" if probe is None else "attacked"))

    def tick(self, what: str):
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total, what)


def _timing(seconds: float, cpu: float, cases: int, counted: str) -> dict:
    return {"seconds": seconds, "cpu_seconds": cpu, counted: cases}


def _empty_timings() -> dict:
    """An encoder's timings: plain and retain generation (cases generated), and per probe (cases attacked:
    those skipped as already broken, before the attack or inside a smaller ball, cost nothing and are not
    counted). The soft-prompt probe's targets come from the original model and are computed once per case, by
    the first encoder and budget that attack the case: that attack's time includes them."""
    return {"plain": _timing(0.0, 0.0, 0, "cases"), "probes": {}, "retain": _timing(0.0, 0.0, 0, "cases")}


def _add_timing(total: dict, part: dict) -> None:
    for key, value in part.items():
        total[key] = round(total.get(key, 0) + value, 3) if isinstance(value, float) else total.get(key, 0) + value


def sum_timings(entries) -> dict:
    """Several encoders' (or shards') timings summed part by part: seconds, CPU seconds and case counts."""
    total = _empty_timings()
    for entry in entries:
        for part in ("plain", "retain"):
            _add_timing(total[part], entry[part])
        for probe, timing in entry["probes"].items():
            _add_timing(total["probes"].setdefault(probe, {}), timing)
    return total


def _batches(cases: dict[int, PromptCase], generation: GenerationSettings, batch_size: int):
    """(settings, [index, ...]) for runs of at most `batch_size` cases sharing the same generation settings."""
    groups: dict[tuple, tuple[GenerationSettings, list[int]]] = {}
    for index, case in cases.items():
        settings = case_generation(case, generation)
        key = (settings.steps, settings.guidance, settings.scheduler, settings.negative_prompt)
        groups.setdefault(key, (settings, []))[1].append(index)
    for settings, indices in groups.values():
        for start in range(0, len(indices), batch_size):
            yield settings, indices[start:start + batch_size]


def _plain(run: _Run, encoder, enc_name: str, cases: dict[int, PromptCase]) -> dict[int, dict]:
    """Every case's plain prompt generated (in batches) and judged: {index: record}."""
    records = {}
    for settings, indices in _batches(cases, run.generation, run.batch_size):
        conds = encode_prompts(run.model, [cases[i].prompt for i in indices], encoder)
        images, successes, judged = generate_and_judge_batch(run.model, encoder, conds,
                                                             [cases[i].seed for i in indices], run.judge, settings)
        for j, index in enumerate(indices):
            image = run.sink.put(f"images/{enc_name}/case{index:04d}_plain.png", images[j])
            records[index] = {"success": successes[j], "image": image, **judged[j]}
            run.tick(f"{enc_name}: plain prompt {index}")
    return records


def _probe_cases(run: _Run, probe: Probe, encoder, enc_name: str, cases: dict[int, PromptCase]) -> dict[int, dict]:
    """`probe` run on `cases` in batches: {index: record}."""
    records = {}
    for settings, indices in _batches(cases, run.generation, run.batch_size):
        results = probe.run_batch(run.model, encoder, [cases[i].prompt for i in indices],
                                  seeds=[cases[i].seed for i in indices], judge=run.judge, generation=settings)
        for index, result in zip(indices, results):
            record = result.summary()
            if result.images is not None:
                record["image"] = run.sink.put(f"images/{enc_name}/case{index:04d}_{safe_name(probe.name)}.png",
                                               result.images[0])
            records[index] = record
            run.tick(f"{enc_name}: {probe.name} on prompt {index}")
    return records


def attack_order(probes: Sequence[Probe]) -> list[Probe]:
    """Probes with a budget first, smallest budget first (stable), then the others in their given order: each
    larger ball then attacks only what the smaller ones left (`_known_success`)."""
    budgeted = sorted((p for p in probes if p.budget() is not None), key=lambda p: p.budget()[1])
    return budgeted + [p for p in probes if p.budget() is None]


def _known_success(plain: dict, done: dict[str, dict], probe: Probe, by_name: dict[str, Probe]) -> dict | None:
    """The record of a case `probe` need not attack, or None. A case that succeeded before the attack counts as a
    success after every attack (the UnlearnDiffAtk convention); a success found inside a smaller ball of the same
    search space is a point inside this probe's ball too (nested budgets). Both make post-attack ASR an honest
    lower bound: what some attack within the budget found, never a guess."""
    if plain["success"]:
        return {"success": None, "skipped": "success before the attack"}
    for name, record in done.items():
        if record.get("success") and within_budget(by_name[name], probe):
            return {"success": True, "skipped": f"found within the smaller budget of {name}",
                    "found_by": record.get("found_by", name)}
    return None


# The record of a case a curve-only probe leaves alone (outside `curve_cases`): left out of that probe's n.
OUTSIDE_CURVE_CASES = {"success": None, "skipped": "outside the curve's cases", "excluded": True}


def _evaluate_concept(run: _Run, encoders: dict, cases: dict[int, PromptCase], probes: list[Probe],
                      curve_cases: set[int] | None = None) -> dict:
    per_encoder = {}
    by_name = {p.name: p for p in probes}
    excluded = {p.name: {i for i in cases if i not in curve_cases} if getattr(p, "role", "headline") == "curve"
                and curve_cases is not None else set() for p in probes}
    for enc_name, encoder in encoders.items():
        with run.timed(enc_name, "plain", len(cases)):
            plain = _plain(run, encoder, enc_name, cases)
        attacked = {index: {} for index in cases}
        for probe in attack_order(probes):
            rest = {}
            for index, case in cases.items():
                known = (dict(OUTSIDE_CURVE_CASES) if index in excluded[probe.name]
                         else _known_success(plain[index], attacked[index], probe, by_name))
                if known is None:
                    rest[index] = case
                    continue
                attacked[index][probe.name] = known
                run.tick(f"{enc_name}: {probe.name} on prompt {index}")
            with run.timed(enc_name, "probes", len(rest), probe.name):
                records = _probe_cases(run, probe, encoder, enc_name, rest)
            for index, record in records.items():
                attacked[index][probe.name] = record
        per_encoder[enc_name] = {"cases": [
            {"index": i, "plain": plain[i], "probes": {p.name: attacked[i][p.name] for p in probes}} for i in cases]}
    return per_encoder


def _evaluate_retain(run: _Run, encoders: dict, cases: dict[int, PromptCase], retain_check) -> dict:
    """Retain records per encoder; each erased image is compared with the original's on the same seed."""
    reference = {}
    out = {}
    for enc_name, encoder in encoders.items():
        records = {}
        with run.timed(enc_name, "retain", len(cases)):
            _retain_batches(run, encoder, enc_name, cases, retain_check, reference, records)
        out[enc_name] = [records[i] for i in cases]
    return out


def _retain_batches(run: _Run, encoder, enc_name: str, cases: dict[int, PromptCase], retain_check,
                    reference: dict, records: dict) -> None:
    """Generates `cases` retain prompts in batches with `encoder` into `records`; the original's images fill
    `reference`, the others are compared with them."""
    for settings, indices in _batches(cases, run.generation, run.batch_size):
        prompts = [cases[i].prompt for i in indices]
        images = generate(run.model, encode_prompts(run.model, prompts, encoder), [cases[i].seed for i in indices],
                          uncond=encode_prompts(run.model, [settings.negative_prompt], encoder),
                          steps=settings.steps, guidance=settings.guidance, text_encoder=encoder,
                          scheduler=settings.scheduler)
        correct = retain_check(images, prompts) if retain_check is not None else None
        shown = run.judge(images).flags
        for j, index in enumerate(indices):
            if enc_name == ORIGINAL:
                reference[index] = images[j]
            record = {"index": index, "image": run.sink.put(f"images/{enc_name}/retain{index:04d}.png", images[j]),
                      "shows_concept": bool(shown[j])}
            if index in reference:
                record["pixel_distance"] = float((images[j] - reference[index]).abs().mean())
            if correct is not None:
                record["retain_correct"] = bool(correct[j])
            records[index] = record
            run.tick(f"{enc_name}: retain prompt {index}")


def _with_original(model: SDModel, encoders: dict[str, CLIPTextModel]) -> dict[str, CLIPTextModel]:
    """The original encoder first: it is the reference for utility and the 'before erasure' column."""
    if not encoders:
        raise ErasureError("evaluate needs at least one text encoder")
    if any(safe_name(n) != n for n in encoders):
        raise ErasureError(f"encoder names must be plain words (letters, digits, _ . -): {list(encoders)}")
    named_original = {n: e for n, e in encoders.items() if e is model.text_encoder}
    if ORIGINAL in encoders and encoders[ORIGINAL] is not model.text_encoder:
        raise ErasureError("the encoder name 'original' is reserved for the model's own text encoder")
    rest = {n: e for n, e in encoders.items() if n not in named_original}
    return {ORIGINAL: model.text_encoder, **rest}


def _check_probes(probes: Sequence[Probe], model: SDModel) -> list[Probe]:
    """Distinct names and valid settings, before the first image is written (a probe runs after generation)."""
    probes = list(probes)
    names = [p.name for p in probes]
    if len(set(names)) != len(names):
        raise ErasureError(f"two probes share a name ({names}); give each probe a distinct name")
    for probe in probes:
        probe.check(model)
    return probes


def evaluate(
    model: SDModel,
    encoders: dict[str, CLIPTextModel],
    prompts,
    probes: Sequence[Probe],
    judge: Judge,
    *,
    seeds: Sequence[int] = (0,),
    steps: int = 20,
    guidance: float = 7.5,
    scheduler: str = "ddim",
    negative_prompt: str = "",
    retain_prompts=(),
    retain_check: Callable | None = None,
    out_dir: str | Path | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    case_indices: Sequence[int] | None = None,
    retain_indices: Sequence[int] | None = None,
    write_report: bool = True,
    batch_size: int = 8,
    curve_cases: Sequence[int] | None = None,
) -> dict:
    """Evaluate every encoder (the model's original encoder is always included, as "original") on `prompts`
    (strings, PromptCases or a CSV path; strings are crossed with `seeds`) under every probe, judged by `judge`.

    retain_check(images, prompts) -> list[bool] says whether retain images show what their prompts ask for;
    it defaults to the judge's `check_retain` method when it has one. With `out_dir`, images are written as they
    are made and the report is written at the end. `case_indices`/`retain_indices` restrict the run to a shard.
    `progress(done, total, what)` is called after each generation or attack. `batch_size` cases are generated
    and attacked at once (memory grows with it; the demo model takes 64 and more). `curve_cases`: the indices
    of the cases the curve-only probes (role "curve") attack; None = every case.
    """
    if batch_size < 1:
        raise ErasureError(f"batch_size must be >= 1, got {batch_size}")
    if judge is None:
        raise ErasureError("evaluate needs a judge to decide whether an image shows the concept")
    encoders = _with_original(model, encoders)
    probes = _check_probes(probes, model)
    generation = GenerationSettings(steps=steps, guidance=guidance, scheduler=scheduler,
                                    negative_prompt=negative_prompt)
    cases = as_cases(prompts, seeds)
    retain = as_cases(retain_prompts, seeds) if retain_prompts else []
    chosen = {i: cases[i] for i in (range(len(cases)) if case_indices is None else case_indices)}
    if curve_cases is not None and not set(curve_cases) <= set(range(len(cases))):
        raise ErasureError(f"curve_cases must be indices of the {len(cases)} cases (0 to {len(cases) - 1})")
    chosen_retain = {i: retain[i] for i in (range(len(retain)) if retain_indices is None else retain_indices)}
    retain_check = retain_check or getattr(judge, "check_retain", None)
    total = len(encoders) * (len(chosen) * (1 + len(probes)) + len(chosen_retain))
    if out_dir is not None:
        prepare_output(out_dir, folder=True)  # a file in the way is reported now, not at the first image
    sink = ImageSink(out_dir)
    run = _Run(model, judge, generation, sink, progress, total, batch_size)
    concept = _evaluate_concept(run, encoders, chosen, probes, None if curve_cases is None else set(curve_cases))
    retained = _evaluate_retain(run, encoders, chosen_retain, retain_check)
    results = {
        "schema": SCHEMA,
        "model": {"name": model.name, "source": model.source},
        "judge": judge.describe(),
        "generation": {"steps": steps, "guidance": guidance, "scheduler": scheduler,
                       "negative_prompt": negative_prompt, "seeds": [int(s) for s in seeds]},
        "probes": [{**p.describe(), "role": getattr(p, "role", "headline")} for p in probes],
        "curve_cases": None if curve_cases is None else sorted(int(i) for i in curve_cases),
        "cases": [_case_json(i, c) for i, c in chosen.items()],
        "retain_cases": [_case_json(i, c) for i, c in chosen_retain.items()],
        "encoders": {
            name: {"cases": concept[name]["cases"], "retain": retained[name],
                   "timings": run.timings.get(name, _empty_timings())} for name in encoders
        },
    }
    summarize(results)
    if sink.pending:
        results["_images"] = sink.pending
    if out_dir is not None and write_report:
        from .report import write_report as write

        write(results, out_dir)
    return results


def _case_json(index: int, case: PromptCase) -> dict:
    return {"index": index, "prompt": case.prompt, "seed": case.seed, "guidance": case.guidance,
            "negative_prompt": case.negative_prompt, "meta": case.meta}
