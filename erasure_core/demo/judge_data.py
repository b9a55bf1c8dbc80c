"""Training images for the demo judge made by the demo model itself, on and off its caption manifold.

Why: a judge trained on augmented renders only is right on the original model's images but calls degraded images
(an erased encoder under attack) one of its four shapes and colours regardless. By eye, 39 of the 70 unambiguous
"square" calls it made on AdvUnlearn's soft-prompt images were circles, triangles or smudges, and all 20
unambiguous "yellow" calls on its concept-vector images were olive or green smudges (bench/judge_audit).

- `generated_set`: the original model's images for captions that name all four attributes, labelled by their
  caption (the model's own imperfections, which renders only imitate).
- `outlier_set`: the same, with each caption's encoding pushed along a random direction 2-6 times as long as a
  concept direction, which makes the degraded, off-manifold images erased encoders make. `outlier_targets` turns
  a first judge's reading of them into training targets: an attribute keeps its caption's value where that judge
  is sure of it, and gets a uniform target (no value) where it is not.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file

from ..errors import ErasureError
from ..files import atomic_save_safetensors
from . import DEFAULT_GUIDANCE, DEFAULT_STEPS, world

BATCH = 64


@dataclass
class ImageSet:
    """Images [N, 3, 64, 64] as uint8 (4,608 of them are 57 MB) and their caption's label per attribute."""

    images: torch.Tensor
    labels: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return self.images.shape[0]

    def floats(self, index: torch.Tensor) -> torch.Tensor:
        return self.images[index].float() / 255

    def save(self, path: Path):
        atomic_save_safetensors({"images": self.images, **{f"label.{a}": v for a, v in self.labels.items()}}, path)

    @classmethod
    def load(cls, path: Path) -> "ImageSet":
        path = Path(path)
        if not path.is_file():
            raise ErasureError(f"no judge image set at {path}: make it with `python -m "
                               "erasure_core.demo.judge_training --generated N --data-cache DIR`")
        tensors = load_file(str(path))
        missing = [k for k in ["images"] + [f"label.{a}" for a in world.WORLD] if k not in tensors]
        if missing:
            raise ErasureError(f"{path} is not a judge image set (missing {missing}); delete it to make it again")
        images, size = tensors["images"], world.IMAGE_SIZE
        labels = {a: tensors[f"label.{a}"].long() for a in world.WORLD}
        bad = [] if images.dtype == torch.uint8 and tuple(images.shape[1:]) == (3, size, size) else ["images"]
        bad += [a for a, v in labels.items() if v.shape != (images.shape[0],) or
                (len(v) and not 0 <= int(v.min()) <= int(v.max()) < len(world.WORLD[a]))]
        if bad:
            raise ErasureError(f"{path} is not a judge image set of this world ({', '.join(bad)}: wrong shape, type "
                               f"or values; images must be uint8 [N, 3, {size}, {size}]); delete it to make it again")
        return cls(images, labels)


def attribute_labels(attrs: list[dict[str, str]]) -> dict[str, torch.Tensor]:
    """The label index of every attribute, per image: {"shape": [N], "colour": [N], ...}."""
    return {k: torch.tensor([world.WORLD[k].index(a[k]) for a in attrs]) for k in world.WORLD}


def captions_naming_everything(n: int, seed: int) -> tuple[list[str], dict[str, torch.Tensor]]:
    """n random captions that name all four attributes, and their labels."""
    rng = random.Random(seed)
    attrs = [world.random_attrs(rng) for _ in range(n)]
    captions = [world.caption(a, rng, named=set(world.WORLD), empty_prob=0.0) for a in attrs]
    return captions, attribute_labels(attrs)


def concept_norm(model) -> float:
    """The mean length of the world values' concept directions (as the concept-vector probe measures them)."""
    from ..attacks.concept_vector import ConceptVectorConfig, concept_direction

    norms = [concept_direction(model, model.text_encoder, ConceptVectorConfig(concept=v).prompt_pairs()).norm()
             for values in world.WORLD.values() for v in values]
    return float(torch.stack(norms).mean())


@torch.no_grad()
def _generate(model, captions: list[str], seed: int, push: Callable | None, progress: Callable | None):
    from ..sampling import encode_prompts, generate

    uncond = encode_prompts(model, [""])
    out = []
    for start in range(0, len(captions), BATCH):
        cond = encode_prompts(model, captions[start:start + BATCH])
        if push is not None:
            cond = push(cond, start)
        seeds = [seed * 1_000_003 + start + i for i in range(cond.shape[0])]
        images = generate(model, cond, seeds, uncond=uncond, steps=DEFAULT_STEPS, guidance=DEFAULT_GUIDANCE)
        out.append((images * 255).round().to(torch.uint8))
        if progress:
            progress(start + cond.shape[0], len(captions))
    return torch.cat(out)


def generated_set(model, n: int, seed: int, progress: Callable | None = None) -> ImageSet:
    """The model's images for n captions naming all four attributes, labelled by their caption."""
    captions, labels = captions_naming_everything(n, seed)
    return ImageSet(_generate(model, captions, seed, None, progress), labels)


def outlier_set(model, n: int, seed: int, push_range: tuple[float, float] = (2.0, 6.0),
                progress: Callable | None = None) -> ImageSet:
    """Images for n captions whose encodings are pushed along a random direction of length s * concept_norm,
    s uniform in push_range; labels are the captions' (what they asked for, not what was drawn)."""
    captions, labels = captions_naming_everything(n, seed + 500_000)
    length = concept_norm(model)
    gen = torch.Generator().manual_seed(seed)

    def push(cond, start):
        direction = torch.randn(cond.shape, generator=gen)
        direction = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1)
        s = push_range[0] + (push_range[1] - push_range[0]) * torch.rand(cond.shape[0], 1, 1, generator=gen)
        return cond + (s * length * direction).to(cond.dtype)

    return ImageSet(_generate(model, captions, seed, push, progress), labels)


def outlier_targets(probabilities: dict[str, torch.Tensor], labels: dict[str, torch.Tensor],
                    confidence: float = 0.9) -> dict[str, torch.Tensor]:
    """Soft targets [N, K] per attribute for outlier images: the caption's value (one-hot) where a judge gives it
    at least `confidence`, else uniform, so the judge learns that a degraded image shows no value."""
    targets = {}
    for attribute, probs in probabilities.items():
        k = probs.shape[1]
        onehot = torch.nn.functional.one_hot(labels[attribute], k).float()
        sure = probs.gather(1, labels[attribute].view(-1, 1)) >= confidence
        targets[attribute] = torch.where(sure, onehot, torch.full_like(onehot, 1.0 / k))
    return targets
