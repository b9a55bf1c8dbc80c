"""The shapes world: procedurally rendered 64x64 images of one shape, with natural-language captions.

Every image has four attributes (shape, colour, background, style); captions name any subset of them, so the
text-to-image model learns each word on its own and in combination. Rendering is at 4x and box-downsampled,
which gives anti-aliased edges the way a real photo would.
"""

from __future__ import annotations

import math
import random
from typing import Iterable

import numpy as np
from PIL import Image, ImageDraw

from ..errors import ErasureError

IMAGE_SIZE = 64
_SUPERSAMPLE = 4

WORLD: dict[str, list[str]] = {
    "shape": ["circle", "square", "triangle", "star"],
    "colour": ["red", "green", "blue", "yellow"],
    "background": ["white", "black"],
    "style": ["filled", "outline", "striped"],
}
ATTRIBUTES = tuple(WORLD)

RGB = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (35, 70, 225),
    "yellow": (245, 205, 20),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}

_VALUE_TO_ATTRIBUTE = {value: attribute for attribute, values in WORLD.items() for value in values}


def attribute_of(value: str) -> str:
    """The attribute a value belongs to ("circle" -> "shape"); ErasureError for values outside the world."""
    try:
        return _VALUE_TO_ATTRIBUTE[value]
    except KeyError:
        valid = ", ".join(f"{a}: {'/'.join(v)}" for a, v in WORLD.items())
        raise ErasureError(f"{value!r} is not a value of the demo shapes world; valid values are {valid}") from None


def siblings(value: str) -> list[str]:
    """The other values of `value`'s attribute ("circle" -> square, triangle, star): the demo's contrast words
    (EraseConfig.contrast_words), derived from the world's structure alike for every concept."""
    return [v for v in WORLD[attribute_of(value)] if v != value]


def random_attrs(rng: random.Random) -> dict[str, str]:
    return {attribute: rng.choice(values) for attribute, values in WORLD.items()}


# ---------------------------------------------------------------------------------------------- rendering


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    corners = {"square": 4, "triangle": 3, "star": 10}[shape]
    points = []
    for k in range(corners):
        a = angle + 2 * math.pi * k / corners - math.pi / 2
        rk = r * (0.45 if shape == "star" and k % 2 else 1.0)
        if shape == "square":
            rk = r * 0.92  # a square of the same radius looks larger than the others; even out their areas
        points.append((cx + rk * math.cos(a), cy + rk * math.sin(a)))
    return points


def _mask(shape: str, cx: float, cy: float, r: float, angle: float, size: int, width: int = 0) -> np.ndarray:
    """A boolean mask of the shape, filled (width 0) or as an outline `width` pixels thick."""
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        box = (cx - r, cy - r, cx + r, cy + r)
        draw.ellipse(box, fill=255) if width == 0 else draw.ellipse(box, outline=255, width=width)
    else:
        points = _polygon(shape, cx, cy, r, angle)
        if width == 0:
            draw.polygon(points, fill=255)
        else:
            # A closed polyline with round joints: even thickness at the sharp corners of stars and triangles.
            draw.line(points + points[:1], fill=255, width=width, joint="curve")
            for x, y in points:
                draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=255)
    return np.asarray(img) > 127


def _stripes(size: int, period: float, angle: float) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    u = x * math.cos(angle) + y * math.sin(angle)
    return (u % period) < period / 2


