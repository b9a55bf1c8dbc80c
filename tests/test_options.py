"""The one `name:key=value` parser (erasure_core.options): typed from the dataclass it fills."""
from dataclasses import dataclass

import pytest

from erasure_core.errors import ErasureError
from erasure_core.options import (convert, flat_dict, flat_options, nested, option_names, parse_options, parse_spec,
                                  split_option_text, typed_values)


@dataclass
class Example:
    steps: int = 10
    lr: float = 0.1
    fast: bool = False
    method: str = "pgd"
    epsilon: float | None = 1.0
    k: int | None = None
    timesteps: tuple[int, ...] = (1, 2)
    prompts: list[str] | None = None
    layers: str | list[int] = "all"
    pairs: tuple[tuple[str, str], ...] = ()


def test_values_are_typed_by_the_field():
    options = parse_options(["steps=5", "lr=2e-3", "fast=yes", "method=fast", "epsilon=none", "k=3",
                             "timesteps=10, 20", "prompts=a cat,a dog", "layers=1,3"], Example)
    assert options == {"steps": 5, "lr": 0.002, "fast": True, "method": "fast", "epsilon": None, "k": 3,
                       "timesteps": (10, 20), "prompts": ["a cat", "a dog"], "layers": "1,3"}
    assert type(options["timesteps"]) is tuple and type(options["prompts"]) is list


def test_keys_are_case_insensitive_with_aliases():
    assert parse_options(["Top-K=2"], Example, aliases={"top_k": "steps"}) == {"steps": 2}


@pytest.mark.parametrize("part, words", [
    ("steps=abc", "steps='abc' is not a valid int"),
    ("lr=fast", "lr='fast' is not a valid float"),
    ("fast=maybe", "fast='maybe' is not a valid bool"),
    ("steps=none", "steps cannot be none"),
    ("method=none", "method cannot be none"),
    ("timesteps=1,x", "timesteps='x' is not a valid int"),
    ("pairs=a,b", "pairs: a tuple"),
    ("nope=1", "unknown option 'nope'; the options are steps"),
    ("steps", "'steps' is not key=value"),
])
def test_bad_values_name_the_key_and_the_type(part, words):
    with pytest.raises(ErasureError, match="^ctx: ") as err:
        parse_options([part], Example, context="ctx: ")
    assert words in str(err.value)


def test_parse_spec_splits_name_positional_and_options():
    spec = parse_spec("Ex-Ample:first:steps=3:second", {"ex_ample": Example}, positional=True)
    assert (spec.name, spec.positional, spec.options) == ("ex_ample", ["first", "second"], {"steps": 3})
    with pytest.raises(ErasureError, match="'first' is not key=value"):
        parse_spec("ex_ample:first", {"ex_ample": Example})
    with pytest.raises(ErasureError, match="unknown thing 'other'.*use one of ex_ample"):
        parse_spec("other:steps=1", {"ex_ample": Example}, what="thing")
    with pytest.raises(ErasureError, match="empty thing"):
        parse_spec("  ", {"ex_ample": Example}, what="thing")


def test_convert_outside_a_dataclass():
    assert convert("none", float | None, "x") is None
    assert convert("0", bool, "x") is False


def test_probe_and_judge_specs_use_the_shared_parser():
    from erasure_core.attacks.registry import parse_probe_spec
    from erasure_core.judges.registry import build_judge

    probe = parse_probe_spec("soft_prompt:k=2:epsilon=none")
    assert probe.config.attack.k == 2 and probe.config.attack.epsilon is None
    with pytest.raises(ErasureError, match="probe spec 'soft_prompt:k=abc': option k='abc' is not a valid int"):
        parse_probe_spec("soft_prompt:k=abc")
    with pytest.raises(ErasureError, match="unknown probe 'bogus'"):
        parse_probe_spec("bogus:k=1")
    with pytest.raises(ErasureError, match="option threshold='high' is not a valid float"):
        build_judge("nudenet:threshold=high")
    judge = build_judge("nudenet:Threshold=0.3:classes=FEET_EXPOSED, BELLY_EXPOSED")
    assert judge.threshold == 0.3 and judge.classes == ("FEET_EXPOSED", "BELLY_EXPOSED")


@dataclass
class Inner:
    k: int = 1
    epsilon: float | None = None


@flat_options
@dataclass
class Outer:
    iterations: int = 5
    attack: Inner = nested(lambda: Inner(epsilon=1.0), "attack_")
    attack_every: int = 1  # starts with the prefix but is no field of Inner: the outer config's own


