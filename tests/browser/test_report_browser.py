"""report.html opens in headless Chromium with every image loaded (the page counts broken images itself).

Needs Debian's `chromium` (`apt-get install -y chromium`); skipped with that reason when it is absent.
Set REPORT_SCREENSHOT=/path/shot.png to keep the screenshot for a human to look at.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from report_fixtures import small_evaluation  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install -y chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000"]


def _chromium(*args, cwd):
    return subprocess.run([CHROMIUM, *FLAGS, *args], capture_output=True, text=True, timeout=90, cwd=cwd)


def test_report_opens_with_every_image(tmp_path):
    out = tmp_path / "report"
    small_evaluation(out_dir=out)
    page = (out / "report.html").resolve()
    dom = _chromium("--dump-dom", page.as_uri(), cwd=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout).group(0)
    images = int(re.search(r'data-images="(\d+)"', body).group(1))
    broken = int(re.search(r'data-broken-images="(\d+)"', body).group(1))
    # images: 2 seeds x 2 encoders x (plain + 3 probes), 2 x 2 retain, 2 x 3 loss plots, 1 robustness curve plot
    assert images == 2 * 2 * 4 + 2 * 2 + 2 * 3 + 1 and broken == 0
    assert "27 images, 0 missing" in dom.stdout

    shot = tmp_path / "report.png"
    result = _chromium(f"--screenshot={shot}", "--window-size=1500,2600", page.as_uri(), cwd=tmp_path)
    assert result.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000, result.stderr[-2000:]
    if os.environ.get("REPORT_SCREENSHOT"):
        shutil.copy(shot, os.environ["REPORT_SCREENSHOT"])
