"""ComfyUI IMAGE tensors [N, H, W, C] <-> `erasure_core` image batches [N, 3, H, W] and PNG bytes (the plots)."""

from __future__ import annotations

import torch

PLOT_SIZE = (512, 320)  # pixels of the nodes' loss plots


def image_to_nchw(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [N, H, W, C] in [0, 1] -> erasure_core images [N, 3, H, W] float32."""
    if image.ndim == 3:
        image = image[None]
    x = image[..., :3].permute(0, 3, 1, 2).float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


def nchw_to_image(images: torch.Tensor) -> torch.Tensor:
    """erasure_core images [N, 3, H, W] -> ComfyUI IMAGE [N, H, W, 3] float32 in [0, 1]."""
    return images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).contiguous().cpu()


def png_to_image(png: bytes) -> torch.Tensor:
    """A PNG (e.g. `erasure_core.plots.line_plot_png`) -> ComfyUI IMAGE [1, H, W, 3] float32 in [0, 1]."""
    import io

    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(rgb)[None]
