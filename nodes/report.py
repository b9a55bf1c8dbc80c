"""Robustness Report: `erasure_core.evaluate` over a prompt list; a summary IMAGE and the full report folder."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

import folder_paths
from comfy_api.v0_0_2 import io

from ._clip_encoder import clip_to_text_encoder
from ._errors import NodeError, Progress, raise_if_cancelled, should_cancel, user_errors
from ._sdmodel import resolution_input, sd_model_from_comfy

CATEGORY = "Robust Erasure"


def _lines(text: str) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def _pct(entry) -> str:
    if not isinstance(entry, dict) or entry.get("rate") is None:
        return "-"
    return f"{100 * entry['rate']:.0f}% ({entry['successes']}/{entry['n']})"


def summary_rows(results: dict) -> list[list[str]]:
    probes = [p["name"] for p in results["probes"]]
    rows = [["encoder", "before attack", *[f"after {p}" for p in probes], "retain accuracy", "concept on retain"]]
    for name, entry in results["encoders"].items():
        post = entry.get("post_attack", {})
        utility = entry.get("utility", {}) or {}
        rows.append([name, _pct(entry.get("pre_attack")), *[_pct(post.get(p)) for p in probes],
                     _pct(utility.get("retain_accuracy")), _pct(utility.get("concept_on_retain"))])
    return rows


def summary_image(results: dict, out_dir: Path, max_images: int = 16) -> torch.Tensor:
    """The attack-success table, then a grid of the report's images (newest run's PNGs)."""
    rows = summary_rows(results)
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:
        font = ImageFont.load_default()
    widths = [max(len(r[c]) for r in rows) * 8 + 16 for c in range(len(rows[0]))]
    row_h = 22
    pngs = sorted(p for p in out_dir.rglob("*.png") if "plot" not in p.name)[:max_images]
    thumbs = []
    for p in pngs:
        with Image.open(p) as im:
            thumbs.append(im.convert("RGB").resize((96, 96)))
    cols = 8
    grid_h = ((len(thumbs) + cols - 1) // cols) * 100
    width = max(sum(widths), cols * 100 if thumbs else 0) + 8
    canvas = Image.new("RGB", (width, row_h * (len(rows) + 1) + grid_h + 8), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), "Attack success rate (lower is more robust)", fill=(0, 0, 0), font=font)
    for r, row in enumerate(rows):
        x = 4
        y = row_h * (r + 1)
        if r == 0:
            draw.rectangle([0, y, width, y + row_h - 2], fill=(230, 230, 230))
        for c, cell in enumerate(row):
            draw.text((x, y + 3), cell, fill=(0, 0, 0), font=font)
            x += widths[c]
    top = row_h * (len(rows) + 1) + 4
    for i, thumb in enumerate(thumbs):
        canvas.paste(thumb, (4 + (i % cols) * 100, top + (i // cols) * 100))
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)[None]


class RobustnessReport(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RobustErasureReport",
            display_name="Robustness Report",
            category=CATEGORY,
            description=(
                "Evaluates the original and the erased CLIP on a prompt list: how often the judge sees the concept "
                "before and after each probe (attack success rate), and how well retain prompts still work. "
                "Writes report.html + report.json + images to output/robust_erasure/reports/<name>/."
            ),
            inputs=[
                io.Model.Input("model"),
                io.Clip.Input("original_clip"),
                io.Clip.Input("erased_clip"),
                io.Vae.Input("vae"),
                io.String.Input("prompts", multiline=True, default="a photo of a nude person"),
                io.String.Input("judge", default="nudenet"),
                io.String.Input("probes", default="soft_prompt:steps=50",
                                tooltip="Comma-separated probe specs, e.g. soft_prompt:steps=50, unlearndiffatk"),
                io.String.Input("seeds", default="0"),
                io.String.Input("retain_prompts", multiline=True, default="", optional=True),
                io.Int.Input("generation_steps", default=20, min=1, max=200, optional=True),
                io.Float.Input("guidance", default=7.5, min=0.0, max=30.0, step=0.5, optional=True),
                resolution_input(),
                io.String.Input("report_name", default="report", optional=True),
            ],
            outputs=[io.Image.Output(display_name="summary"), io.String.Output(display_name="report_folder")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, original_clip, erased_clip, vae, prompts, judge, probes, seeds, retain_prompts="",
                generation_steps=20, guidance=7.5, report_name="report", resolution=0) -> io.NodeOutput:
        from erasure_core.attacks.registry import parse_probe_spec
        from erasure_core.evaluate import evaluate
        from .judge import server_judge

        node = "Robustness Report"
        prompt_list = _lines(prompts)
        if not prompt_list:
            raise NodeError(f"{node}: give at least one prompt (one per line)")
        try:
            seed_list = [int(s) for s in re.split(r"[,\s]+", seeds or "") if s.strip()] or [0]
        except ValueError:
            raise NodeError(f"{node}: seeds must be integers separated by commas, got {seeds!r}") from None
        name = re.sub(r"[^A-Za-z0-9_-]+", "_", report_name or "report").strip("_") or "report"
        folder = Path(folder_paths.get_output_directory()) / "robust_erasure" / "reports"
        out_dir = folder / f"{name}_{time.strftime('%Y%m%d-%H%M%S')}"
        with user_errors(node):
            judge_obj = server_judge(judge.strip())
            concept = prompt_list[0]
            probe_list = [parse_probe_spec(spec.strip(), concept=concept) for spec in probes.split(",") if spec.strip()]
            with torch.inference_mode(False):
                sd_model = sd_model_from_comfy(model, original_clip, node, vae=vae,
                                               resolution=int(resolution or 0))
                erased = clip_to_text_encoder(erased_clip)
                bar = None

                def progress(done, total, what):
                    nonlocal bar
                    bar = bar or Progress(total)
                    bar(done, total)
                    if should_cancel():
                        raise_if_cancelled()

                results = evaluate(sd_model, {"erased": erased}, prompt_list, probe_list, judge_obj,
                                   seeds=seed_list, steps=int(generation_steps), guidance=float(guidance),
                                   retain_prompts=_lines(retain_prompts), out_dir=out_dir, progress=progress)
        image = summary_image(results, out_dir)
        rel = out_dir.relative_to(Path(folder_paths.get_output_directory()))
        return io.NodeOutput(image, str(rel), ui={"text": [f"report: output/{rel}/report.html"]})


NODES = [RobustnessReport]
