"""What every probe (adversarial prompt attack) shares: its result, generation settings and interface.

A probe attacks ONE prompt against one text encoder (original or erased) of an `SDModel`: it returns the
adversarial conditioning, the adversarial prompt where it is discrete, its loss curve and the images it made,
judged when a judge is given. Probes are plain objects with a `name`, a `run` method and `describe()`, so the
CLI, the nodes, `evaluate` and the demo drive them all the same way.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import CLIPTextModel

from ..errors import ErasureError
from ..judges.base import Judge
from ..models import SDModel
from ..sampling import GenerationSettings


@dataclass
class ProbeResult:
    """The outcome of one probe on one prompt and seed.

    cond: the adversarial conditioning [1, L, D] fed to the UNet; adv_text/adv_token_ids: the adversarial
    prompt where the probe is discrete (None for continuous probes); losses: the probe's objective per step;
    images: what the conditioning generated (None if nothing was generated); success: the judge's verdict on
    those images (None without a judge); details: probe-specific facts (judge details, timestep reached...).
    """

    probe: str
    cond: torch.Tensor
    adv_text: str | None = None
    adv_token_ids: list[int] | None = None
    losses: list[float] = field(default_factory=list)
    images: torch.Tensor | None = None
    success: bool | None = None
    details: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-ready facts (no tensors)."""
        return {
            "probe": self.probe,
            "adv_text": self.adv_text,
            "adv_token_ids": self.adv_token_ids,
            "losses": [float(x) for x in self.losses],
            "success": self.success,
            "details": self.details,
        }


class Probe:
    """Subclasses set `name` and implement `run` (one prompt) or `run_batch` (many, batched), or both.

    `on_step(step, loss)`, when set by the caller (CLI progress bar, a node's live loss chart), is called after
    every optimisation step of probes that run their own loop; raising from it cancels the probe.
    """

    name: str = "probe"
    # "headline": counted in post-attack ASR; "stress": reported apart (a probe no text-encoder method can be
    # expected to withstand, e.g. the unbounded soft prompt); "curve": only a point of the robustness curve.
    role: str = "headline"
    on_step = None

    def run(
        self,
        model: SDModel,
        text_encoder: CLIPTextModel,
        prompt: str,
        *,
        seed: int,
        judge: Judge | None = None,
        generation: GenerationSettings | None = None,
    ) -> ProbeResult:
        """One prompt and seed. A subclass implements this or `run_batch`; by default it is `run_batch` on a
        batch of one (so a batched probe does not restate this signature)."""
        if type(self).run_batch is Probe.run_batch:
            raise NotImplementedError(f"{type(self).__name__} implements neither run nor run_batch")
        return self.run_batch(model, text_encoder, [prompt], seeds=[seed], judge=judge, generation=generation)[0]

    def run_batch(
        self,
        model: SDModel,
        text_encoder: CLIPTextModel,
        prompts: list[str],
        *,
        seeds: list[int],
        judge: Judge | None = None,
        generation: GenerationSettings | None = None,
    ) -> list[ProbeResult]:
        """One result per (prompt, seed). Probes whose work batches across prompts override this (one batched
        UNet call per step for all prompts); the default runs them one by one."""
        return [self.run(model, text_encoder, p, seed=s, judge=judge, generation=generation)
                for p, s in zip(prompts, seeds)]

    def check(self, model: SDModel) -> None:
        """Raises ErasureError naming a bad setting of this probe for `model`. A probe calls it first thing in
        `run_batch`; `evaluate` and bench/demo_efficacy.py call it before they write anything."""

    def describe(self) -> dict:
        return {"name": self.name, "role": self.role}

    def budget(self) -> tuple[tuple, float] | None:
        """(search space, size) for probes that search a ball of a stated size, else None. Two probes with the
        same search space nest: what the smaller one finds lies inside the larger one's ball too (see
        `within_budget`), so `evaluate` attacks only the smaller probe's failures with the larger one."""
        return None


def within_budget(inner: Probe, outer: Probe) -> bool:
    """True when every point `inner` may search is one `outer` may search too (same search space, size <=)."""
    a, b = inner.budget(), outer.budget()
    return a is not None and b is not None and a[0] == b[0] and a[1] <= b[1]


def check_prompt(prompt) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ErasureError(f"a probe needs a non-empty text prompt, got {prompt!r}")
    return prompt


def check_batch(prompts: list[str], seeds: list[int]) -> None:
    """A batched probe's input: every prompt non-empty text, and one seed per prompt."""
    for prompt in prompts:
        check_prompt(prompt)
    if len(prompts) != len(seeds):
        raise ErasureError(f"{len(prompts)} prompts need as many seeds, got {len(seeds)}")


def save_probe_result(result: ProbeResult, out_dir: str | Path, stem: str | None = None) -> dict[str, Path]:
    """Write one probe result into `out_dir` (atomically): STEM.json (the summary), STEM.png (the image, if
    any) and STEM.safetensors (the adversarial conditioning [1, L, D], reusable as a prompt embedding)."""
    from ..files import atomic_save_safetensors, atomic_write_json, safe_name, save_png

    out_dir = Path(out_dir)
    stem = safe_name(stem or result.probe)
    paths = {"json": out_dir / f"{stem}.json", "cond": out_dir / f"{stem}.safetensors"}
    atomic_save_safetensors({"cond": result.cond.float()}, paths["cond"], metadata={"probe": result.probe})
    if result.images is not None:
        paths["image"] = out_dir / f"{stem}.png"
        save_png(result.images[0], paths["image"])
    atomic_write_json({**result.summary(), "files": {k: p.name for k, p in paths.items()}}, paths["json"])
    return paths


# What a probe computes from the ORIGINAL model alone (UnlearnDiffAtk's target images, the soft-prompt probe's
# DDIM targets) is the same for every encoder under test: evaluating 3-7 encoders on the same cases computed it
# 3-7 times. Kept per UNet (weakly: the entries go with the model) and per (what, case) key, bounded in size.
_ORIGINAL_CACHE: weakref.WeakKeyDictionary | None = None
CACHE_ENTRIES = 4096


def cached_per_case(model: SDModel, keys: list, compute) -> list:
    """[value per key]: cached values where present; `compute(missing_positions)` -> values for the others,
    computed in one batch and stored (on the CPU)."""
    global _ORIGINAL_CACHE

    if _ORIGINAL_CACHE is None:
        _ORIGINAL_CACHE = weakref.WeakKeyDictionary()
    store = _ORIGINAL_CACHE.setdefault(model.unet, {})
    values = [store.get(key) for key in keys]
    missing = [i for i, value in enumerate(values) if value is None]
    if missing:
        for i, value in zip(missing, compute(missing)):
            if len(store) >= CACHE_ENTRIES:
                store.pop(next(iter(store)))  # the oldest entry
            store[keys[i]] = values[i] = value
    return values
