"""Training the demo judge (`judge.ShapesClassifier`) from up to three sources, mixed in every batch.

- Augmented renders (tinted and mottled backgrounds, faded foregrounds, colour shifts, noise, blur), with a
  quarter of them clean: generated images are never as clean as renders, and a judge trained on clean renders
  only called almost every imperfect generation a circle.
- The demo model's own images, labelled by their caption (`judge_data.generated_set`): the model's real errors.
- Off-manifold outliers (`judge_data.outlier_set`), with targets read by a first judge trained on the other two:
  an attribute it is not sure of gets a uniform target. Without them the judge named a shape and a colour for
  every smudge an attacked, erased encoder made (bench/judge_audit).

    python -m erasure_core.demo.judge_training [--steps N] [--generated N --outliers N] [--out DIR]

The demo model must exist before --generated or --outliers can be used (they are made with it).
"""

from __future__ import annotations

import argparse
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ErasureError
from ..files import atomic_save_safetensors, atomic_write_json
from . import world
from .judge import JUDGE_DIR, WIDTHS, ShapesClassifier
from .judge_data import ImageSet, attribute_labels, generated_set, outlier_set, outlier_targets

log = logging.getLogger("erasure_core.demo.judge_training")
LABEL_SMOOTHING = 0.05


def render_layers(n: int, seed: int):
    """Renders decomposed into foreground alpha [N, 1, 64, 64], the attributes' label indices, and attrs.

    Rendering each image on black with a white shape gives its coverage (alpha), so augmentation can
    recomposite it with any tint of background and foreground."""
    rng = random.Random(seed)
    attrs = [world.random_attrs(rng) for _ in range(n)]
    masks = [world.render({**a, "colour": "yellow", "background": "black"}, rng) for a in attrs]
    alpha = world.to_tensor_batch(masks).max(dim=1, keepdim=True).values
    alpha = alpha / torch.tensor(world.RGB["yellow"]).max().div(255)
    return alpha.clamp(0, 1), attribute_labels(attrs), attrs


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


