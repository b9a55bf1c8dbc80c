"""Robust Erasure: adversarially robust concept erasure for Stable Diffusion 1.x text encoders.

The public API is small; the heavy modules are imported lazily so that `import erasure_core` stays fast.
"""

__version__ = "0.1.0"
