"""Judges decide whether an image shows a concept: NudeNet, a local image classifier, the demo world's judge."""

from .base import Judge, JudgeResult
from .registry import build_judge

__all__ = ["Judge", "JudgeResult", "build_judge"]
