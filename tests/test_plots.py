"""The one plot helper (erasure_core/plots.py) the report and the nodes share."""

import io
import subprocess
import sys

from PIL import Image

from erasure_core.plots import line_plot, line_plot_png, steps_series, training_series


def test_png_has_the_asked_size_and_skips_points_without_a_value(tmp_path):
    png = line_plot_png(steps_series({"loss": [1.0, None, float("nan"), 0.5]}), title="t", xlabel="step",
                        size=(512, 320))
    assert Image.open(io.BytesIO(png)).size == (512, 320)
    # nothing to draw: still a plot (saying "no values"), and a different picture
    empty = line_plot_png({"loss": [(1, None)]}, title="t", xlabel="step", size=(512, 320))
    assert Image.open(io.BytesIO(empty)).size == (512, 320) and empty != png
    line_plot(tmp_path / "p.png", {"a": [(1, 2.0), (2, 1.0)]}, title="t", xlabel="x", ylabel="y", yscale="log")
    assert (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG") and len(list(tmp_path.iterdir())) == 1


def test_training_series_names_the_logged_losses_only():
    history = [{"iteration": 1, "unlearn_loss": 0.4, "retain_loss": None},
               {"iteration": 2, "unlearn_loss": 0.3, "attack_loss_last": 0.9}]
    assert training_series(history) == {"unlearn loss": [(1, 0.4), (2, 0.3)], "attack loss": [(2, 0.9)]}
    assert steps_series({"p": [3.0, 2.0]}) == {"p": [(1, 3.0), (2, 2.0)]}


def test_plots_never_touch_pyplot():
    # pyplot's global backend switch would close the figures of other packs in a ComfyUI server
    code = ("import sys; from erasure_core.plots import line_plot_png; "
            "line_plot_png({'a': [(1, 1.0), (2, 2.0)]}, title='t', xlabel='x'); "
            "print('matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