def render(attrs: dict[str, str], rng: random.Random, size: int = IMAGE_SIZE) -> Image.Image:
    """One RGB image of `attrs` (shape, colour, background, style) with random position, size and rotation."""
    for attribute in ATTRIBUTES:
        if attrs.get(attribute) not in WORLD[attribute]:
            raise ErasureError(f"render needs a {attribute} among {WORLD[attribute]}, got {attrs.get(attribute)!r}")
    big = size * _SUPERSAMPLE
    r = big * rng.uniform(0.26, 0.36)
    cx = rng.uniform(r + big * 0.04, big - r - big * 0.04)
    cy = rng.uniform(r + big * 0.04, big - r - big * 0.04)
    angle = rng.uniform(0, 2 * math.pi)
    line = max(1, round(big * 0.055))  # about 3.5 px at 64 px: survives the VAE's 4x downsampling
    shape, style = attrs["shape"], attrs["style"]
    if style == "filled":
        mask = _mask(shape, cx, cy, r, angle, big)
    elif style == "outline":
        mask = _mask(shape, cx, cy, r, angle, big, width=line)
    else:  # striped: stripes inside a thin outline so the silhouette stays readable
        inside = _mask(shape, cx, cy, r, angle, big)
        stripes = _stripes(big, period=big * 0.16, angle=rng.choice([0.25, 0.75]) * math.pi + rng.uniform(-0.2, 0.2))
        mask = (inside & stripes) | _mask(shape, cx, cy, r, angle, big, width=max(1, line // 2))
    canvas = np.empty((big, big, 3), dtype=np.uint8)
    canvas[:] = RGB[attrs["background"]]
    canvas[mask] = RGB[attrs["colour"]]
    return Image.fromarray(canvas).resize((size, size), Image.Resampling.BOX)


def to_tensor_batch(images: Iterable[Image.Image]):
    """PIL images -> float tensor [N, 3, H, W] in [0, 1]."""
    import torch

    arrays = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float().div(255.0)


# ---------------------------------------------------------------------------------------------- captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(attrs: dict[str, str], named: set[str], rng: random.Random) -> str:
    """E.g. "striped red circle", "red circle in outline style", "shape" (when no shape is named)."""
    words = []
    style_suffix = ""
    if "style" in named:
        style = attrs["style"]
        if style == "outline" or rng.random() < 0.4:
            style_suffix = f" in {style} style"
        else:
            words.append(style)
    if "colour" in named:
        words.append(attrs["colour"])
    words.append(attrs["shape"] if "shape" in named else "shape")
    return " ".join(words) + style_suffix


_TEMPLATES = [
    "{a} {np}",
    "{np}",
    "a drawing of {a} {np}",
    "a picture of {a} {np}",
    "an image of {a} {np}",
    "{a} {np} in the picture",
]
_BACKGROUND_TEMPLATES = [" on a {bg} background", ", {bg} background", " against a {bg} background"]


def caption(attrs: dict[str, str], rng: random.Random, named: set[str] | None = None, empty_prob: float = 0.1) -> str:
    """A natural-language caption of `attrs` naming the attributes in `named` (a random subset if None).

    With probability `empty_prob` (and `named` not given) the caption is empty: the unconditional case that
    classifier-free guidance needs.
    """
    if named is None:
        if rng.random() < empty_prob:
            return ""
        probs = {"shape": 0.9, "colour": 0.8, "style": 0.65, "background": 0.6}
        named = {a for a, p in probs.items() if rng.random() < p}
        if not named:
            named = {"shape"}
    if not named:
        return ""
    np_ = _noun_phrase(attrs, named, rng)
    text = rng.choice(_TEMPLATES).format(a=_article(np_), np=np_)
    if "background" in named:
        text += rng.choice(_BACKGROUND_TEMPLATES).format(bg=attrs["background"])
    return text


# ---------------------------------------------------------------------------------------------- evaluation


def prompts_naming(value: str, n: int, rng: random.Random) -> list[tuple[str, dict[str, str]]]:
    """`n` (prompt, attrs) pairs whose prompt names `value` (ASR prompts); other attributes vary.

    Each prompt names the concept's attribute plus a random subset of the others, and `attrs` is the full
    attribute set the prompt asks for (unnamed attributes drawn at random: what the judge should expect).
    """
    attribute = attribute_of(value)
    pairs = []
    for _ in range(n):
        attrs = random_attrs(rng)
        attrs[attribute] = value
        named = {attribute} | {a for a in ATTRIBUTES if a != attribute and rng.random() < 0.5}
        if attribute != "shape":
            named.add("shape")  # "a red shape" is vaguer than the captions the model learnt from
        pairs.append((caption(attrs, rng, named=named), attrs))
    return pairs


def prompts_not_naming(value: str, n: int, rng: random.Random) -> list[tuple[str, dict[str, str]]]:
    """`n` (prompt, attrs) pairs for retain accuracy: the prompt names shape and colour, never `value`,
    and asks for another value of the concept's attribute, so the judge can check the model still obeys."""
    attribute = attribute_of(value)
    others = [v for v in WORLD[attribute] if v != value]
    pairs = []
    for _ in range(n):
        attrs = random_attrs(rng)
        attrs[attribute] = rng.choice(others)
        named = {"shape", "colour", attribute} | {a for a in ("style", "background") if rng.random() < 0.5}
        pairs.append((caption(attrs, rng, named=named), attrs))
    return pairs