def soft_labels(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Hard labels as smoothed one-hot targets [N, k] (what cross_entropy's label_smoothing does)."""
    return F.one_hot(labels, k).float() * (1 - LABEL_SMOOTHING) + LABEL_SMOOTHING / k


@dataclass
class Sources:
    """What a training batch is drawn from: renders always; generated images and outliers (with their soft
    targets) when given, each a quarter of the batch."""

    renders: tuple  # (alpha, labels, attrs) from render_layers
    generated: ImageSet | None = None
    outliers: ImageSet | None = None
    outlier_targets: dict[str, torch.Tensor] | None = None

    def __post_init__(self):
        alpha, _, attrs = self.renders
        self.fg, self.bg = _colours(attrs, "colour"), _colours(attrs, "background")

    def batch(self, size: int, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        quarter = size // 4
        extra = [(images, targets) for images, targets in ((self.generated, None),
                                                            (self.outliers, self.outlier_targets)) if images is not None]
        parts = [self._renders(size - quarter * len(extra), gen)]
        parts += [self._images(images, targets, quarter, gen) for images, targets in extra]
        return torch.cat([x for x, _ in parts]), {a: torch.cat([t[a] for _, t in parts]) for a in world.WORLD}

    def _renders(self, n: int, gen: torch.Generator):
        alpha, labels, _ = self.renders
        idx = torch.randint(alpha.shape[0], (n,), generator=gen)
        x = augment(alpha[idx], self.fg[idx], self.bg[idx], gen)
        # a quarter stays clean: the judge must be exact on renders too
        x[: n // 4] = composite(alpha[idx[: n // 4]], self.fg[idx[: n // 4]], self.bg[idx[: n // 4]])
        return x, {a: soft_labels(labels[a][idx], len(v)) for a, v in world.WORLD.items()}

    @staticmethod
    def _images(images: ImageSet, targets: dict | None, n: int, gen: torch.Generator):
        idx = torch.randint(len(images), (n,), generator=gen)
        x = images.floats(idx)
        flip = torch.rand(n, generator=gen) < 0.5  # every attribute of the world is mirror-symmetric
        x[flip] = x[flip].flip(-1)
        if targets is None:
            return x, {a: soft_labels(images.labels[a][idx], len(v)) for a, v in world.WORLD.items()}
        return x, {a: targets[a][idx] for a in world.WORLD}


def clean_test_set(seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """1,000 clean renders and their labels, apart from the training renders (logged during training)."""
    alpha, labels, attrs = render_layers(1000, seed + 10_000)
    return clean_images(alpha, attrs), labels


def fit(sources: Sources, steps: int, seed: int, batch: int = 64, lr: float = 3e-3,
        test: tuple | None = None) -> ShapesClassifier:
    """A classifier trained for `steps` AdamW steps (warm-up, then cosine decay), seeded. `test`: (images, labels)
    whose accuracy is logged every 200 steps (default: clean_test_set(seed))."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    test_images, test_labels = test if test is not None else clean_test_set(seed)
    model = ShapesClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / steps))
        x, targets = sources.batch(batch, gen)
        model.train()
        logits = model(x)
        loss = sum(F.cross_entropy(logits[a], targets[a]) for a in world.WORLD)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 200 == 0:
            log.info("judge step %d/%d loss %.3f clean test accuracy %s", step + 1, steps, loss.item(),
                     {k: round(v, 4) for k, v in accuracy(model, test_images, test_labels).items()})
    return model.eval()


@torch.no_grad()
def probabilities(model: ShapesClassifier, images: ImageSet) -> dict[str, torch.Tensor]:
    chunks = [model(images.floats(torch.arange(i, min(i + 256, len(images))))) for i in range(0, len(images), 256)]
    return {a: torch.cat([c[a] for c in chunks]).softmax(dim=1) for a in world.WORLD}


def train_judge(steps: int = 1600, seed: int = 0, generated: ImageSet | None = None,
                outliers: ImageSet | None = None, out: Path = JUDGE_DIR, n_renders: int = 8000,
                record: dict | None = None) -> dict:
    """Train and save the judge. With `outliers`, a first judge (renders and `generated`, half the steps)
    reads them and sets their targets (judge_data.outlier_targets); then the judge is trained on all three.
    `record`: more to write into its config.json (the command that made it)."""
    if outliers is not None and generated is None:
        raise ErasureError("outliers need generated images too: their targets are read by a judge trained on them; "
                           "pass `generated` as well")
    renders, test = render_layers(n_renders, seed), clean_test_set(seed)
    info = {**(record or {}), "steps": steps, "seed": seed, "generated": len(generated) if generated else 0,
            "outliers": len(outliers) if outliers else 0}
    targets = None
    if outliers is not None:
        first = fit(Sources(renders, generated), steps // 2, seed + 1, test=test)
        targets = outlier_targets(probabilities(first, outliers), outliers.labels)
        sure = torch.stack([(t.max(dim=1).values > 0.5) for t in targets.values()]).all(dim=0)
        info["outliers_read_as_captioned"] = int(sure.sum())
        log.info("first judge reads %d of %d outliers as their caption", info["outliers_read_as_captioned"],
                 len(outliers))
    model = fit(Sources(renders, generated, outliers, targets), steps, seed, test=test)
    info["clean_test_accuracy"] = accuracy(model, *test)
    save_judge(model, out, info)
    log.info("judge done: %s", info)
    return info


def save_judge(model: ShapesClassifier, out: Path, info: dict):
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    atomic_save_safetensors(state, out / "model.safetensors", metadata={"format": "pt"})
    atomic_write_json({"widths": list(WIDTHS), "world": world.WORLD, **info}, out / "config.json")


def image_sets(data_dir: Path | None, n_generated: int, n_outliers: int, data_seed: int):
    """The generated and outlier sets, made with the demo model or read from `data_dir` when made before."""
    if not n_generated and not n_outliers:
        return None, None
    from . import load_demo_model

    model, sets = None, []
    for kind, n, make in (("generated", n_generated, generated_set), ("outliers", n_outliers, outlier_set)):
        path = data_dir / f"{kind}-{n}-seed{data_seed}.safetensors" if data_dir else None
        if not n:
            sets.append(None)
        elif path is not None and path.is_file():
            sets.append(ImageSet.load(path))
        else:
            model = model or load_demo_model()
            made = make(model, n, data_seed, progress=lambda done, total: log.info("%s %d/%d", kind, done, total))
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                made.save(path)
            sets.append(made)
    return tuple(sets)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m erasure_core.demo.judge_training", description="train the demo judge")
    p.add_argument("--steps", type=int, default=1600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--generated", type=int, default=0, help="the demo model's own images, labelled by caption")
    p.add_argument("--outliers", type=int, default=0, help="off-manifold images (needs --generated)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--data-cache", type=Path, default=None, help="keep the generated sets here and reuse them")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=JUDGE_DIR)
    a = p.parse_args(argv)
    if a.steps < 1 or a.generated < 0 or a.outliers < 0:
        p.error("--steps must be >= 1 and --generated/--outliers >= 0")
    if a.outliers and not a.generated:
        p.error("--outliers needs --generated too (the outliers' targets are read by a judge trained on them)")
    if a.threads < 1:
        p.error(f"--threads must be >= 1, got {a.threads}")
    for flag, folder in (("--out", a.out), ("--data-cache", a.data_cache)):
        if folder is not None and folder.exists() and not folder.is_dir():
            p.error(f"{flag} {folder} is a file: pass a folder (it is created if missing)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(a.threads)
    try:
        generated, outliers = image_sets(a.data_cache, a.generated, a.outliers, a.data_seed)
        options = (("steps", a.steps), ("seed", a.seed), ("generated", a.generated), ("outliers", a.outliers),
                   ("data-seed", a.data_seed))
        command = "python -m erasure_core.demo.judge_training " + " ".join(f"--{k} {v}" for k, v in options)
        train_judge(steps=a.steps, seed=a.seed, generated=generated, outliers=outliers, out=a.out,
                    record={"command": command})
    except ErasureError as err:
        p.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    main()
