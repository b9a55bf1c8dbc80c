"""The shapes world's judge: a small CNN with one classification head per attribute.

How it is trained (augmented renders, the demo model's own images and off-manifold outliers) is in
`judge_training.py`:

    python -m erasure_core.demo.judge_training [--steps N] [--out DIR]     # train and ship the judge
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from ..errors import ErasureError
from ..judges.base import Judge, JudgeResult
from . import world

JUDGE_DIR = Path(__file__).resolve().parent / "weights" / "judge"
WIDTHS = (16, 24, 32, 32, 48, 64)


class ShapesClassifier(nn.Module):
    """A strided stem (64 -> 32 px), then conv stages down to 4 px, global average pooling, and one linear
    head per attribute: ~60k parameters, cheap enough to train beside the demo model on a shared CPU."""

    def __init__(self, widths=WIDTHS):
        super().__init__()
        stem, *convs = widths

        def conv(c_in, c_out, stride=1):
            return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

        layers, c_in = conv(3, stem, stride=2), stem
        for i, c in enumerate(convs):
            layers += conv(c_in, c)
            if i % 2 == 0:  # after the 1st, 3rd and 5th conv: 32 -> 16 -> 8 -> 4 px
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.features = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({a: nn.Linear(c_in, len(v)) for a, v in world.WORLD.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute for images [N, 3, 64, 64] in [0, 1]."""
        h = self.features(images * 2 - 1).mean(dim=(2, 3))
        return {a: head(h) for a, head in self.heads.items()}


def _prepare(images: torch.Tensor) -> torch.Tensor:
    images = images.float().clamp(0, 1)
    if images.shape[-1] != world.IMAGE_SIZE or images.shape[-2] != world.IMAGE_SIZE:
        images = F.interpolate(images, size=(world.IMAGE_SIZE, world.IMAGE_SIZE), mode="area")
    return images


def weights_file(folder: str | Path | None = None) -> Path:
    """The judge's weights in `folder` (default: the shipped judge)."""
    return (Path(folder) if folder is not None else JUDGE_DIR) / "model.safetensors"


def load_classifier(folder: str | Path | None = None) -> ShapesClassifier:
    path = weights_file(folder)
    folder = path.parent
    if not path.is_file():
        raise ErasureError(f"the demo judge's weights are missing ({path}); train them with `python -m "
                           "erasure_core.demo.judge_training` (the shipped judge's full command is in its config.json)")
    if not (folder / "config.json").is_file():
        raise ErasureError(f"the demo judge in {folder} has weights but no config.json (its widths and world): "
                           "copy the folder whole, or train it again with "
                           "`python -m erasure_core.demo.judge_training`")
    config = json.loads((folder / "config.json").read_text())
    if config["world"] != world.WORLD:
        raise ErasureError(f"the demo judge in {folder} was trained on another world: {config['world']}")
    model = ShapesClassifier(tuple(config["widths"]))
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return model.eval().requires_grad_(False)


class DemoJudge(Judge):
    """Flags images that show `concept` (any shape, colour, background or style value of the world).

    scores = the classifier's probability of the concept's value; details = the predicted attributes."""

    name = "demo-judge"

    def __init__(self, concept: str, weights_dir: str | Path | None = None, threshold: float = 0.5):
        self.concept, self.attribute = concept, world.attribute_of(concept)
        self.threshold = threshold
        self.classifier = load_classifier(weights_dir)
        # which weights made the calls: a stored benchmark result must never be reused with another judge
        self.weights_sha256 = hashlib.sha256(weights_file(weights_dir).read_bytes()).hexdigest()[:16]

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.classifier(_prepare(images.cpu()))
        return {a: l.softmax(dim=1) for a, l in logits.items()}

    def predict(self, images: torch.Tensor) -> dict[str, list[str]]:
        """The most likely value of every attribute, per image."""
        probs = self.probabilities(images)
        return {a: [world.WORLD[a][i] for i in p.argmax(dim=1).tolist()] for a, p in probs.items()}

    def judge(self, images: torch.Tensor) -> JudgeResult:
        probs = self.probabilities(images)
        index = world.WORLD[self.attribute].index(self.concept)
        scores = probs[self.attribute][:, index].tolist()
        details = [{a: world.WORLD[a][int(p[i].argmax())] for a, p in probs.items()} for i in range(len(scores))]
        return JudgeResult(scores=scores, flags=[s >= self.threshold for s in scores], details=details)

    def describe(self) -> dict:
        return {"name": self.name, "concept": self.concept, "attribute": self.attribute,
                "threshold": self.threshold, "world": world.WORLD, "weights_sha256": self.weights_sha256}


def demo_retain_check(judge):
    """retain_check(images, prompts) for the demo world: a retain image is right when the judge sees every
    world value its prompt names ("a red square" -> colour red and shape square)."""
    values = {value: attribute for attribute, vals in world.WORLD.items() for value in vals}

    def check(images, prompts) -> list[bool]:
        predicted = judge.predict(images)
        verdicts = []
        for i, prompt in enumerate(prompts):
            named = [word for word in re.findall(r"[a-z]+", prompt.lower()) if word in values]
            verdicts.append(all(predicted[values[word]][i] == word for word in named))
        return verdicts

    return check


