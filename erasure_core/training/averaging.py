"""The tail average: the written encoder as the uniform mean of the trained weights over the run's last iterations.

A seed's leak moves along a run: on the demo model (square, 9 training seeds, session 36) the soft-prompt ASR of
one training changed as much over its last 100 of 400 iterations (sd of the per-seed differences 0.110) as it
differs between seeds (0.119). Averaging the weights over that span (stochastic weight averaging with a constant
lr) keeps the trajectory unchanged and only changes which point of it is written. Off by default (the paper
writes the last iteration's weights).

A running mean is kept rather than every snapshot: one extra copy of the trainable weights, whatever the span.
"""

from __future__ import annotations

import torch

from ..errors import ErasureError


def average_start(iterations: int, share: float) -> int:
    """The number of iterations done before the average starts: the last round(share x iterations) are averaged."""
    return iterations - round(share * iterations)


class TailAverage:
    """A running mean of `named_params` over the iterations after `average_start` (none when share is 0)."""

    def __init__(self, named_params, iterations: int, share: float):
        self.named_params = named_params
        self.start = average_start(iterations, share)
        self.enabled = self.start < iterations
        self.count = 0
        self.mean = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in named_params} if self.enabled else {}

    @torch.no_grad()
    def observe(self, done: int) -> None:
        """Called after each iteration's step with the number of iterations done."""
        if not self.enabled or done <= self.start:
            return
        self.count += 1
        for name, param in self.named_params:
            self.mean[name] += (param.detach().float() - self.mean[name]) / self.count

    @torch.no_grad()
    def write_into_params(self) -> None:
        """Replace the trained weights by their average (at the end of a run; nothing when off)."""
        if not self.count:
            return
        for name, param in self.named_params:
            param.copy_(self.mean[name].to(param.dtype))

    # ----- checkpoints -----
    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"average.{name}": mean for name, mean in self.mean.items()}

    def metadata(self) -> dict:
        return {"average_start": self.start, "average_count": self.count} if self.enabled else {}

    def restore(self, tensors: dict, meta: dict, step: int, path) -> None:
        """Take the checkpoint's running mean; refuse one whose averaging window differs from this run's (a
        resume with another `iterations` moves the window, and part of the mean would be missing)."""
        saved_start, saved_count = meta.get("average_start"), meta.get("average_count", 0)
        expected = max(0, step - self.start) if self.enabled else 0
        if saved_count != expected or (saved_count and saved_start != self.start):
            held = f"the mean of iterations {saved_start + 1}-{step}" if saved_count else "no mean yet"
            wanted = f"the mean of iterations {self.start + 1}-{step}" if expected else "no mean yet"
            raise ErasureError(
                f"{path} holds {held}, but this run's average_last and iterations would hold {wanted} at its step "
                f"{step}: resume with the checkpoint's iterations and average_last, or start a new run")
        self.count = expected
        for name in self.mean if expected else ():
            saved = tensors.get(f"average.{name}")
            if saved is None or saved.shape != self.mean[name].shape:
                raise ErasureError(f"{path} says it holds a running mean of the weights but its average.{name} is "
                                   "missing or of another shape: the file is damaged; resume from an intact "
                                   "checkpoint or start a new run")
            self.mean[name].copy_(saved)
