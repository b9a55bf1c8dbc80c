"""Line plots as PNG bytes: the one plot helper of the report (written to files) and the nodes (shown as IMAGEs).

Drawn on a bare `matplotlib.figure.Figure`, not through pyplot: pyplot keeps global state, and choosing its
backend in a ComfyUI server would switch (and close the figures of) every other pack using it; a Figure of its
own renders with Agg and is safe in threads (matplotlib's advice for web servers).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from .files import atomic_path

Series = dict[str, list[tuple[float, float]]]
# The per-iteration losses of a training history (`EraseResult.history`) that are drawn, in this order.
TRAINING_CURVES = ("unlearn_loss", "retain_loss", "attack_loss_last")


def line_plot_png(series: Series, *, title: str, xlabel: str, ylabel: str = "", yscale: str | None = None,
                  markers: bool = False, xticks: dict[float, str] | None = None,
                  size: tuple[int, int] = (500, 300)) -> bytes:
    """Lines {label: [(x, y), ...]} as a PNG of `size` pixels. Points without a finite y are left out, and a
    plot with nothing left says "no values"."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] / 100, size[1] / 100), dpi=100)
    ax = fig.subplots()
    drawn = 0
    for label, points in series.items():
        points = [(x, y) for x, y in points if y is not None and math.isfinite(y)]
        if not points:
            continue
        # A series of 1-4 points (the concept-vector probe's strengths) stays visible with markers.
        marker = "o" if markers or len(points) < 5 else None
        ax.plot(*zip(*points), linewidth=1, marker=marker, label=label)
        drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if yscale and drawn:
        ax.set_yscale(yscale)
    if xticks:
        ax.set_xticks(list(xticks), list(xticks.values()))
    if 0 < drawn <= 8:
        ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def line_plot(path: str | Path, series: Series, **options) -> None:
    """`line_plot_png` written atomically to `path`."""
    png = line_plot_png(series, **options)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(png)


def steps_series(curves: dict[str, list[float | None]]) -> Series:
    """{label: values per step} -> {label: [(1, v1), (2, v2), ...]} (a probe's losses, a loss per iteration)."""
    return {label: list(enumerate(values, 1)) for label, values in curves.items()}


def training_series(history: list[dict]) -> Series:
    """The drawn losses of a training history, {"unlearn loss": [(iteration, value), ...], ...}; losses the run
    did not log (retain loss without retain prompts, attack loss for ESD) are left out."""
    series = {key.replace("_last", "").replace("_", " "): [(h["iteration"], h[key]) for h in history
                                                            if h.get(key) is not None]
              for key in TRAINING_CURVES}
    return {label: points for label, points in series.items() if points}