def test_nested_config_options_are_spelled_flat():
    assert option_names(Outer) == ["iterations", "attack_k", "attack_epsilon", "attack_every"]
    options = parse_options(["attack_k=3", "attack_epsilon=none", "attack_every=2"], Outer)
    assert options == {"attack_k": 3, "attack_epsilon": None, "attack_every": 2}
    outer = Outer(**options)
    assert outer.attack == Inner(k=3, epsilon=None) and outer.attack_every == 2
    assert Outer(attack_k=2).attack == Inner(k=2, epsilon=1.0)  # the field's own default, not Inner's
    assert flat_dict(outer) == {"iterations": 5, "attack_k": 3, "attack_epsilon": None, "attack_every": 2}
    assert Outer(**flat_dict(outer)) == outer
    # The nested config given itself (or as asdict writes it): flat names change a copy of it.
    given = Inner(k=4, epsilon=2.0)
    assert Outer(attack=given, attack_epsilon=None).attack == Inner(k=4, epsilon=None) and given.epsilon == 2.0
    assert Outer(attack={"k": 6}).attack == Inner(k=6, epsilon=1.0)
    with pytest.raises(ErasureError, match="unknown option 'attack_x'"):
        parse_options(["attack_x=1"], Outer)
    with pytest.raises(TypeError):
        Outer(attack_x=1)


def test_an_ambiguous_nested_option_is_refused():
    @dataclass
    class Clash:
        k: int = 1
        attack: Inner = nested(Inner, "")

    with pytest.raises(TypeError, match="'k'"):
        flat_options(Clash)


def test_widget_text_splits_between_options_and_keeps_a_lists_commas():
    text = "prompts=a dog,a cat, lr=2e-3; steps=5\ntimesteps=200,500,800"
    parts = split_option_text(text)
    assert parts == ["prompts=a dog,a cat", "lr=2e-3", "steps=5", "timesteps=200,500,800"]
    assert parse_options(parts, Example) == {"prompts": ["a dog", "a cat"], "lr": 2e-3, "steps": 5,
                                             "timesteps": (200, 500, 800)}
    # The probe node also separates with ':' (a spec's separator).
    assert split_option_text("k=3:timesteps=200,500, steps=4", ",;:") == ["k=3", "timesteps=200,500", "steps=4"]
    assert split_option_text("") == [] and split_option_text(None) == []
    # A stray word is not an option of its own: it stays in the value before it, whose type refuses it.
    with pytest.raises(ErasureError, match="steps"):
        parse_options(split_option_text("steps=5, fast"), Example)


def test_python_values_are_checked_like_option_text():
    values = typed_values({"steps": "5", "lr": 1, "epsilon": "none", "k": 4.0, "layers": "1,3", "method": "x",
                           "prompts": None, "unknown": "kept"}, Example)
    assert values == {"steps": 5, "lr": 1, "epsilon": None, "k": 4, "layers": "1,3", "method": "x", "prompts": None,
                      "unknown": "kept"}
    assert type(values["k"]) is int
    for bad, words in [({"lr": "abc"}, "lr='abc' is not a valid float"), ({"steps": True}, "steps must be a whole"),
                       ({"steps": 2.5}, "steps must be a whole number, got 2.5"), ({"lr": [1]}, "lr must be a number")]:
        with pytest.raises(ErasureError, match=words):
            typed_values(bad, Example)


def test_python_values_of_the_wrong_kind_are_refused_for_every_field_kind():
    """Text, true/false and list fields are checked too (JSON's lists become the field's own kind); a field of
    several kinds is left to the config's validation."""
    values = typed_values({"fast": True, "timesteps": [10, 20.0], "prompts": ("a cat",), "pairs": [["a", "b"]],
                           "layers": [1, 3]}, Example)
    assert values == {"fast": True, "timesteps": (10, 20), "prompts": ["a cat"], "pairs": [["a", "b"]],
                      "layers": [1, 3]}
    assert type(values["timesteps"]) is tuple and type(values["prompts"]) is list
    for bad, words in [({"method": 3}, "method must be text, got 3"), ({"fast": 1}, "fast must be true or false"),
                       ({"prompts": 5}, "prompts must be a list, got 5"),
                       ({"prompts": ["a cat", 3]}, r"prompts \(an element\) must be text, got 3"),
                       ({"timesteps": [10, 2.5]}, r"timesteps \(an element\) must be a whole number, got 2.5")]:
        with pytest.raises(ErasureError, match=words):
            typed_values(bad, Example)


def test_erase_config_from_python_gets_the_option_message():
    from erasure_core.training.config import EraseConfig

    assert EraseConfig.from_preset("demo", lr="2e-3", attack_k="2").to_dict()["attack_k"] == 2
    with pytest.raises(ErasureError, match="retain_early_steps='abc' is not a valid float"):
        EraseConfig.from_preset("demo", retain_early_steps="abc")
    with pytest.raises(ErasureError, match="iterations must be a whole number"):
        EraseConfig.from_dict({"iterations": 1.5})
    with pytest.raises(ErasureError, match="contrast_words must be a list, got 5"):
        EraseConfig.from_preset("demo", contrast_words=5)
