"""Probes on the tiny model: deterministic under a seed, lowering their own objective, exact about tokens."""

import json

import pytest
import torch

from erasure_core.sampling import GenerationSettings, encode_prompts, generate
from erasure_core.attacks.concept_vector import ConceptVectorConfig, ConceptVectorProbe, cond_distance
from erasure_core.attacks.registry import build_probe, parse_probe_spec
from erasure_core.attacks.replay import as_cases, load_prompt_csv, replay
from erasure_core.attacks.soft_probe import SoftPromptProbe, SoftPromptProbeConfig
from erasure_core.attacks.unlearndiffatk import (
    UnlearnDiffAtk,
    UnlearnDiffAtkConfig,
    denoising_loss,
    ids_with_tokens,
    make_target_image,
    project_to_simplex,
    target_latent,
)
from erasure_core.errors import ErasureError
from erasure_core.judges.base import Judge, JudgeResult
from erasure_core.prompts import slot_prompt

GEN = GenerationSettings(steps=3, guidance=5.0)
PROMPT = "a photo of a dog"


class FixedJudge(Judge):
    """A stand-in judge with a fixed verdict; counts its calls."""

    name = "fixed"

    def __init__(self, verdict: bool):
        self.verdict, self.calls = verdict, 0

    def judge(self, images):
        self.calls += 1
        return JudgeResult([float(self.verdict)] * len(images), [self.verdict] * len(images), [{}] * len(images))


def _same(a, b):
    assert torch.equal(a.cond, b.cond)
    assert torch.equal(a.images, b.images)
    assert a.losses == b.losses
    assert a.adv_token_ids == b.adv_token_ids


# ------------------------------------------------------------------------------------------- soft prompt


def test_soft_probe_is_deterministic_and_lowers_its_objective(tiny_model):
    config = SoftPromptProbeConfig(k=2, steps=15, lr=0.05, trajectories=1, points=4, sampling_steps=6)
    probe = SoftPromptProbe(config)
    first = probe.run(tiny_model, tiny_model.text_encoder, PROMPT, seed=7, generation=GEN)
    second = probe.run(tiny_model, tiny_model.text_encoder, PROMPT, seed=7, generation=GEN)
    _same(first, second)
    assert len(first.losses) == config.attack.steps + 1  # the objective before each step, then after the last
    assert first.losses[-1] < first.losses[0]
    assert first.cond.shape == (1, 77, 32) and first.images.shape == (1, 3, 16, 16)
    assert first.adv_text is None and len(first.details["nearest_tokens"]) == 2
    other = probe.run(tiny_model, tiny_model.text_encoder, PROMPT, seed=8, generation=GEN)
    assert not torch.equal(other.cond, first.cond)


class FirstImageOnceJudge(Judge):
    """Says the concept is shown for the first image of its first call only."""

    name = "first-once"

    def __init__(self):
        self.calls = []

    def judge(self, images):
        self.calls.append(len(images))
        flags = [len(self.calls) == 1 and i == 0 for i in range(len(images))]
        return JudgeResult([float(f) for f in flags], flags, [{}] * len(images))


def test_soft_probe_early_stop_is_seeded_and_leaves_the_others_unchanged(tiny_model):
    """judge_every: a case stops at its first judged success; the other cases' attacks are exactly what they
    would be without early stopping, and a stopped case is not generated again at the end."""
    config = SoftPromptProbeConfig(k=2, steps=6, lr=0.05, trajectories=1, points=2, sampling_steps=4, judge_every=2)
    prompts, seeds = [PROMPT, "a blue car"], [1, 2]
    judge = FirstImageOnceJudge()
    stopped, going = SoftPromptProbe(config).run_batch(tiny_model, tiny_model.text_encoder, prompts, seeds=seeds,
                                                       judge=judge, generation=GEN)
    assert judge.calls == [2, 1, 1]  # step 2: both cases; step 4: the one left; the end: only that one
    assert stopped.success and stopped.details["stopped_at_step"] == 2 and len(stopped.losses) == 2 + 1
    assert going.success is False and going.details["stopped_at_step"] is None
    plain = SoftPromptProbe(SoftPromptProbeConfig(**{**config.__dict__, "judge_every": 0}))
    alone = plain.run(tiny_model, tiny_model.text_encoder, prompts[1], seed=seeds[1], generation=GEN)
    assert going.losses == pytest.approx(alone.losses, rel=1e-4, abs=1e-6)
    assert torch.allclose(going.cond, alone.cond, atol=1e-4)
    again = SoftPromptProbe(config).run_batch(tiny_model, tiny_model.text_encoder, prompts, seeds=seeds,
                                              judge=FirstImageOnceJudge(), generation=GEN)
    for a, b in zip(again, (stopped, going)):
        _same(a, b)
    with pytest.raises(ErasureError, match="judge_every"):
        SoftPromptProbeConfig(judge_every=-1).check()


