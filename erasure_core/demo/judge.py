"""The shapes world's judge: a small CNN with one classification head per attribute.

It is trained on augmented renders (tinted and mottled backgrounds, faded foregrounds, colour shifts, noise,
blur) because generated images are never as clean as renders: a judge trained on clean renders only called
almost every imperfect generation a circle.

    python -m erasure_core.demo.judge [--minutes M] [--out DIR]     # train and ship the judge
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import random
import re
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from ..errors import ErasureError
from ..files import atomic_save_safetensors, atomic_write_json
from ..judges.base import Judge, JudgeResult
from . import world

JUDGE_DIR = Path(__file__).resolve().parent / "weights" / "judge"
WIDTHS = (16, 24, 32, 32, 48, 64)
log = logging.getLogger("erasure_core.demo.judge")


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
        raise ErasureError(f"the demo judge's weights are missing ({path}); train them with "
                           "`python -m erasure_core.demo.judge` (a few minutes on a CPU)")
    if not (folder / "config.json").is_file():
        raise ErasureError(f"the demo judge in {folder} has weights but no config.json (its widths and world): "
                           "copy the folder whole, or train it again with `python -m erasure_core.demo.judge`")
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


# ---------------------------------------------------------------------------------------------- training


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


def render_layers(n: int, seed: int):
    """Renders decomposed into foreground alpha [N, 1, 64, 64], the attributes' label indices, and attrs.

    Rendering each image on black with a white shape gives its coverage (alpha), so augmentation can
    recomposite it with any tint of background and foreground."""
    rng = random.Random(seed)
    attrs = [world.random_attrs(rng) for _ in range(n)]
    masks = [world.render({**a, "colour": "yellow", "background": "black"}, rng) for a in attrs]
    alpha = world.to_tensor_batch(masks).max(dim=1, keepdim=True).values
    alpha = alpha / torch.tensor(world.RGB["yellow"]).max().div(255)
    labels = {k: torch.tensor([world.WORLD[k].index(a[k]) for a in attrs]) for k in world.WORLD}
    return alpha.clamp(0, 1), labels, attrs


def _colours(attrs: list[dict], key: str) -> torch.Tensor:
    return torch.tensor([world.RGB[a[key]] for a in attrs], dtype=torch.float32).div(255).view(-1, 3, 1, 1)


def composite(alpha, fg, bg):
    return bg + alpha * (fg - bg)


def augment(alpha, fg, bg, gen: torch.Generator) -> torch.Tensor:
    """Imperfect versions of clean renders, the kind of errors a small generator makes."""
    n = alpha.shape[0]

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(n, *shape, generator=gen)

    # colour shifts of both layers, tinted and mottled (low-frequency) backgrounds, faded foregrounds
    fg = (fg + u(-0.12, 0.12, 3, 1, 1)).clamp(0, 1)
    bg = bg + u(-0.15, 0.15, 1, 1, 1) * (torch.rand(n, 1, 1, 1, generator=gen) < 0.5)
    bg = bg + u(-0.1, 0.1, 3, 1, 1)
    mottle = F.interpolate(torch.randn(n, 3, 4, 4, generator=gen), size=alpha.shape[-2:], mode="bilinear")
    bg = (bg + mottle * u(0, 0.08, 1, 1, 1)).clamp(0, 1)
    a = alpha * u(0.55, 1.0, 1, 1, 1)
    a = (a + F.interpolate(torch.randn(n, 1, 8, 8, generator=gen), size=alpha.shape[-2:], mode="bilinear")
         * u(0, 0.15, 1, 1, 1) * alpha).clamp(0, 1)
    x = composite(a, fg, bg)
    blur = torch.rand(n, 1, 1, 1, generator=gen) < 0.35
    x = torch.where(blur, F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False), x)
    x = x + torch.randn(x.shape, generator=gen) * u(0, 0.06, 1, 1, 1)
    return x.clamp(0, 1)


def clean_images(alpha, attrs) -> torch.Tensor:
    return composite(alpha, _colours(attrs, "colour"), _colours(attrs, "background"))


def accuracy(model: ShapesClassifier, images: torch.Tensor, labels: dict) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        logits = model(images)
    return {a: (logits[a].argmax(1) == labels[a]).float().mean().item() for a in world.WORLD}


def train_judge(minutes: float = 8.0, seed: int = 0, n_train: int = 8000, batch: int = 64, lr: float = 3e-3,
                out: Path = JUDGE_DIR) -> dict[str, float]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    alpha, labels, attrs = render_layers(n_train, seed)
    fg, bg = _colours(attrs, "colour"), _colours(attrs, "background")
    test_alpha, test_labels, test_attrs = render_layers(1000, seed + 10_000)
    test_images = clean_images(test_alpha, test_attrs)
    model = ShapesClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    t0, step = time.time(), 0
    while (progress := (time.time() - t0) / (minutes * 60)) < 1.0:
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * progress))
        idx = torch.randint(n_train, (batch,), generator=gen)
        x = augment(alpha[idx], fg[idx], bg[idx], gen)
        # a quarter of each batch stays clean: the judge must be exact on renders too
        x[: batch // 4] = composite(alpha[idx[: batch // 4]], fg[idx[: batch // 4]], bg[idx[: batch // 4]])
        model.train()
        logits = model(x)
        loss = sum(F.cross_entropy(logits[a], labels[a][idx], label_smoothing=0.05) for a in world.WORLD)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            log.info("judge step %d loss %.3f clean test accuracy %s", step, loss.item(),
                     {k: round(v, 4) for k, v in accuracy(model, test_images, test_labels).items()})
    acc = accuracy(model, test_images, test_labels)
    save_judge(model.eval(), out, {"steps": step, "seed": seed, "clean_test_accuracy": acc})
    log.info("judge done: %d steps, clean held-out accuracy %s", step, acc)
    return acc


def save_judge(model: ShapesClassifier, out: Path, info: dict):
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    atomic_save_safetensors(state, out / "model.safetensors", metadata={"format": "pt"})
    atomic_write_json({"widths": list(WIDTHS), "world": world.WORLD, **info}, out / "config.json")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m erasure_core.demo.judge", description="train the demo judge")
    p.add_argument("--minutes", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=JUDGE_DIR)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(a.threads)
    train_judge(minutes=a.minutes, seed=a.seed, out=a.out)


if __name__ == "__main__":
    main()
