"""Image-classifier judge: any local `transformers` image-classification model folder (a WikiArt-style ViT,
an ImageNet ResNet-50...) decides whether an image shows the concept.

An image is flagged when one of the target labels is among its top-k predictions; its score is the highest
probability among the target labels. The folder must hold `config.json` (with `id2label`), the weights and a
`preprocessor_config.json`: what `save_pretrained` of a model and its image processor writes. Nothing is
fetched from a hub.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ErasureError
from .base import Judge, JudgeResult

HOW_TO = (
    "point to a local folder written by a transformers image-classification model's save_pretrained "
    "(config.json with id2label, model weights, preprocessor_config.json)"
)


def load_classifier(folder: str | Path):
    """(image processor, model) from a local folder; ErasureError saying what is missing otherwise."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ErasureError(f"classifier folder {folder} does not exist; {HOW_TO}")
    missing = [name for name in ("config.json", "preprocessor_config.json") if not (folder / name).is_file()]
    if missing:
        raise ErasureError(f"classifier folder {folder} lacks {', '.join(missing)}; {HOW_TO}")
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    try:
        processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
        model = AutoModelForImageClassification.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ErasureError(f"cannot load an image classifier from {folder}: {exc}; {HOW_TO}") from exc
    return processor, model.eval()


def resolve_labels(id2label: dict, wanted) -> dict[int, str]:
    """Target label names -> {class id: label}; names match case-insensitively, or give class ids."""
    by_name = {str(name).lower(): int(i) for i, name in id2label.items()}
    resolved = {}
    for label in wanted:
        key = str(label).strip()
        if key.lower() in by_name:
            resolved[by_name[key.lower()]] = id2label[by_name[key.lower()]]
        elif key.isdigit() and int(key) in id2label:
            resolved[int(key)] = id2label[int(key)]
        else:
            close = [n for n in id2label.values() if key.lower() in str(n).lower()][:10]
            raise ErasureError(
                f"label {key!r} is not one of the classifier's {len(id2label)} labels"
                + (f"; close matches: {close}" if close else "; use a label name from its config.json id2label")
            )
    if not resolved:
        raise ErasureError("the classifier judge needs at least one target label")
    return resolved


class ClassifierJudge(Judge):
    name = "classifier"

    def __init__(self, folder: str | Path, labels, top_k: int = 1):
        if top_k < 1:
            raise ErasureError(f"top_k must be >= 1, got {top_k}")
        self.folder = str(folder)
        self.processor, self.model = load_classifier(folder)
        self.id2label = {int(i): str(n) for i, n in self.model.config.id2label.items()}
        self.targets = resolve_labels(self.id2label, [labels] if isinstance(labels, str) else labels)
        self.top_k = min(int(top_k), len(self.id2label))

    def describe(self) -> dict:
        return {"name": self.name, "folder": self.folder, "architecture": type(self.model).__name__,
                "labels": list(self.targets.values()), "top_k": self.top_k,
                "rule": "flag if a target label is among the top-k predictions"}

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        arrays = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        inputs = self.processor(images=[Image.fromarray(a) for a in arrays], return_tensors="pt")
        return self.model(**inputs).logits.float().softmax(dim=-1)

    def judge(self, images: torch.Tensor) -> JudgeResult:
        probs = self.probabilities(images)
        top = probs.topk(self.top_k, dim=-1)
        names = self.id2label
        target_ids = list(self.targets)
        scores, flags, details = [], [], []
        for row, idx, val in zip(probs, top.indices.tolist(), top.values.tolist()):
            scores.append(float(row[target_ids].max()))
            flags.append(any(i in self.targets for i in idx))
            details.append({"top": [{"label": str(names[i]), "p": round(v, 4)} for i, v in zip(idx, val)]})
        return JudgeResult(scores, flags, details)