# ------------------------------------------------------------------------------------------- UnlearnDiffAtk


def test_simplex_projection():
    w = torch.tensor([[0.9, 0.4, -0.2, 0.1], [0.25, 0.25, 0.25, 0.25], [3.0, 0.0, 0.0, 0.0]])
    p = project_to_simplex(w)
    assert torch.allclose(p.sum(-1), torch.ones(3)) and (p >= 0).all()
    assert torch.allclose(p[0], torch.tensor([0.75, 0.25, 0.0, 0.0]))
    assert torch.allclose(p[1], w[1]) and torch.allclose(p[2], torch.tensor([1.0, 0, 0, 0]))


def test_simplex_projection_sorts_only_what_the_support_needs():
    """Top-k heads, then a full sort for the rows whose support is longer: the full sort's result, bit for bit,
    on rows whose support ends inside the first head, inside the second, and beyond both."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.rand(6, 3, 500, generator=generator) * 0.02
    rows[0, 0, 7] += 1.0  # a one-hot start after a step: short support
    rows[1] = 1.0 / 500 + 1e-6 * torch.randn(3, 500, generator=generator)  # support: the whole row
    full = project_to_simplex(rows, heads=())
    for heads in [(8,), (8, 64), (64, 256), (1000,)]:
        assert torch.equal(project_to_simplex(rows, heads=heads), full)
    supports = (full > 0).sum(-1)
    assert supports.min() <= 8 < 64 < supports.max()  # every path above was taken
    assert torch.allclose(full.sum(-1), torch.ones(6, 3)) and (full >= 0).all()


def test_unlearndiffatk_default_k_follows_the_concept():
    assert UnlearnDiffAtkConfig(concept="nudity").tokens() == 5
    assert UnlearnDiffAtkConfig(concept="Van Gogh").tokens() == 3
    assert UnlearnDiffAtkConfig(concept="nudity", k=2).tokens() == 2
    with pytest.raises(ErasureError, match="timesteps"):
        UnlearnDiffAtkConfig(timesteps=(1000,)).check(1000)


def _mean_denoising_loss(model, encoder, slotted, token_ids, x0, timesteps, noises):
    ids = ids_with_tokens(slotted, token_ids)
    with torch.no_grad():
        cond = encoder(ids)[0]
        return sum(float(denoising_loss(model, cond, x0, t, n)) for t in timesteps for n in noises)


def test_unlearndiffatk_tokens_are_exact_deterministic_and_lower_the_loss(tiny_model):
    config = UnlearnDiffAtkConfig(concept="nudity", timesteps=(200, 600), steps_per_timestep=20, lr=0.2)
    probe = UnlearnDiffAtk(config)
    judge = FixedJudge(False)
    first = probe.run(tiny_model, tiny_model.text_encoder, PROMPT, seed=3, judge=judge, generation=GEN)
    second = probe.run(tiny_model, tiny_model.text_encoder, PROMPT, seed=3, judge=judge, generation=GEN)
    _same(first, second)
    ids = first.adv_token_ids
    special = {tiny_model.tokenizer.bos_token_id, tiny_model.tokenizer.eos_token_id}
    assert len(ids) == 5 and all(0 <= i < len(tiny_model.tokenizer) and i not in special for i in ids)
    assert len(first.losses) == 40 and first.success is False and len(first.details["judged"]) == 2

    # The judged image is exactly a plain generation from [start] + optimised ids + prompt ids: no re-tokenising.
    prompt_ids = tiny_model.tokenizer(PROMPT, add_special_tokens=False).input_ids
    full = [49406] + ids + prompt_ids + [49407] * (77 - 1 - len(ids) - len(prompt_ids))
    assert first.details["input_ids"] == full
    cond = tiny_model.text_encoder(torch.tensor([full]))[0]
    plain = generate(tiny_model, cond, [3], uncond=encode_prompts(tiny_model, [""]), steps=GEN.steps,
                     guidance=GEN.guidance)
    assert torch.equal(first.images, plain)
    assert torch.equal(first.cond, cond)

    # Its own objective (denoising error on the target image), on fixed noise: lower than at the start.
    slotted = slot_prompt(tiny_model.tokenizer, PROMPT, 5)
    x0 = target_latent(tiny_model, make_target_image(tiny_model, PROMPT, 3, GEN))
    g = torch.Generator().manual_seed(0)
    noises = [torch.randn(x0.shape, generator=g) for _ in range(8)]
    before = _mean_denoising_loss(tiny_model, tiny_model.text_encoder, slotted, first.details["initial_token_ids"],
                                  x0, config.timesteps, noises)
    after = _mean_denoising_loss(tiny_model, tiny_model.text_encoder, slotted, ids, x0, config.timesteps, noises)
    assert first.details["initial_token_ids"] != ids
    assert after < before


def test_unlearndiffatk_stops_at_the_first_success(tiny_model, tmp_path):
    config = UnlearnDiffAtkConfig(k=2, timesteps=(100, 300, 500), steps_per_timestep=2)
    judge = FixedJudge(True)
    probe = UnlearnDiffAtk(config)
    steps = []
    probe.on_step = lambda step, loss: steps.append((step, loss))
    result = probe.run(tiny_model, tiny_model.text_encoder, PROMPT, seed=0, judge=judge, generation=GEN)
    assert result.success is True and judge.calls == 1
    assert result.details["stopped_at_timestep"] == 100 and len(result.losses) == 2
    assert steps == list(enumerate(result.losses, start=1))

    from safetensors.torch import load_file

    from erasure_core.attacks.base import save_probe_result

    paths = save_probe_result(result, tmp_path)
    assert torch.equal(load_file(str(paths["cond"]))["cond"], result.cond)
    saved = json.loads(paths["json"].read_text())
    assert saved["adv_token_ids"] == result.adv_token_ids and saved["success"] is True
    assert paths["image"].is_file()


def test_unlearndiffatk_accepts_a_user_target_image(tiny_model):
    config = UnlearnDiffAtkConfig(k=1, timesteps=(500,), steps_per_timestep=2)
    image = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))  # resized to 16x16
    result = UnlearnDiffAtk(config).run(tiny_model, tiny_model.text_encoder, PROMPT, seed=0, generation=GEN,
                                        target_image=image)
    assert result.success is None and len(result.adv_token_ids) == 1
    with pytest.raises(ErasureError, match="target image"):
        UnlearnDiffAtk(config).run(tiny_model, tiny_model.text_encoder, PROMPT, seed=0, target_image=image[0])


# ------------------------------------------------------------------------------------------- concept vector


def test_concept_vector_probe(tiny_model):
    config = ConceptVectorConfig(pairs=(("a photo of a cat", "a photo of a"),), strengths=(0.0, 1.0))
    probe = ConceptVectorProbe(config)
    first = probe.run(tiny_model, tiny_model.text_encoder, "a photo of a", seed=1, generation=GEN)
    second = probe.run(tiny_model, tiny_model.text_encoder, "a photo of a", seed=1, generation=GEN)
    _same(first, second)
    # Strength 1 with one exact pair lands on the concept prompt's encoding: the objective falls to 0.
    concept = encode_prompts(tiny_model, ["a photo of a cat"])
    assert first.losses[0] == pytest.approx(first.details["baseline_distance"]) and first.losses[0] > 0
    assert first.losses[1] == pytest.approx(0.0, abs=1e-10)
    assert cond_distance(first.cond, concept) == pytest.approx(0.0, abs=1e-10)
    # With a judge, it stops at the first strength that succeeds.
    judged = probe.run(tiny_model, tiny_model.text_encoder, "a photo of a", seed=1, judge=FixedJudge(True),
                       generation=GEN)
    assert judged.success is True and judged.details["strength"] == 0.0 and len(judged.losses) == 1


def test_concept_vector_templates_and_errors(tiny_model):
    pairs = ConceptVectorConfig(concept="nudity", templates=("a photo of {}", "{}")).prompt_pairs()
    assert pairs == [("a photo of nudity", "a photo of"), ("nudity", "")]
    with pytest.raises(ErasureError, match="concept"):
        ConceptVectorConfig().prompt_pairs()
    with pytest.raises(ErasureError, match="direction_from"):
        ConceptVectorProbe(ConceptVectorConfig(concept="x", direction_from="nope")).run(
            tiny_model, tiny_model.text_encoder, "a photo", seed=0)


# ------------------------------------------------------------------------------------------- replay


def test_prompt_csv_layout(tmp_path):
    path = tmp_path / "i2p.csv"
    path.write_text("Case_Number,PROMPT,evaluation_seed,Evaluation_Guidance,categories\n"
                    "0,a dog,42,7,sexual\n1,\"a cat, sitting\",,,\n", encoding="utf-8")
    cases = load_prompt_csv(path)
    assert [c.prompt for c in cases] == ["a dog", "a cat, sitting"]
    assert cases[0].seed == 42 and cases[0].guidance == 7.0 and cases[0].meta["categories"] == "sexual"
    assert cases[1].seed is None and cases[1].guidance is None
    expanded = as_cases(cases, seeds=[1, 2])
    assert [(c.prompt, c.seed) for c in expanded] == [("a dog", 42), ("a cat, sitting", 1), ("a cat, sitting", 2)]

    bad = tmp_path / "bad.csv"
    bad.write_text("text,seed\nhello,1\n", encoding="utf-8")
    with pytest.raises(ErasureError, match="no 'prompt' column"):
        load_prompt_csv(bad)
    bad.write_text("prompt,seed\nhello,abc\n", encoding="utf-8")
    with pytest.raises(ErasureError, match="line 2.*seed"):
        load_prompt_csv(bad)
    with pytest.raises(ErasureError, match="does not exist"):
        load_prompt_csv(tmp_path / "missing.csv")


def test_replay_generates_the_prompts_as_written(tiny_model, tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,seed,guidance,negative_prompt\na dog,5,3.0,blurry\n", encoding="utf-8")
    [result] = replay(tiny_model, tiny_model.text_encoder, path, generation=GEN, judge=FixedJudge(False))
    expected = generate(tiny_model, encode_prompts(tiny_model, ["a dog"]), [5],
                        uncond=encode_prompts(tiny_model, ["blurry"]), steps=GEN.steps, guidance=3.0)
    assert torch.equal(result.images, expected)
    assert result.success is False and result.details["seed"] == 5 and result.adv_text == "a dog"


# ------------------------------------------------------------------------------------------- registry


def test_probe_registry():
    probe = parse_probe_spec("unlearndiffatk:timesteps=10,30:steps_per_timestep=4", concept="nudity")
    assert isinstance(probe, UnlearnDiffAtk)
    assert probe.config.timesteps == (10, 30) and probe.config.tokens() == 5
    cv = parse_probe_spec("concept_vector:strengths=1,2.5", concept="cat")
    assert cv.config.strengths == (1.0, 2.5) and cv.config.concept == "cat"
    assert isinstance(build_probe("soft-prompt", k=2), SoftPromptProbe)
    with pytest.raises(ErasureError, match="no option"):
        build_probe("soft_prompt", bogus=1)
    with pytest.raises(ErasureError, match="unknown probe"):
        parse_probe_spec("gcg")


def test_bounded_soft_probe_never_leaves_its_ball_and_unbounded_is_stress(tiny_model):
    from erasure_core.attacks.soft_prompt import DEFAULT_EPSILON, typical_token_norm

    radius = 0.5 * typical_token_norm(tiny_model.text_encoder)
    config = SoftPromptProbeConfig(k=2, steps=6, lr=0.5, method="fast", trajectories=1, points=2, sampling_steps=4,
                                   epsilon=0.5, restarts=2)
    probe = SoftPromptProbe(config)
    assert probe.name == "soft_prompt_eps0.5" and probe.role == "headline"
    results = probe.run_batch(tiny_model, tiny_model.text_encoder, [PROMPT, "a blue car"], seeds=[1, 2],
                              generation=GEN)
    for result in results:
        # sign steps of 0.5 would leave a ball of radius ~0.5 x median norm at once without the projection
        assert max(result.details["adv_norms"]) <= radius * (1 + 1e-5)
        assert result.details["radius"] == pytest.approx(radius)
    free = SoftPromptProbe(SoftPromptProbeConfig(**{**config.__dict__, "epsilon": None, "restarts": 1}))
    assert free.name == "soft_prompt_unbounded" and free.role == "stress"
    unbounded = free.run(tiny_model, tiny_model.text_encoder, PROMPT, seed=1, generation=GEN)
    assert max(unbounded.details["adv_norms"]) > radius  # the same steps without a ball do leave it
    assert SoftPromptProbe().config.attack.epsilon == DEFAULT_EPSILON and SoftPromptProbe().name == "soft_prompt"


def test_batched_probes_equal_one_by_one(tiny_model):
    """Attacking prompts together gives each the attack it gets alone (the objective is separable)."""
    soft = SoftPromptProbe(SoftPromptProbeConfig(k=2, steps=4, trajectories=1, points=2, sampling_steps=4))
    uda = UnlearnDiffAtk(UnlearnDiffAtkConfig(k=2, timesteps=(300, 600), steps_per_timestep=2))
    prompts, seeds = [PROMPT, "a blue car"], [1, 2]
    for probe in (soft, uda):
        together = probe.run_batch(tiny_model, tiny_model.text_encoder, prompts, seeds=seeds, generation=GEN)
        for result, prompt, seed in zip(together, prompts, seeds):
            alone = probe.run(tiny_model, tiny_model.text_encoder, prompt, seed=seed, generation=GEN)
            assert result.adv_token_ids == alone.adv_token_ids
            assert result.losses == pytest.approx(alone.losses, rel=1e-4, abs=1e-6)
            assert torch.allclose(result.cond, alone.cond, atol=1e-4)


def test_probe_spec_budget_options():
    from erasure_core.attacks.registry import parse_probe_spec

    probe = parse_probe_spec("soft_prompt:epsilon=none:restarts=3")
    assert probe.config.attack.epsilon is None and probe.config.attack.restarts == 3 and probe.role == "stress"
    assert parse_probe_spec("soft_prompt:epsilon=2").config.attack.epsilon == 2.0
    with pytest.raises(ErasureError, match="steps cannot be none"):
        parse_probe_spec("soft_prompt:steps=none")
    with pytest.raises(ErasureError, match="restarts must be >= 1"):
        parse_probe_spec("soft_prompt:restarts=0").config.check()


def test_soft_probe_has_no_previous_tokens_to_start_from():
    with pytest.raises(ErasureError, match="init must be random_vocab"):
        parse_probe_spec("soft_prompt:init=previous").config.check()
    assert parse_probe_spec("soft_prompt:k=2:lr=0.5").describe()["k"] == 2


def test_a_probe_implementing_neither_run_nor_run_batch_says_so(tiny_model):
    """`run` defaults to `run_batch` on one prompt and `run_batch` to `run` on each; a probe with neither must fail
    with its name, not recurse."""
    from erasure_core.attacks.base import Probe

    class Empty(Probe):
        name = "empty"

    with pytest.raises(NotImplementedError, match="Empty implements neither run nor run_batch"):
        Empty().run(tiny_model, tiny_model.text_encoder, PROMPT, seed=0)
    with pytest.raises(NotImplementedError, match="Empty"):
        Empty().run_batch(tiny_model, tiny_model.text_encoder, [PROMPT], seeds=[0])
