"""The judge interface shared by NudeNet, image-classifier folders and the demo model's judge."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class JudgeResult:
    """One entry per image: a score in [0, 1], whether the image shows the concept, and judge-specific detail
    (NudeNet boxes, classifier labels...)."""

    scores: list[float]
    flags: list[bool]
    details: list[dict] = field(default_factory=list)

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
