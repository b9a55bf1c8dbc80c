"""The soft-prompt attack lowers its objective and never modifies the encoder."""

import pytest
import torch

from erasure_core.attacks import SoftPromptConfig, optimize_adversarial_embeddings
from erasure_core.errors import ErasureError
from erasure_core.latents import UNetRunner
from erasure_core.losses import mse
from erasure_core.prompts import encode_slotted, slot_prompt
from erasure_core.sampling import encode_prompts


def _fixed_objective(model):
    """Denoising target of a fixed latent under the prompt "a red circle": the attack must steer "nudity"
    plus one adversarial token towards it."""
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    runner = UNetRunner(model.unet)
    with torch.no_grad():
        target = runner(latents, torch.tensor([500]), encode_prompts(model, ["a red circle"]))
    return lambda cond: mse(runner(latents, torch.tensor([500]), cond), target)


@pytest.mark.parametrize("method,lr", [("pgd", 0.05), ("fast", 0.005)])
def test_attack_lowers_its_objective_and_leaves_encoder_alone(tiny_model, method, lr):
    encoder = tiny_model.text_encoder
    encoder.requires_grad_(True)  # even with trainable weights, the attack must not touch them
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    objective = _fixed_objective(tiny_model)
    slotted = slot_prompt(tiny_model.tokenizer, "nudity", k=2)
    config = SoftPromptConfig(k=2, steps=25, lr=lr, method=method)
    result = optimize_adversarial_embeddings(encoder, slotted, objective, config,
                                             generator=torch.Generator().manual_seed(0))
    assert result.embeds.shape == (2, 32) and not result.embeds.requires_grad
    assert len(result.losses) == 25
    with torch.no_grad():
        final = objective(encode_slotted(encoder, slotted, adv_embeds=result.embeds)).item()
    assert final < 0.8 * result.losses[0]
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert all(p.grad is None for p in encoder.parameters())


def test_previous_init_is_used_and_random_init_is_seeded(tiny_model):
    encoder = tiny_model.text_encoder
    slotted = slot_prompt(tiny_model.tokenizer, "nudity", k=1)
    objective = _fixed_objective(tiny_model)
    start = torch.full((1, 32), 0.01)
    zero_steps = SoftPromptConfig(k=1, steps=0, init="previous")
    kept = optimize_adversarial_embeddings(encoder, slotted, objective, zero_steps, init=start)
    assert torch.equal(kept.embeds, start)
    random_init = SoftPromptConfig(k=1, steps=0, init="random_vocab")
    seeded = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a = optimize_adversarial_embeddings(encoder, slotted, objective, random_init, generator=seeded())
    b = optimize_adversarial_embeddings(encoder, slotted, objective, random_init, generator=seeded())
    assert torch.equal(a.embeds, b.embeds)
    table = encoder.get_input_embeddings().weight
    assert (table == a.embeds).all(dim=1).any()  # a real vocabulary row


def test_attack_rejects_bad_settings(tiny_model):
    slotted = slot_prompt(tiny_model.tokenizer, "nudity", k=1)
    with pytest.raises(ErasureError, match="slots"):
        optimize_adversarial_embeddings(tiny_model.text_encoder, slotted, lambda c: c.sum(), SoftPromptConfig(k=2))
    with pytest.raises(ErasureError, match="unknown attack method"):
        optimize_adversarial_embeddings(tiny_model.text_encoder, slotted, lambda c: c.sum(),
                                        SoftPromptConfig(method="adam"))


def test_bounded_attack_never_leaves_its_ball(tiny_model):
    """Every step is projected: with a large lr the unbounded attack leaves the ball, the bounded one never."""
    from erasure_core.attacks import typical_token_norm

    encoder = tiny_model.text_encoder
    slotted = slot_prompt(tiny_model.tokenizer, "nudity", k=2)
    objective = _fixed_objective(tiny_model)
    radius = 0.5 * typical_token_norm(encoder)

    def run(epsilon):
        config = SoftPromptConfig(k=2, steps=15, lr=0.5, method="fast", epsilon=epsilon)
        return optimize_adversarial_embeddings(encoder, slotted, objective, config,
                                               generator=torch.Generator().manual_seed(0))

    unbounded, bounded = run(None), run(0.5)
    assert unbounded.embeds.norm(dim=-1).max() > 2 * radius  # the setting really pushes outside
    assert bounded.embeds.norm(dim=-1).max() <= radius * (1 + 1e-5)
    assert bounded.radius == pytest.approx(radius)


def test_restarts_are_seeded_and_keep_the_best(tiny_model):
    encoder = tiny_model.text_encoder
    slotted = slot_prompt(tiny_model.tokenizer, "nudity", k=1)
    objective = _fixed_objective(tiny_model)
    config = SoftPromptConfig(k=1, steps=3, lr=0.05, restarts=3, epsilon=1.0)
    run = lambda: optimize_adversarial_embeddings(  # noqa: E731
        encoder, slotted, objective, config, generator=torch.Generator().manual_seed(5))
    a, b = run(), run()
    assert torch.equal(a.embeds, b.embeds) and a.final_loss == b.final_loss
    singles = []
    generator = torch.Generator().manual_seed(5)
    for _ in range(3):  # the same three starts, one at a time, from the same generator stream
        one = optimize_adversarial_embeddings(encoder, slotted, objective,
                                              SoftPromptConfig(k=1, steps=3, lr=0.05, epsilon=1.0),
                                              generator=generator)
        with torch.no_grad():
            singles.append(objective(encode_slotted(encoder, slotted, adv_embeds=one.embeds)).item())
    assert a.final_loss == pytest.approx(min(singles), rel=1e-5)


def test_attack_budget_must_be_positive(tiny_model):
    slotted = slot_prompt(tiny_model.tokenizer, "nudity", k=1)
    for bad in (dict(epsilon=0.0), dict(epsilon=-1.0), dict(restarts=0)):
        with pytest.raises(ErasureError, match="epsilon|restarts"):
            optimize_adversarial_embeddings(tiny_model.text_encoder, slotted, lambda c: c.sum(),
                                            SoftPromptConfig(**bad))
