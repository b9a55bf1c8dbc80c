"""Conflict projection (`project_conflicts`): the unlearning step gives up what it would take from the retain terms.

A training step's gradient is the sum of two groups: the terms that remove the concept (the attacked, plain and
caption prompts, the concept-vector term) and the terms that keep everything else (the retain terms, the ""
anchor, the retain encodings). Where the two point against each other (a negative dot product), the removing
group's gradient loses its component along the keeping group's, as in PCGrad (Yu et al., "Gradient Surgery for
Multi-Task Learning", 2020), one-sided: the keeping group is never projected. The summed gradient then never
points against the keeping gradient (for plain gradient descent: to first order the step cannot raise the keeping
terms' loss on its own points; Adam rescales each coordinate, so there it is a bias, not a guarantee). Without a
conflict nothing changes.

Why: every change that raised retain accuracy before moved along the trade-off (retain up, a probe's ASR up;
bench/demo_preset_tuning.md). The retain failures are siblings and styles lost to the same update that removes
the concept (square's encoders: "outline" drawn as "striped" or "filled"; star's: triangles drawn as squares), the
conflict this removes at its source. Cost: the two groups are back-propagated separately, one more UNet call a
step (on the demo preset's 28 rows a step, two calls instead of one).

The gradients are projected as one vector over every trained parameter, before the optimiser sees them (Adam
then scales each coordinate as usual). `project_updates` applies the same rule to the optimiser's update after its
step: where the update would raise the keeping terms' loss to first order, it loses its component along their
gradient (the guarantee Adam takes from the gradient projection; both can be on).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.nn.utils import parameters_to_vector

# the terms that keep what is not the concept; every other term removes the concept
KEEPING_TERMS = frozenset({"retain", "retain_early", "anchor", "embedding_retain"})


def split_terms(terms: Sequence) -> tuple[list, list]:
    """(removing, keeping) terms by name."""
    return [t for t in terms if t.name not in KEEPING_TERMS], [t for t in terms if t.name in KEEPING_TERMS]


def _grad_or_zeros(p: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(p) if p.grad is None else p.grad


def take_gradients(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The parameters' gradients (zeros where none), detached from them; the parameters' .grad are cleared."""
    grads = [_grad_or_zeros(p).detach().clone() for p in params]
    for p in params:
        p.grad = None
    return grads


def project_and_add(params: Sequence[torch.Tensor], removing: Sequence[torch.Tensor], project: bool = True) -> float:
    """Sets each p.grad (holding the keeping gradient) to keeping + removing', where removing' is `removing`
    without its component along the keeping gradient if the two conflict (`project`; else removing as it is).
    Returns their cosine (0 if either is zero), measured before the projection."""
    keeping = [_grad_or_zeros(p) for p in params]
    g_keep, g_remove = parameters_to_vector(keeping).float(), parameters_to_vector(removing).float()
    dot, keep_sq = float(g_remove @ g_keep), float(g_keep @ g_keep)
    norms = keep_sq ** 0.5 * float(g_remove.norm())
    cosine = dot / norms if norms > 0 else 0.0
    if project and dot < 0 and keep_sq > 0:
        g_remove = g_remove - (dot / keep_sq) * g_keep
    for p, g, r in zip(params, keeping, g_remove.split([g.numel() for g in keeping])):
        p.grad = g + r.view_as(g).to(g.dtype)
    return cosine


def remove_raising_component(params: Sequence[torch.Tensor], before: Sequence[torch.Tensor],
                             keeping: torch.Tensor) -> float:
    """After an optimiser step from `before` to `params`: where the update raises the keeping terms' loss to first
    order (a positive dot product with their gradient `keeping`, one vector), its component along `keeping` is
    taken away in place. Returns the update's cosine with `keeping`, measured before."""
    with torch.no_grad():
        delta = parameters_to_vector([p - b for p, b in zip(params, before)]).float()
        dot, keep_sq = float(delta @ keeping), float(keeping @ keeping)
        norms = keep_sq ** 0.5 * float(delta.norm())
        if dot > 0 and keep_sq > 0:
            for p, k in zip(params, keeping.split([p.numel() for p in params])):
                p.sub_((dot / keep_sq) * k.view_as(p).to(p.dtype))
    return dot / norms if norms > 0 else 0.0


class Projection:
    """A training step's backward and optimiser step with the keeping terms protected: `gradients`
    (project_conflicts) projects the removing group's gradient, `updates` (project_updates) the optimiser's update.

    Why the update too: Adam rescales each coordinate and follows its running mean of past gradients, so a
    projected gradient still left updates that raise the keeping terms' loss. On square (demo preset, seed 0, 80
    iterations, the first-order sign of <keeping gradient, update> per step): 30 of 80 updates raised it without the
    projection, 24 of 80 with it."""

    def __init__(self, params: Sequence[torch.Tensor], gradients: bool, updates: bool):
        self.params, self.gradients, self.updates = list(params), gradients, updates
        self._keeping: torch.Tensor | None = None

    def backward(self, run: Callable[[list, list], dict], unet_terms: list, encoder_terms: list) -> tuple[dict, dict]:
        """Back-propagates a step's terms with `run(unet_terms, encoder_terms) -> losses` (terms.backward_terms): all
        at once when both projections are off or a group is empty, else the removing group, its gradient taken
        away, then the keeping group, and the (projected) sum left in the parameters' .grad. Returns the losses and
        the logs (`conflict_cosine`: the two groups' cosine, before any projection)."""
        self._keeping = None
        (remove_unet, keep_unet), (remove_enc, keep_enc) = split_terms(unet_terms), split_terms(encoder_terms)
        if not (self.gradients or self.updates) or not (keep_unet or keep_enc) or not (remove_unet or remove_enc):
            return run(unet_terms, encoder_terms), {}
        losses = run(remove_unet, remove_enc)
        removing = take_gradients(self.params)
        losses.update(run(keep_unet, keep_enc))
        if self.updates:
            self._keeping = parameters_to_vector([_grad_or_zeros(p) for p in self.params]).detach().float().clone()
        return losses, {"conflict_cosine": project_and_add(self.params, removing, project=self.gradients)}

    def step(self, optimizer_step: Callable[[], object]) -> dict:
        """Runs `optimizer_step()`; with `updates`, then removes the update's component that raises the keeping
        terms' loss (remove_raising_component). Logs `update_cosine`: the update's cosine with the keeping gradient,
        before the correction."""
        keeping, self._keeping = self._keeping, None
        if keeping is None:
            optimizer_step()
            return {}
        before = [p.detach().clone() for p in self.params]
        optimizer_step()
        return {"update_cosine": remove_raising_component(self.params, before, keeping)}
