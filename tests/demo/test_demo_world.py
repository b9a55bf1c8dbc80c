"""The shapes world: attribute lookup, rendering, captions and evaluation prompts."""

import random
import re

import numpy as np
import pytest

from erasure_core.demo import world
from erasure_core.errors import ErasureError


def _names(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text) is not None


def test_world_has_the_required_attributes():
    assert len(world.WORLD["shape"]) >= 4 and {"circle", "square", "triangle", "star"} <= set(world.WORLD["shape"])
    assert len(world.WORLD["colour"]) >= 4
    assert len(world.WORLD["background"]) >= 2
    assert {"filled", "outline", "striped"} <= set(world.WORLD["style"])
    assert not set(world.WORLD["background"]) & set(world.WORLD["colour"])


def test_attribute_of_every_value_and_unknown_values():
    for attribute, values in world.WORLD.items():
        for value in values:
            assert world.attribute_of(value) == attribute
    with pytest.raises(ErasureError, match="circle"):
        world.attribute_of("hexagon")


def test_render_size_colours_and_determinism():
    attrs = {"shape": "square", "colour": "blue", "background": "white", "style": "filled"}
    a = np.asarray(world.render(attrs, random.Random(3)))
    b = np.asarray(world.render(attrs, random.Random(3)))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    near = lambda rgb: (np.abs(a.astype(int) - rgb).sum(axis=2) < 30).mean()  # noqa: E731
    assert near(world.RGB["white"]) > 0.3  # background
    assert near(world.RGB["blue"]) > 0.05  # the shape itself
    assert near(world.RGB["red"]) == 0 and near(world.RGB["black"]) == 0


def test_render_varies_position_between_draws():
    attrs = {"shape": "circle", "colour": "red", "background": "black", "style": "filled"}
    rng = random.Random(0)
    images = [np.asarray(world.render(attrs, rng)) for _ in range(4)]
    assert all(not np.array_equal(images[0], im) for im in images[1:])


def test_styles_cover_less_and_less_of_the_shape():
    """Same geometry (same seed): filled covers most, striped less, outline least."""
    coverage = {}
    for style in world.WORLD["style"]:
        attrs = {"shape": "circle", "colour": "yellow", "background": "black", "style": style}
        img = np.asarray(world.render(attrs, random.Random(7))).astype(int)
        coverage[style] = (img.sum(axis=2) > 100).mean()
    assert coverage["filled"] > coverage["striped"] > coverage["outline"] > 0.02


def test_captions_name_only_true_attributes_and_some_are_empty():
    rng = random.Random(1)
    empty = 0
    for _ in range(1000):
        attrs = world.random_attrs(rng)
        text = world.caption(attrs, rng)
        if text == "":
            empty += 1
            continue
        for attribute, values in world.WORLD.items():
            for value in values:
                if _names(text, value):
                    assert attrs[attribute] == value, (text, attrs)
    assert 50 <= empty <= 150  # about 10%, for classifier-free guidance


def test_caption_with_every_attribute_names_them_all():
    rng = random.Random(2)
    for _ in range(50):
        attrs = world.random_attrs(rng)
        text = world.caption(attrs, rng, named=set(world.ATTRIBUTES))
        assert all(_names(text, attrs[a]) for a in world.ATTRIBUTES), text


@pytest.mark.parametrize("value", ["circle", "red", "outline", "black"])
def test_evaluation_prompts_name_or_avoid_the_concept(value):
    attribute = world.attribute_of(value)
    for text, attrs in world.prompts_naming(value, 30, random.Random(0)):
        assert _names(text, value) and attrs[attribute] == value
    for text, attrs in world.prompts_not_naming(value, 30, random.Random(0)):
        assert not _names(text, value) and attrs[attribute] != value
        assert _names(text, attrs[attribute])
