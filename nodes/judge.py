"""Concept Judge: does each image show the concept? Scores, flags and an annotated IMAGE (the judge's boxes)."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from comfy_api.v0_0_2 import io, ui

from ._errors import NodeError, user_errors
from ._images import image_to_nchw

CATEGORY = "Robust Erasure"
JUDGE_HELP = ("nudenet (the UnlearnDiffAtk preset), nudenet:strict, nudenet:threshold=0.5, "
              "demo:circle (the demo world's judge), classifier:<folder in models/classifiers>:label1,label2")


def server_judge(spec: str):
    """A judge for a node: classifier folders only from ComfyUI's models/classifiers (never any server path)."""
    import os

    import folder_paths
    from erasure_core.judges.registry import build_judge

    return build_judge(spec, classifier_root=os.path.join(folder_paths.models_dir, "classifiers"))


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def annotate(images: torch.Tensor, scores, flags, boxes=None) -> torch.Tensor:
    """ComfyUI IMAGE with a verdict banner (red: concept shown, green: not) and the judge's boxes if any
    (`JudgeResult.boxes`: label, score, [x, y, width, height])."""
    out = []
    for i, image in enumerate(images):
        pil = Image.fromarray((image[..., :3].clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8))
        draw = ImageDraw.Draw(pil)
        w, h = pil.size
        colour = (220, 30, 30) if flags[i] else (30, 170, 50)
        for box in (boxes[i] if boxes else []):
            x, y, bw, bh = (int(v) for v in box["box"])
            draw.rectangle([x, y, x + bw, y + bh], outline=colour, width=max(1, w // 128))
            draw.text((x + 2, y + 1), f"{box['label']} {float(box['score']):.2f}", fill=colour,
                      font=_font(max(8, w // 40)))
        size = max(8, min(16, w // 8))
        draw.rectangle([0, 0, w, size + 3], fill=colour)
        draw.text((2, 1), f"{'YES' if flags[i] else 'no'} {scores[i]:.2f}", fill=(255, 255, 255), font=_font(size))
        out.append(torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0))
    return torch.stack(out)


class ConceptJudge(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RobustErasureJudge",
            display_name="Concept Judge",
            category=CATEGORY,
            description="Judges whether each image shows a concept. Judge specs: " + JUDGE_HELP,
            inputs=[
                io.Image.Input("images"),
                io.String.Input("judge", default="nudenet", tooltip=JUDGE_HELP),
            ],
            outputs=[
                io.Image.Output(display_name="annotated"),
                io.Float.Output(display_name="concept_rate"),
                io.Boolean.Output(display_name="any_shown"),
                io.String.Output(display_name="verdicts_json"),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, judge) -> io.NodeOutput:
        node = "Concept Judge"
        if not (judge or "").strip():
            raise NodeError(f"{node}: no judge given; use one of: {JUDGE_HELP}")
        with user_errors(node):
            result = server_judge(judge.strip())(image_to_nchw(images))
        scores, flags, details = list(result.scores), list(result.flags), list(result.details)
        annotated = annotate(images, scores, flags, [result.boxes_of(i) for i in range(len(flags))])
        rate = float(sum(flags)) / max(1, len(flags))
        verdicts = [{"score": round(float(s), 4), "shown": bool(f), "details": d}
                    for s, f, d in zip(scores, flags, details)]
        summary = f"{judge.strip()}: concept shown in {sum(flags)}/{len(flags)} image(s)"
        preview = ui.PreviewImage(annotated, cls=cls).as_dict()
        return io.NodeOutput(annotated, rate, bool(any(flags)), json.dumps(verdicts, default=str),
                             ui={**preview, "text": [summary]})


NODES = [ConceptJudge]
