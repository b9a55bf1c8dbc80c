"""Small plots as ComfyUI IMAGEs (matplotlib, Agg backend, no display)."""

from __future__ import annotations

import io as _io

import torch


def curves_image(curves: dict[str, list[float]], title: str, xlabel: str = "step", width: int = 512,
                 height: int = 320) -> torch.Tensor:
    """IMAGE [1, H, W, 3] with one line per named curve (curves with no finite values are skipped)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    fig, ax = plt.subplots(figsize=(width / 100, height / 100), dpi=100)
    try:
        drawn = 0
        for name, values in curves.items():
            ys = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
            if ys.size and np.isfinite(ys).any():
                ax.plot(np.arange(1, ys.size + 1), ys, label=name, linewidth=1.2)
                drawn += 1
        if not drawn:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if drawn > 1:
            ax.legend(fontsize=8)
        fig.tight_layout()
        buf = _io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    buf.seek(0)
    rgb = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(rgb)[None]
