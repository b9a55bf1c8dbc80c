"""Robust Erase (AdvUnlearn): erase concepts from a CLIP's text encoder by adversarial training.

The node hands `erasure_core.jobs.erase_to_file` an SDModel of fresh copies (see _sdmodel.py), trains outside
inference mode, saves the encoder to models/text_encoders, and returns the result as patches on a clone of the
input CLIP (which stays untouched). Progress drives ComfyUI's bar and a live loss chart on the node; Cancel stops
at the next step, leaves a resumable checkpoint, and "resume" continues from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import torch

import folder_paths
from comfy_api.v0_0_2 import io
from erasure_core.plots import line_plot_png, training_series

from ._clip_encoder import clip_with_encoder
from ._errors import NodeError, Progress, raise_if_cancelled, should_cancel, user_errors
from ._paths import safe_file_stem, text_encoder_output_path
from ._images import PLOT_SIZE, png_to_image
from ._sdmodel import resolution_input, sd_model_from_comfy

LOG = logging.getLogger("robust_erasure")
CATEGORY = "Robust Erasure"
LOSS_EVENT = "robust_erasure.loss"


def preset_names() -> list[str]:
    from erasure_core.presets import PRESETS

    return list(PRESETS)


def parse_concepts(text: str) -> list[str]:
    """One concept per line (blank lines ignored)."""
    concepts = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not concepts:
        raise NodeError("Robust Erase: give at least one concept to erase (one per line), e.g. 'nudity' or 'Van Gogh'")
    return concepts


def parse_options(text: str) -> dict:
    """Extra EraseConfig fields as "key=value" pairs (comma-, semicolon- or line-separated; a list keeps its commas:
    contrast_words=square,triangle), typed by the field (`erasure_core.options`, the parser the CLI, the probes and
    the judges use)."""
    from erasure_core.options import parse_options as parse_typed
    from erasure_core.options import split_option_text
    from erasure_core.training import EraseConfig

    with user_errors("Robust Erase"):
        return parse_typed(split_option_text(text), EraseConfig)


def checkpoint_path(concepts, method, preset, iterations, seed, base_hash: str, extra: dict) -> Path:
    """Where a run's resumable checkpoint lives: output/robust_erasure/checkpoints/<run key>.safetensors.

    The key covers everything that must match for a resume to be valid, so "resume" finds the right file."""
    key = json.dumps([concepts, method, preset, iterations, seed, base_hash, sorted(extra.items())], default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", "_".join(concepts))[:40].strip("_") or "concepts"
    folder = Path(folder_paths.get_output_directory()) / "robust_erasure" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{stem}_{method}_{digest}.safetensors"


def _send_loss(node_id, step, total, logs):
    try:
        from server import PromptServer

        PromptServer.instance.send_sync(LOSS_EVENT, {
            "node": str(node_id), "step": step, "total": total,
            "unlearn_loss": logs.get("unlearn_loss"), "retain_loss": logs.get("retain_loss"),
            "attack_loss": logs.get("attack_loss_last"), "adversarial": bool(logs.get("adversarial")),
        })
    except Exception:  # noqa: BLE001 - the chart is a nicety; training must not fail because of it
        LOG.debug("could not send the loss event", exc_info=True)


class RobustErase(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from erasure_core.training import METHODS

        return io.Schema(
            node_id="RobustErasureErase",
            display_name="Robust Erase (AdvUnlearn)",
            category=CATEGORY,
            description=(
                "Erases concepts from the CLIP's text encoder: AdvUnlearn (adversarial training against soft "
                "prompt attacks, robust) or ESD on the text encoder (plain, not robust). Returns an erased copy of "
                "the CLIP (the input is untouched) and saves the encoder to models/text_encoders. Cancel keeps a "
                "resumable checkpoint; run again with resume on to continue."
            ),
            inputs=[
                io.Model.Input("model"),
                io.Clip.Input("clip"),
                io.String.Input("concepts", multiline=True, default="nudity",
                                tooltip="One concept per line"),
                io.Combo.Input("preset", options=preset_names(), default="object"),
                io.Combo.Input("method", options=list(METHODS), default="advunlearn"),
                io.Int.Input("iterations", default=1000, min=1, max=100000),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True),
                io.Boolean.Input("resume", default=False,
                                 tooltip="Continue a cancelled run with the same settings from its checkpoint"),
                io.String.Input("file_name", default="", optional=True,
                                tooltip="Name of the saved encoder (default: from the concepts)"),
                io.Int.Input("attack_steps", default=-1, min=-1, max=1000, optional=True,
                             tooltip="Inner attack steps per iteration (-1: the preset's)"),
                io.Int.Input("warmup_iterations", default=-1, min=-1, max=100000, optional=True,
                             tooltip="Plain (non-adversarial) iterations first (-1: the preset's)"),
                io.String.Input("options", default="", multiline=True, optional=True,
                                tooltip="More settings as key=value, e.g. lr=1e-5, retain_weight=0.5, "
                                        "num_ddim_steps=50, concept_pool_size=16 (see the README)"),
                resolution_input(),
            ],
            outputs=[
                io.Clip.Output(display_name="erased_clip"),
                io.String.Output(display_name="encoder_file"),
                io.Image.Output(display_name="loss_plot"),
            ],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, clip, concepts, preset, method, iterations, seed, resume=False, file_name="",
                attack_steps=-1, warmup_iterations=-1, options="", resolution=0) -> io.NodeOutput:
        from erasure_core.encoders import encoder_hash
        from erasure_core.errors import ErasureCancelled
        from erasure_core.jobs import erase_to_file
        from erasure_core.training import EraseConfig

        node = "Robust Erase"
        concept_list = parse_concepts(concepts)
        overrides = {**parse_options(options), "method": method, "iterations": int(iterations), "seed": int(seed)}
        if attack_steps is not None and attack_steps >= 0:
            overrides["attack_steps"] = int(attack_steps)
        if warmup_iterations is not None and warmup_iterations >= 0:
            overrides["warmup_iterations"] = int(warmup_iterations)
        auto = re.sub(r"[^A-Za-z0-9_-]+", "_", f"{'_'.join(concept_list)}_{method}")[:80]
        stem = safe_file_stem(file_name) if file_name and file_name.strip() else safe_file_stem(auto, "concept list")
        with user_errors(node):
            config = EraseConfig.from_preset(preset, **overrides)
            with torch.inference_mode(False):
                sd_model = sd_model_from_comfy(model, clip, node, resolution=int(resolution or 0))
                ckpt = checkpoint_path(concept_list, method, preset, int(iterations), int(seed),
                                       encoder_hash(sd_model.text_encoder),
                                       {**overrides, "resolution": sd_model.resolution})
                resume_from = ckpt if resume and ckpt.is_file() else None
                if resume and resume_from is None:
                    LOG.warning("Robust Erase: resume is on but no checkpoint %s exists; starting fresh", ckpt.name)
                out_path = text_encoder_output_path(stem)
                node_id = cls.hidden.unique_id if cls.hidden is not None else None
                progress = Progress(config.iterations, on_logs=lambda s, t, logs: _send_loss(node_id, s, t, logs))
                try:
                    result = erase_to_file(
                        sd_model, concept_list, config, out_path, progress=progress, should_cancel=should_cancel,
                        checkpoint_path=ckpt, resume_from=resume_from,
                    )
                except ErasureCancelled as err:
                    LOG.info("Robust Erase: %s", err)
                    raise_if_cancelled()  # ComfyUI's own interrupt: the queue shows the run as interrupted
                    raise NodeError(f"{node}: {err}") from err
        if ckpt.is_file():
            ckpt.unlink()  # finished: the checkpoint is no longer needed
        erased = clip_with_encoder(clip, result.text_encoder, node)
        erased.robust_erasure_metadata = {**result.metadata, "file": out_path.name}
        plot = png_to_image(line_plot_png(training_series(result.history), title=f"{method}: {', '.join(concept_list)}",
                                          xlabel="iteration", ylabel="loss (MSE)", yscale="log", size=PLOT_SIZE))
        return io.NodeOutput(erased, out_path.name, plot, ui={"text": [out_path.name]})


NODES = [RobustErase]
