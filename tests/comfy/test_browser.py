"""The real ComfyUI frontend in headless Debian chromium (tests/browser_comfy/run.mjs, playwright-core).

Loads every shipped workflow from the pack's templates, checks the nodes rendered and the slider widget exists,
runs the demo workflow (CI-sized with --fast) and saves screenshots to out/browser_comfy/<ComfyUI version>/ (each
ComfyUI version brings its own frontend: 1.32.9 with 0.3.75, 1.45.21 with 0.28.2).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT_DIR = REPO / "tests" / "browser_comfy"
OUT = REPO / "out" / "browser_comfy"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)"
    if shutil.which("node") is None:
        return "node is not installed"
    if not (SCRIPT_DIR / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed: (cd tests/browser_comfy && npm ci)"
    return None


@pytest.mark.browser
def test_frontend_loads_templates_and_runs_demo(comfy):
    reason = _missing()
    if reason:
        pytest.skip(reason)
    out = OUT / comfy.version
    cmd = ["node", str(SCRIPT_DIR / "run.mjs"), "--url", comfy.url, "--out", str(out),
           "--run", "demo_erase_and_probe", "--fast", "--timeout", "900"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    result = json.loads((out / "result.json").read_text())
    assert proc.returncode == 0 and not result["errors"], json.dumps(result, indent=1)[:4000] + proc.stderr[-2000:]
    assert result["templates"] == ["demo_erase_and_probe"] or "demo_erase_and_probe" in result["templates"]
    for name, info in result["loaded"].items():
        assert info["count"] == info["expected"] and not info["missing"] and not info["flagged"], (name, info)
    demo = result["loaded"]["demo_erase_and_probe"]
    assert demo["slider"] == [True] and demo["chart"] == [True]
    assert sorted(result["extensions"]) == ["robust_erasure.compare_slider", "robust_erasure.loss_chart"]
    assert result["ran"]["status"] == "success"
    assert (out / "demo_erase_and_probe.ran.png").is_file()
