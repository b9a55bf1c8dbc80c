"""Concept captions (training/captions.py): the retain prompts that name a concept are unlearned against a
contrastive target; pairs, the loss it lowers, seeding and resume, and the errors."""

import itertools

import pytest
import torch

from erasure_core.errors import ErasureCancelled, ErasureError
from erasure_core.latents import UNetRunner
from erasure_core.models import build_tiny_model
from erasure_core.training import EraseConfig, erase, read_checkpoint
from erasure_core.training.captions import ConceptCaptions, caption_pairs, contrast_caption

FAST = dict(iterations=6, warmup_iterations=2, attack_steps=3, num_ddim_steps=8, concept_pool_size=2,
            retain_pool_size=4, retain_batch=2, lr=3e-3, checkpoint_every=0, diagnostics_every=0)
PROMPTS = ["a photo of a dog", "a red car", "a tree", "nudity on a beach", "a painting of nudity, dark",
           "Nudity in a garden"]


def _config(**overrides) -> EraseConfig:
    return EraseConfig(**{**FAST, "retain_prompts": PROMPTS, "caption_weight": 1.0,
                          "contrast_words": ["clothes", "people"], **overrides})


def test_pairs_replace_the_concept_word_in_turn_and_never_with_a_word_already_there():
    prompts = ["a red circle", "a circle next to a square", "a blue star", "Circle, white background",
               "a circled letter"]
    assert caption_pairs(prompts, "circle", ["square", "triangle", "circle"]) == [
        ("a red circle", "a red square"),
        ("a circle next to a square", "a triangle next to a square"),  # "square" is already there
        ("Circle, white background", "square, white background"),  # case-insensitive; "circle" never a contrast
    ]
    # No contrast words: the word is removed and the caption tidied.
    assert contrast_caption("circle, white background", "circle", None) == "white background"
    assert contrast_caption("a red circle on black", "circle", None) == "a red on black"
    assert caption_pairs(["a colored pencil", "a red pen"], "red", None) == [("a red pen", "a pen")]


def test_caption_training_moves_the_captions_toward_their_contrastive_target(tiny_model):
    """On fixed points, the trained encoder's captions are closer to the contrastive target with caption_weight
    than without it (the same run otherwise)."""
    config = dict(method="esd", iterations=25, lr=1e-2)
    without = erase(build_tiny_model(), ["nudity"], _config(**config, caption_weight=0.0))
    with_captions = erase(build_tiny_model(), ["nudity"], _config(**config, caption_weight=5.0))
    assert "caption_loss" in with_captions.history[-1] and "caption_loss" not in without.history[-1]

    model = tiny_model
    encode0 = lambda ids: model.text_encoder(ids)[0].float()  # noqa: E731
    captions = ConceptCaptions(model.tokenizer, encode0, PROMPTS, ["nudity"], ["clothes", "people"])
    assert captions.count(0) == 3
    generator = torch.Generator().manual_seed(0)
    size = model.latent_size
    points = type("Points", (), dict(latents=torch.randn(8, model.unet.config.in_channels, size, size,
                                                         generator=generator),
                                     timesteps=torch.randint(0, 1000, (8,), generator=generator)))

    def distance(encoder):
        with torch.no_grad():
            return float(captions.loss(encoder, UNetRunner(model.unet), points, 0, torch.Generator().manual_seed(1),
                                       negative_guidance=1.0))

    assert distance(with_captions.text_encoder) < 0.9 * distance(without.text_encoder)


def test_caption_training_is_seeded_and_resumable(tmp_path):
    config = _config(iterations=7, attack_batch=2, concept_batch=2, plain_weight=1.0, attack_captions=True)
    straight = erase(build_tiny_model(), ["nudity", "Van Gogh"], config)
    again = erase(build_tiny_model(), ["nudity", "Van Gogh"], config)
    a, b = straight.text_encoder.state_dict(), again.text_encoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    reported, polls = [], itertools.count()
    ckpt = tmp_path / "run.safetensors"
    cancel = lambda: len(reported) >= 4 and next(polls) >= 3  # noqa: E731
    with pytest.raises(ErasureCancelled):
        erase(build_tiny_model(), ["nudity", "Van Gogh"], config, checkpoint_path=ckpt,
              progress=lambda step, total, logs: reported.append(step), should_cancel=cancel)
    assert read_checkpoint(ckpt)[1]["step"] == 4
    resumed = erase(build_tiny_model(), ["nudity", "Van Gogh"], config, resume_from=ckpt)
    c = resumed.text_encoder.state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a)
    # "Van Gogh" has no caption: its steps train the bare word only, "nudity"'s steps its captions too.
    logged = {h["concept"]: "caption_loss" in h for h in straight.history}
    assert logged == {"nudity": True, "Van Gogh": False}
    strip = lambda history: [{k: v for k, v in h.items() if k != "unet_evaluations"} for h in history]  # noqa: E731
    assert strip(resumed.history) == strip(straight.history)


def test_caption_attack_attacks_captions_of_the_concept_and_bare_words_without_any():
    result = erase(build_tiny_model(), ["nudity", "Van Gogh"], _config(iterations=10, warmup_iterations=2,
                                                                       attack_captions=True))
    attacked = [(h["concept"], h.get("attacked_caption")) for h in result.history if "attack_loss_last" in h]
    assert attacked and {c for c, _ in attacked} == {"nudity", "Van Gogh"}
    for concept, caption in attacked:
        assert caption in PROMPTS[3:] if concept == "nudity" else caption is None
    with pytest.raises(ErasureError, match="attack_captions needs caption_weight"):
        EraseConfig(attack_captions=True).validate()


