"""Errors, progress and cancellation between ComfyUI's queue and `erasure_core`'s callbacks."""

from __future__ import annotations

import contextlib

import comfy.model_management
import comfy.utils

from erasure_core.errors import ErasureCancelled, ErasureError


class NodeError(ValueError):
    """An error the user caused; ComfyUI shows its message on the node."""


@contextlib.contextmanager
def user_errors(node: str):
    """Turn `erasure_core`'s user-facing errors into clear node errors (the message, prefixed with the node)."""
    try:
        yield
    except ErasureCancelled:
        raise
    except ErasureError as err:
        raise NodeError(f"{node}: {err}") from err


def should_cancel() -> bool:
    """The `should_cancel` callback for `erasure_core`: True once the user pressed Cancel in ComfyUI."""
    return bool(comfy.model_management.processing_interrupted())


def raise_if_cancelled():
    """Re-raise ComfyUI's own interrupt (clears the flag) so the queue reports the run as interrupted."""
    comfy.model_management.throw_exception_if_processing_interrupted()


class Progress:
    """A `progress(step, total, logs)` callback that drives ComfyUI's progress bar and checks Cancel."""

    def __init__(self, total: int, on_logs=None):
        self.bar = comfy.utils.ProgressBar(max(1, int(total)))
        self.on_logs = on_logs

    def __call__(self, step: int, total: int, logs: dict | None = None):
        self.bar.update_absolute(int(step), int(total))
        if self.on_logs is not None and logs:
            self.on_logs(int(step), int(total), logs)
