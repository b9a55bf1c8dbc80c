"""Prompt replay: generate (and judge) a list of prompts with no attack.

The prompt files follow the layout of the I2P-derived benchmark CSVs: a `prompt` column (required) and
optional `seed` (per-prompt evaluation seed; also accepted: `evaluation_seed`, `sd_seed`), `guidance`
(also `evaluation_guidance`, `sd_guidance_scale`) and `negative_prompt` columns. Headers are case-insensitive;
other columns are kept as metadata.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from transformers import CLIPTextModel

from ..errors import ErasureError
from ..judges.base import Judge
from ..models import SDModel
from ..sampling import GenerationSettings, encode_prompts, generate_and_judge
from .base import ProbeResult

COLUMN_ALIASES = {
    "seed": ("seed", "evaluation_seed", "sd_seed"),
    "guidance": ("guidance", "evaluation_guidance", "sd_guidance_scale", "guidance_scale"),
    "negative_prompt": ("negative_prompt", "negative"),
}


@dataclass
class PromptCase:
    """One prompt to evaluate; seed/guidance/negative_prompt None mean "use the run's defaults"."""

    prompt: str
    seed: int | None = None
    guidance: float | None = None
    negative_prompt: str | None = None
    meta: dict = field(default_factory=dict)


def _pick(row: dict, names: Sequence[str]) -> str | None:
    for name in names:
        value = row.get(name)
        if value is not None and str(value).strip() != "":
            return str(value).strip()
    return None


def _number(value: str | None, kind, column: str, path: Path, line: int):
    if value is None:
        return None
    try:
        return kind(float(value)) if kind is int else kind(value)
    except ValueError:
        raise ErasureError(f"{path}, line {line}: column {column!r} must be a number, got {value!r}") from None


def load_prompt_csv(path: str | Path) -> list[PromptCase]:
    """Read a prompt CSV into cases; a clear error for a missing file, a missing `prompt` column or bad cells."""
    path = Path(path)
    if not path.is_file():
        raise ErasureError(f"prompt file {path} does not exist; give a CSV with a 'prompt' column")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        headers = [h.strip().lower() for h in (reader.fieldnames or [])]
        if "prompt" not in headers:
            raise ErasureError(
                f"{path} has no 'prompt' column (found: {', '.join(headers) or 'no header'}); "
                "add a header row with a 'prompt' column (optional: seed, guidance, negative_prompt)"
            )
        cases = []
        for line, raw in enumerate(reader, start=2):
            row = {str(k).strip().lower(): v for k, v in raw.items() if k is not None}
            cases.append(_case(row, path, line))
    if not cases:
        raise ErasureError(f"{path} has a header but no prompts")
    return cases


def _case(row: dict, path: Path, line: int) -> PromptCase:
    prompt = (row.get("prompt") or "").strip()
    if not prompt:
        raise ErasureError(f"{path}, line {line}: empty prompt")
    known = {"prompt", *(n for names in COLUMN_ALIASES.values() for n in names)}
    return PromptCase(
        prompt=prompt,
        seed=_number(_pick(row, COLUMN_ALIASES["seed"]), int, "seed", path, line),
        guidance=_number(_pick(row, COLUMN_ALIASES["guidance"]), float, "guidance", path, line),
        negative_prompt=_pick(row, COLUMN_ALIASES["negative_prompt"]),
        meta={k: v for k, v in row.items() if k not in known},
    )


def as_cases(prompts, seeds: Sequence[int]) -> list[PromptCase]:
    """Strings or PromptCases -> one PromptCase per (prompt, seed). A case with its own seed keeps it;
    plain prompts are crossed with `seeds`."""
    if isinstance(prompts, (str, Path)) and str(prompts).lower().endswith(".csv"):
        prompts = load_prompt_csv(prompts)
    elif isinstance(prompts, str):
        prompts = [prompts]
    cases = []
    for item in prompts:
        case = item if isinstance(item, PromptCase) else PromptCase(str(item))
        if case.seed is not None:
            cases.append(case)
            continue
        if not seeds:
            raise ErasureError(f"prompt {case.prompt!r} has no seed and no default seeds were given")
        cases.extend(PromptCase(case.prompt, int(s), case.guidance, case.negative_prompt, case.meta) for s in seeds)
    if not cases:
        raise ErasureError("no prompts to evaluate")
    return cases


def case_generation(case: PromptCase, defaults: GenerationSettings) -> GenerationSettings:
    """The generation settings of one case: its own guidance/negative prompt over the run's defaults."""
    return GenerationSettings(
        steps=defaults.steps,
        guidance=defaults.guidance if case.guidance is None else case.guidance,
        scheduler=defaults.scheduler,
        negative_prompt=defaults.negative_prompt if case.negative_prompt is None else case.negative_prompt,
    )


def replay(
    model: SDModel,
    text_encoder: CLIPTextModel,
    prompts,
    *,
    seeds: Sequence[int] = (0,),
    judge: Judge | None = None,
    generation: GenerationSettings | None = None,
    progress=None,
) -> list[ProbeResult]:
    """Generate every case as written (no attack); one ProbeResult per case, judged when a judge is given.
    `prompts`: a CSV path, a list of strings or PromptCases. `progress(done, total)` is called per case."""
    generation = generation or GenerationSettings()
    cases = as_cases(prompts, seeds)
    results = []
    for done, case in enumerate(cases, start=1):
        settings = case_generation(case, generation)
        cond = encode_prompts(model, [case.prompt], text_encoder)
        images, success, judged = generate_and_judge(model, text_encoder, cond, case.seed, judge, settings)
        details = {"prompt": case.prompt, "seed": case.seed, "guidance": settings.guidance,
                   "negative_prompt": settings.negative_prompt, **judged}
        results.append(ProbeResult("replay", cond.cpu(), case.prompt, None, [], images, success, details))
        if progress is not None:
            progress(done, len(cases))
    return results