def test_captions_are_never_retained_and_options_are_checked(tiny_model):
    result = erase(tiny_model, ["nudity"], _config())
    assert result.metadata["retain_prompts_used"] == 3  # the three prompts that do not name it
    with pytest.raises(ErasureError, match="no retain prompt names a concept"):
        erase(tiny_model, ["dragon"], _config())
    with pytest.raises(ErasureError):
        EraseConfig(caption_weight=-1).validate()
    assert EraseConfig(contrast_words="square, triangle").contrast_words == ["square", "triangle"]
    assert EraseConfig(contrast_words="none").contrast_words is None


def test_plain_contrast_trains_the_bare_concept_toward_the_contrast_word_instead_of_the_empty_prompt(tiny_model):
    config = dict(method="esd", iterations=25, lr=1e-2, caption_weight=0.0, contrast_words=["clothes"],
                  anchor_weight=0.0)
    empty = erase(build_tiny_model(), ["nudity"], _config(**config))
    contrast = erase(build_tiny_model(), ["nudity"], _config(**config, plain_contrast=True))
    model, runner = tiny_model, UNetRunner(tiny_model.unet)
    encode = lambda encoder, text: encoder(model.tokenizer([text], padding="max_length", max_length=77,  # noqa: E731
                                                           return_tensors="pt").input_ids)[0].float()
    generator = torch.Generator().manual_seed(0)
    size = model.latent_size
    latents = torch.randn(8, model.unet.config.in_channels, size, size, generator=generator)
    timesteps = torch.randint(0, 1000, (8,), generator=generator)
    with torch.no_grad():
        eps = lambda cond: runner(latents, timesteps, cond.expand(8, -1, -1)).float()  # noqa: E731
        concept, word = eps(encode(model.text_encoder, "nudity")), eps(encode(model.text_encoder, "clothes"))
        target = word - (concept - word)
        distance = lambda result: float((eps(encode(result.text_encoder, "nudity")) - target).pow(2).mean())  # noqa: E731
        assert distance(contrast) < 0.9 * distance(empty)
    with pytest.raises(ErasureError, match="plain_contrast needs contrast_words"):
        EraseConfig(plain_contrast=True).validate()


def test_embedding_retain_keeps_the_retain_encodings_closer_to_the_original(tiny_model):
    """The retain prompts' encodings drift less from the original's with the embedding retain term than
    without it (the same strong caption training otherwise)."""
    config = dict(method="esd", iterations=25, lr=1e-2, caption_weight=5.0)
    without = erase(build_tiny_model(), ["nudity"], _config(**config))
    held = erase(build_tiny_model(), ["nudity"], _config(**config, embedding_retain_weight=20.0))
    assert "embedding_retain_loss" in held.history[-1] and "embedding_retain_loss" not in without.history[-1]
    tokenizer = tiny_model.tokenizer
    ids = torch.cat([tokenizer(p, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                               return_tensors="pt").input_ids for p in PROMPTS[:3]])

    def drift(encoder):
        with torch.no_grad():
            return float((encoder(ids)[0] - tiny_model.text_encoder(ids)[0]).pow(2).mean())

    assert drift(held.text_encoder) < 0.7 * drift(without.text_encoder)
    with pytest.raises(ErasureError, match="embedding_retain_weight must be >= 0"):
        EraseConfig(embedding_retain_weight=-1.0).validate()


def test_vector_term_pushes_each_steps_captions_along_the_students_own_concept_direction(tiny_model, monkeypatch):
    """vector_encode is E(p) + s * mean(E(p) - E(p without the concept)), measured with the encoder it is given;
    the trainer adds it every step, at strengths drawn from [0, vector_max_strength], toward the captions'
    contrastive targets. (Whether it holds the concept under the concept-vector probe is measured on the demo
    model, bench/demo_preset_tuning.md: on the tiny model plain caption training lowers the same error as much.)"""
    model = tiny_model
    encode0 = lambda ids: model.text_encoder(ids)[0].float()  # noqa: E731
    captions = ConceptCaptions(model.tokenizer, encode0, PROMPTS, ["nudity"], ["clothes", "people"])
    assert model.tokenizer.batch_decode(captions.removed_ids[0][:, 1:6], skip_special_tokens=True)[0] == "on a beach"
    rows, strengths = torch.tensor([0, 2]), torch.tensor([0.0, 3.0])
    with torch.no_grad():
        pushed = captions.vector_encode(model.text_encoder, 0, rows, strengths)()
        caption = encode0(captions.ids[0][rows])
        direction = (caption - encode0(captions.removed_ids[0][rows])).mean(dim=0, keepdim=True)
    torch.testing.assert_close(pushed[0], caption[0])  # strength 0: the caption itself
    torch.testing.assert_close(pushed[1], caption[1] + 3.0 * direction[0])
    assert float(direction.abs().max()) > 0

    seen = []
    original = ConceptCaptions.vector_encode

    def record(self, student, concept, rows, strengths, *shared):
        seen.append((student, strengths.clone()))
        return original(self, student, concept, rows, strengths, *shared)

    monkeypatch.setattr(ConceptCaptions, "vector_encode", record)
    result = erase(build_tiny_model(), ["nudity"], _config(method="esd", vector_weight=2.0, vector_max_strength=3.0))
    assert len(seen) == FAST["iterations"] and all("vector_loss" in h for h in result.history)
    drawn = torch.cat([s for _, s in seen])
    assert float(drawn.min()) >= 0 and float(drawn.max()) <= 3.0 and len(set(drawn.tolist())) == len(drawn)
    assert all(student is seen[0][0] and student is not model.text_encoder for student, _ in seen)
    with pytest.raises(ErasureError, match="vector_weight needs caption_weight"):
        EraseConfig(vector_weight=1.0).validate()
