"""EraseConfig holds the inner attack as a SoftPromptConfig; its options, presets and saved form stay flat."""

from dataclasses import asdict, fields

import pytest

from erasure_core.attacks.soft_probe import SoftPromptProbeConfig
from erasure_core.attacks.soft_prompt import DEFAULT_EPSILON, SoftPromptConfig
from erasure_core.errors import ErasureError
from erasure_core.options import option_names, parse_options
from erasure_core.training import EraseConfig

# The attack's options as checkpoints and encoder metadata wrote them before EraseConfig held a SoftPromptConfig,
# at the defaults of that time: an old checkpoint resumes only if these come back under the same names.
SAVED_ATTACK_DEFAULTS = dict(attack_steps=30, attack_k=1, attack_method="pgd", attack_lr=1e-3, attack_init="previous",
                             attack_insertion="prefix", attack_every=1, attack_epsilon=DEFAULT_EPSILON,
                             attack_restart_every=10, attack_restarts=1, attack_batch=1, attack_captions=False)


def test_saved_form_is_flat_as_before():
    saved = EraseConfig().to_dict()
    assert {k: saved[k] for k in SAVED_ATTACK_DEFAULTS} == SAVED_ATTACK_DEFAULTS
    assert "attack" not in saved and all(not isinstance(v, dict) for v in saved.values())
    config = EraseConfig(attack_k=3, attack_epsilon=None, attack_method="fast", attack_every=2)
    assert EraseConfig.from_dict(config.to_dict()) == config
    # The nested form dataclasses.asdict writes reads back too.
    assert EraseConfig.from_dict(asdict(config)) == config


def test_every_soft_prompt_field_is_an_option_of_training_and_probe():
    """One SoftPromptConfig: a field added there is `attack_<name>` in training and `<name>` in the probe spec."""
    names = [f.name for f in fields(SoftPromptConfig)]
    assert set(f"attack_{n}" for n in names) <= set(option_names(EraseConfig))
    assert set(names) <= set(option_names(SoftPromptProbeConfig))
    text = ["attack_k=2", "attack_steps=7", "attack_lr=0.02", "attack_method=fast", "attack_init=random_vocab",
            "attack_insertion=suffix", "attack_epsilon=none", "attack_restarts=3"]
    config = EraseConfig.from_dict(parse_options(text, EraseConfig))
    assert config.attack == SoftPromptConfig(k=2, steps=7, lr=0.02, method="fast", init="random_vocab",
                                             insertion="suffix", epsilon=None, restarts=3)
    # Unset options keep the training's defaults (warm start, the headline budget), not SoftPromptConfig's.
    assert EraseConfig(attack_k=2).attack == SoftPromptConfig(k=2, init="previous", epsilon=DEFAULT_EPSILON)
    demo = EraseConfig.from_preset("demo", attack_epsilon=2.0)
    assert (demo.attack.k, demo.attack.steps, demo.attack.lr, demo.attack.epsilon) == (3, 10, 1e-2, 2.0)


@pytest.mark.parametrize("bad, words", [
    ("attack_k=0", "attack_k must be >= 1"), ("attack_steps=-1", "attack_steps must be >= 0"),
    ("attack_lr=0", "attack_lr must be > 0"), ("attack_restarts=0", "attack_restarts must be >= 1"),
    ("attack_epsilon=0", "attack_epsilon must be > 0"), ("attack_insertion=middle", "unknown insertion"),
    ("attack_population=0", "attack_population must be >= 1"),
])
def test_attack_errors_name_the_option_as_typed(bad, words):
    with pytest.raises(ErasureError, match=words):
        EraseConfig.from_dict(parse_options([bad], EraseConfig))


@pytest.mark.parametrize("bad", ["negative_guidance=-1", "negative_guidance=nan"])
def test_negative_guidance_below_zero_is_refused(bad):
    # below 0 the target would pull the prediction toward the concept instead of away from it
    with pytest.raises(ErasureError, match="negative_guidance must be >= 0"):
        EraseConfig.from_dict(parse_options([bad], EraseConfig))
    assert EraseConfig.from_dict(parse_options(["negative_guidance=0"], EraseConfig)).negative_guidance == 0
