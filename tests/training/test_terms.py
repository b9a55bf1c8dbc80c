"""The loss terms of a step back-propagated together (training/terms.py): the same gradient as one term at a time,
whatever the UNet batch, and a diverged term named."""

import pytest
import torch

from erasure_core.errors import ErasureDiverged
from erasure_core.latents import UNetRunner
from erasure_core.losses import anchor_loss, mse
from erasure_core.models import build_tiny_model
from erasure_core.prompts import encode_slotted, slot_prompt
from erasure_core.training.terms import EncoderTerm, UNetTerm, backward_terms


def _setup():
    model = build_tiny_model()
    model.unet.requires_grad_(False)
    encoder = model.text_encoder
    encoder.requires_grad_(True)
    generator = torch.Generator().manual_seed(0)
    size, channels = model.latent_size, model.unet.config.in_channels
    ids = {p: slot_prompt(model.tokenizer, p, 0).input_ids for p in ("a dog", "a red car", "a tree", "")}
    with torch.no_grad():
        uncond = encoder(ids[""])[0].clone()

    def points(n):
        return (torch.randn(n, channels, size, size, generator=generator),
                torch.randint(0, 1000, (n,), generator=generator),
                torch.randn(n, channels, size, size, generator=generator))

    specs = [("plain", 1.0, 3, ids["a dog"][:1]), ("caption", 0.7, 2, torch.cat([ids["a red car"], ids["a tree"]])),
             ("retain", 5.0, 4, torch.cat([ids["a tree"]] * 4))]
    terms = []
    for name, weight, n, prompt_ids in specs:
        latents, timesteps, target = points(n)
        terms.append(UNetTerm(name, weight, latents, timesteps, target,
                              lambda prompt_ids=prompt_ids: encode_slotted(encoder, prompt_ids)))
    anchor = EncoderTerm("anchor", 2.0, lambda: anchor_loss(encode_slotted(encoder, ids[""]), uncond))
    return model, terms, anchor


def _one_at_a_time(model, terms, anchor):
    runner = UNetRunner(model.unet)
    for term in terms:
        (term.weight * mse(runner(term.latents, term.timesteps, term.encode()), term.target)).backward()
    (anchor.weight * anchor.loss()).backward()
    return {n: p.grad.clone() for n, p in model.text_encoder.named_parameters()}


@pytest.mark.parametrize("max_batch", [1, 4, 64])
def test_joint_backward_gives_the_gradient_of_the_terms_one_at_a_time(max_batch):
    model, terms, anchor = _setup()
    expected = _one_at_a_time(model, terms, anchor)
    model.text_encoder.zero_grad(set_to_none=True)
    runner = UNetRunner(model.unet)
    losses = backward_terms(runner, terms, [anchor], max_batch=max_batch, scale=lambda x: x,
                            autocast=_no_autocast,
                            check_finite=lambda name, loss: None)
    assert set(losses) == {"plain", "caption", "retain", "anchor"}
    assert runner.evaluations == 9  # every latent once, in ceil(9 / max_batch) calls
    for name, param in model.text_encoder.named_parameters():
        assert torch.allclose(param.grad, expected[name], rtol=1e-4, atol=1e-7), name
    with torch.no_grad():
        check = UNetRunner(model.unet)
        caption = terms[1]
        assert losses["caption"] == pytest.approx(
            float(mse(check(caption.latents, caption.timesteps, caption.encode()), caption.target)), rel=1e-5)


def test_a_term_that_is_not_finite_is_named_before_it_is_back_propagated():
    model, terms, anchor = _setup()
    terms[2].target[1] = float("nan")  # a retain row

    def check_finite(name, loss):
        if not torch.isfinite(loss).all():
            raise ErasureDiverged(f"the {name} loss became {float(loss)}", None)

    with pytest.raises(ErasureDiverged, match="the retain loss became nan"):
        backward_terms(UNetRunner(model.unet), terms, [anchor], max_batch=64, scale=lambda x: x,
                       autocast=_no_autocast, check_finite=check_finite)
    assert all(p.grad is None for p in model.text_encoder.parameters())  # nothing of the step was applied


def _no_autocast():
    from contextlib import nullcontext

    return nullcontext()
