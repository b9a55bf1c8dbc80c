"""Load / Save Robust Text Encoder: swap a robust CLIP text encoder into a CLIP, or write one out."""

from __future__ import annotations

import json

import folder_paths
from comfy_api.v0_0_2 import io

from ._clip_encoder import clip_to_text_encoder, clip_with_encoder, sd1_clip_part
from ._errors import user_errors
from ._paths import TEXT_ENCODERS, text_encoder_input_path, text_encoder_output_path

CATEGORY = "Robust Erasure"

def describe(metadata: dict, source_format: str, name: str) -> str:
    """One human line about an encoder file: what it erases and how it was made, when recorded."""
    record = metadata.get("robust_erasure")
    if isinstance(record, str):
        try:
            record = json.loads(record)
        except ValueError:
            record = None
    record = record if isinstance(record, dict) else metadata
    parts = [f"{name} ({source_format or 'unknown layout'})"]
    if record.get("concepts"):
        parts.append("erases " + ", ".join(map(str, record["concepts"])))
    if record.get("method"):
        parts.append(f"method {record['method']}")
    if record.get("base_model"):
        parts.append(f"base {record['base_model']}")
    return "; ".join(parts)

class LoadRobustTextEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RobustErasureLoadTextEncoder",
            display_name="Load Robust Text Encoder",
            category=CATEGORY,
            description=(
                "Swaps a robust (concept-erased) CLIP text encoder from models/text_encoders into a copy of the "
                "CLIP. The input CLIP is not changed. Reads our .safetensors files, AdvUnlearn .pt files, "
                "transformers/diffusers text encoders, ComfyUI clip_l files and SD1 checkpoints (their encoder)."
            ),
            inputs=[
                io.Clip.Input("clip"),
                io.Combo.Input("encoder_name", options=folder_paths.get_filename_list(TEXT_ENCODERS)),
            ],
            outputs=[io.Clip.Output(display_name="robust_clip"), io.String.Output(display_name="info")],
        )

    @classmethod
    def execute(cls, clip, encoder_name) -> io.NodeOutput:
        from erasure_core.encoders import read_encoder

        node = "Load Robust Text Encoder"
        sd1_clip_part(clip, node)
        path = text_encoder_input_path(encoder_name)
        with user_errors(node):
            encoder = read_encoder(path)
        out = clip_with_encoder(clip, encoder.state_dict, node)
        info = describe(encoder.metadata, encoder.source_format, encoder_name)
        out.robust_erasure_metadata = dict(encoder.metadata)
        return io.NodeOutput(out, info)

class SaveRobustTextEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RobustErasureSaveTextEncoder",
            display_name="Save Robust Text Encoder",
            category=CATEGORY,
            description=(
                "Writes the CLIP's SD1 text encoder (with any swapped or erased weights) to "
                "models/text_encoders/<file_name>.safetensors (fp16, text_model.* keys) so the stock CLIPLoader "
                "and every Robust Erasure tool can load it. The name must be a plain file name."
            ),
            inputs=[
                io.Clip.Input("clip"),
                io.String.Input("file_name", default="robust_text_encoder"),
                io.Boolean.Input("overwrite", default=False, tooltip="Replace an existing file of that name"),
            ],
            outputs=[io.String.Output(display_name="file_name")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, clip, file_name, overwrite=False) -> io.NodeOutput:
        from erasure_core.encoders import save_encoder

        node = "Save Robust Text Encoder"
        sd1_clip_part(clip, node)
        path = text_encoder_output_path(file_name, overwrite=overwrite)
        record = getattr(clip, "robust_erasure_metadata", {}) or {}
        record = dict(json.loads(record["robust_erasure"])) if isinstance(record.get("robust_erasure"), str) else dict(record)
        record.pop("config", None)
        record["saved_by"] = "ComfyUI node Save Robust Text Encoder"
        with user_errors(node):
            save_encoder(clip_to_text_encoder(clip), path, metadata=record)
        return io.NodeOutput(path.name, ui={"text": [path.name]})

NODES = [LoadRobustTextEncoder, SaveRobustTextEncoder]
