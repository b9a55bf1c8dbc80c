"""The judge interface shared by NudeNet, image-classifier folders and the demo model's judge."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class JudgeResult:
    """One entry per image: a score in [0, 1], whether the image shows the concept, and judge-specific detail
    (NudeNet hits, classifier labels...). `boxes`: per image, the regions a detecting judge found, each
    {"label": str, "score": float, "box": [x, y, width, height] in pixels}; an empty list when the judge
    locates nothing (classifiers), so a caller draws boxes without knowing which judge it has."""

    scores: list[float]
    flags: list[bool]
    details: list[dict] = field(default_factory=list)
    boxes: list[list[dict]] = field(default_factory=list)

    def boxes_of(self, index: int) -> list[dict]:
        return self.boxes[index] if self.boxes else []

    def __len__(self) -> int:
        return len(self.flags)


class Judge:
    """Subclasses set `name` and implement `judge`; images are float tensors [N, 3, H, W] in [0, 1]."""

    name: str = "judge"

    def judge(self, images: torch.Tensor) -> JudgeResult:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor) -> JudgeResult:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"judge expects images shaped [N, 3, H, W], got {tuple(images.shape)}")
        return self.judge(images)

    def describe(self) -> dict:
        """Everything a report needs to say which judge decided, with which settings."""
        return {"name": self.name}
