"""Judges decide whether an image shows a concept."""

from .base import Judge, JudgeResult

__all__ = ["Judge", "JudgeResult"]
