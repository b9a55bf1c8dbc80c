"""Load Demo Model: the embedded shapes-world model as native ComfyUI MODEL, CLIP and VAE."""

from __future__ import annotations

import functools
import logging

from comfy_api.v0_0_2 import io

from ._errors import user_errors
from ._native import native_parts

LOG = logging.getLogger("robust_erasure")
CATEGORY = "Robust Erasure"


def demo_sd_model():
    """The shapes-world SDModel (loaded once per process). This is the one place that picks it.

    Loaded outside inference mode: training and probes differentiate through its UNet, and tensors created
    under ComfyUI's inference mode cannot be saved for backward."""
    import torch

    with torch.inference_mode(False):
        return _load_demo()


@functools.lru_cache(maxsize=1)
def _load_demo():
    from erasure_core.demo import load_demo_model

    return load_demo_model()


class LoadDemoModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RobustErasureLoadDemoModel",
            display_name="Load Demo Model (shapes world)",
            category=f"{CATEGORY}/demo",
            description=(
                "The small shapes-world text-to-image model shipped with Robust Erasure (64x64 px images of one "
                "shape: circle, square, triangle or star, in four colours). Its MODEL, CLIP and VAE work with the "
                "stock nodes (CLIPTextEncode, KSampler, VAEDecode, SaveImage). Use EmptyLatentImage 128x128 "
                "(its VAE is 4x, not 8x, so that gives 16x16 latents and 64x64 images) and about 20 steps."
            ),
            inputs=[],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output(), io.String.Output(display_name="model_name")],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        with user_errors("Load Demo Model"):
            sd_model = demo_sd_model()
            model, clip, vae = native_parts(sd_model, sd_model.name)
        # Robust Erase / probes need the diffusers modules: keep them with the MODEL (clones share `.model`).
        model.model.robust_erasure_sd_model = sd_model
        vae.robust_erasure_from_demo = True
        return io.NodeOutput(model, clip, vae, sd_model.name)


NODES = [LoadDemoModel]
