"""Which ComfyUI install the node-pack tests use: the version COMFYUI_VERSION names (default 0.3.75), in
<repo>/.cache/comfyui-<version> (tests/comfy/install_comfyui.sh), or the install COMFYUI_DIR names."""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMFY_VERSION = os.environ.get("COMFYUI_VERSION", "0.3.75")
COMFY_DIR = Path(os.environ.get("COMFYUI_DIR") or REPO / ".cache" / f"comfyui-{COMFY_VERSION}")
COMFY_MAIN = COMFY_DIR / "ComfyUI" / "main.py"
COMFY_PYTHON = COMFY_DIR / "venv" / "bin" / "python"


def installed_version() -> str | None:
    """The version of the ComfyUI in COMFY_DIR (its comfyui_version.py), or None."""
    try:
        text = (COMFY_MAIN.parent / "comfyui_version.py").read_text()
    except OSError:
        return None
    match = re.search(r'__version__ = "([^"]+)"', text)
    return match.group(1) if match else None
