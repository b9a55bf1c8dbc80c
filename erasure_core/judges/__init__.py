"""Judges decide whether an image shows a concept: NudeNet, a local image classifier, the demo world's judge.

Build one from a spec with `erasure_core.judges.registry.build_judge` (also `erasure_core.build_judge`). This
package's __init__ does not import the registry: the demo judge subclasses `Judge` from here, and the registry
builds the demo judge, so an eager import would close a cycle.
"""

from .base import Judge, JudgeResult

__all__ = ["Judge", "JudgeResult"]
