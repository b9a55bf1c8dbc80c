"""The loss terms of one training step, back-propagated together.

A step has up to five prediction-space terms (the attacked prompt, the plain prompt, the captions, the captions
pushed along the concept's direction, the retain prompts), each weight * MSE(UNet(x_t, t, E(prompt)), target) on
its own few latents, and up to two terms in the encoder's output (the "" anchor, the retain encodings). They
used to be back-propagated one at a time, each with its own small UNet call. Here the prediction-space terms
share UNet calls of up to `max_unet_batch` latents:

    loss = sum_t w_t * MSE_t = sum over rows r of (w_t / n_t) * MSE(row r)

(every row has as many elements, so a term's MSE is the mean of its rows' MSEs). The UNet part is
back-propagated chunk by chunk to the encodings, then the encoder once: the same gradient, with the UNet's
activations bounded by one chunk.

Why: on the demo model (one CPU thread), one UNet call on 20 latents with backward took 0.17 s, the four calls
of 4, 4, 4 and 8 latents it replaces 0.24 s (bench/demo_preset_tuning.md, session 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class UNetTerm:
    """weight * MSE(UNet(latents, timesteps, encode()), target); encode() gives [1 or B, L, D] with gradient."""

    name: str  # names the term in logs and in the divergence message
    weight: float
    latents: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor
    encode: Callable[[], torch.Tensor]

    @property
    def rows(self) -> int:
        return self.latents.shape[0]


@dataclass
class EncoderTerm:
    """weight * loss(), a loss on the encoder's output alone (no UNet)."""

    name: str
    weight: float
    loss: Callable[[], torch.Tensor]


def backward_terms(runner, unet_terms: list[UNetTerm], encoder_terms: list[EncoderTerm], *, max_batch: int,
                   scale: Callable[[torch.Tensor], torch.Tensor], autocast, check_finite,
                   row_losses: dict | None = None) -> dict[str, float]:
    """Back-propagate every term; returns each term's unweighted loss by name.

    scale: the GradScaler's scale (identity without fp16). check_finite(name, loss) raises on NaN/inf, before
    anything of that term is back-propagated. `row_losses`, when given, receives each prediction-space term's
    per-row MSE by name (what the retain priority scores its trajectories with).
    """
    losses = _backward_unet_terms(runner, unet_terms, max_batch, scale, autocast, check_finite, row_losses) \
        if unet_terms else {}
    for term in encoder_terms:
        with autocast():
            loss = term.loss()
        check_finite(term.name, loss)
        scale(term.weight * loss).backward()
        losses[term.name] = float(loss.detach())
    return losses


def _backward_unet_terms(runner, terms, max_batch, scale, autocast, check_finite, rows_out) -> dict[str, float]:
    with autocast():
        conds = torch.cat([term.encode().expand(term.rows, -1, -1) for term in terms])
    latents = torch.cat([term.latents for term in terms])
    timesteps = torch.cat([torch.as_tensor(term.timesteps).reshape(-1).expand(term.rows) for term in terms])
    targets = torch.cat([term.target.float() for term in terms])
    owner = torch.cat([torch.full((term.rows,), i) for i, term in enumerate(terms)])
    row_weight = torch.tensor([term.weight / term.rows for term in terms], device=latents.device)[owner]
    leaf = conds.detach().requires_grad_(True)
    row_losses = torch.empty(len(owner))
    for rows in torch.arange(len(owner)).split(max_batch):
        with autocast():
            prediction = runner(latents[rows], timesteps[rows], leaf[rows])
        row_mse = (prediction.float() - targets[rows].detach()).pow(2).flatten(1).mean(1)
        _check_rows(row_mse, owner[rows], terms, check_finite)
        scale((row_weight[rows] * row_mse).sum()).backward()
        row_losses[rows] = row_mse.detach().cpu()
    conds.backward(leaf.grad)
    if rows_out is not None:
        rows_out.update({term.name: row_losses[owner == i] for i, term in enumerate(terms)})
    return {term.name: float(row_losses[owner == i].mean()) for i, term in enumerate(terms)}


def _check_rows(row_mse, owner, terms, check_finite):
    """Name the first term whose rows are not finite (the message says which loss diverged)."""
    bad = ~torch.isfinite(row_mse.detach())
    if bad.any():
        term = terms[int(owner[bad.nonzero()[0, 0]])]
        check_finite(term.name, row_mse.detach()[bad][:1].sum())


def history_losses(losses: dict[str, float]) -> dict:
    """The history's loss keys: `unlearn_loss` is the attacked prompt's loss, or the plain one's before the attack
    starts (and for ESD); `retain_loss` is None without a retain set; the others appear when their term is on."""
    logs = {"unlearn_loss": losses.get("unlearn", losses.get("plain"))}
    logs.update({f"{name}_loss": losses[name] for name in ("plain", "caption", "vector", "embedding_retain", "anchor",
                                                           "retain_early") if name in losses})
    logs["retain_loss"] = losses.get("retain")
    return logs
