"""Before / After Compare: a labelled side-by-side grid IMAGE, and a before/after slider on the node in the UI."""

from __future__ import annotations

import random
import string

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from comfy_api.v0_0_2 import io, ui

from ._errors import NodeError

CATEGORY = "Robust Erasure"
UI_KEY = "robust_erasure_compare"


def _resize_like(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if images.shape[1:3] == (height, width):
        return images
    x = images.permute(0, 3, 1, 2)
    x = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1)


def _pair_batches(before: torch.Tensor, after: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Match batch sizes (a single image pairs with every image of the other batch) and sizes (after follows
    before)."""
    if before.ndim != 4 or after.ndim != 4:
        raise NodeError("Before / After Compare: both inputs must be IMAGE batches")
    nb, na = before.shape[0], after.shape[0]
    if nb != na:
        if nb == 1:
            before = before.expand(na, -1, -1, -1)
        elif na == 1:
            after = after.expand(nb, -1, -1, -1)
        else:
            raise NodeError(f"Before / After Compare: {nb} before images but {na} after images; give equal "
                            "batches (or one image on either side)")
    after = _resize_like(after[..., :3].float(), before.shape[1], before.shape[2])
    return before[..., :3].float(), after


def compare_grid(before: torch.Tensor, after: torch.Tensor, label_before: str, label_after: str) -> torch.Tensor:
    """One IMAGE [1, H, W, 3]: a label row, then one row per pair: before | after."""
    before, after = _pair_batches(before, after)
    n, h, w, _ = before.shape
    gap, header = 4, max(14, min(28, w // 8))
    grid = np.full((header + n * (h + gap), 2 * w + gap, 3), 255, dtype=np.uint8)
    for i in range(n):
        y = header + i * (h + gap)
        grid[y:y + h, :w] = (before[i].clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
        grid[y:y + h, w + gap:] = (after[i].clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    image = Image.fromarray(grid)
    draw = ImageDraw.Draw(image)
    try:
        font = ImageFont.load_default(size=max(9, header - 4))
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    for x0, text in ((0, label_before), (w + gap, label_after)):
        draw.text((x0 + 3, 1), text[:60], fill=(0, 0, 0), font=font)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]


class BeforeAfterCompare(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RobustErasureCompare",
            display_name="Before / After Compare",
            category=CATEGORY,
            description=(
                "Puts two image batches side by side with labels (one row per image pair) and shows a "
                "before/after slider on the node. A single image on either side pairs with every image of the other."
            ),
            inputs=[
                io.Image.Input("before"),
                io.Image.Input("after"),
                io.String.Input("label_before", default="before"),
                io.String.Input("label_after", default="after"),
            ],
            outputs=[io.Image.Output(display_name="grid")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, before, after, label_before="before", label_after="after") -> io.NodeOutput:
        grid = compare_grid(before, after, label_before, label_after)
        b, a = _pair_batches(before, after)
        prefix = "robust_erasure_compare_" + "".join(random.choices(string.ascii_lowercase, k=6))
        saved_b = ui.ImageSaveHelper.save_images(b, prefix + "_before", io.FolderType.temp, cls, compress_level=1)
        saved_a = ui.ImageSaveHelper.save_images(a, prefix + "_after", io.FolderType.temp, cls, compress_level=1)
        pairs = [
            {"before": dict(x), "after": dict(y), "label_before": label_before, "label_after": label_after}
            for x, y in zip(saved_b, saved_a)
        ]
        return io.NodeOutput(grid, ui={UI_KEY: pairs})


NODES = [BeforeAfterCompare]
