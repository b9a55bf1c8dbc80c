"""A real ComfyUI server for the node-pack tests (installed by tests/comfy/install_comfyui.sh).

The server is the version COMFYUI_VERSION names (0.3.75 by default, or 0.28.2), from
<repo>/.cache/comfyui-<version>, or the install COMFYUI_DIR names (its version must match COMFYUI_VERSION when
both are set). `bash scripts/test.sh` runs these tests once per version.

The server runs from the install's own venv on a free 127.0.0.1 port with --cpu, in a throw-away base directory
(models/, custom_nodes/, input/, output/, temp/, user/), with this repository and tests/comfy/testkit symlinked
into its custom_nodes. Tests talk to it over HTTP only. Every test here is marked `comfy` and is skipped, with
the reason, when the install is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from comfy_install import COMFY_DIR, COMFY_MAIN, COMFY_PYTHON, COMFY_VERSION, REPO, installed_version
from comfy_server import ComfyServer, free_port

TESTKIT = Path(__file__).resolve().parent / "testkit"
PACK_NAME = "robust-erasure"
START_TIMEOUT = float(os.environ.get("COMFY_START_TIMEOUT", "180"))


def _installed() -> str | None:
    if not (COMFY_DIR / ".installed").is_file() or not COMFY_MAIN.is_file() or not COMFY_PYTHON.is_file():
        return (f"ComfyUI {COMFY_VERSION} is not installed in {COMFY_DIR}: run "
                f"`COMFYUI_VERSION={COMFY_VERSION} bash tests/comfy/install_comfyui.sh`")
    return None


def pytest_report_header(config):
    return f"ComfyUI: {COMFY_VERSION} in {COMFY_DIR}"


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).resolve().parent
    reason = _installed()
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.comfy)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


def _prepare_models(models: Path):
    """Files the tests need, written before the server starts (ComfyUI lists folders at start-up)."""
    sys.path.insert(0, str(REPO))
    import torch
    from safetensors.torch import save_file

    from erasure_core.demo import architecture
    from erasure_core.encoders import save_encoder
    from erasure_core.models import build_tiny_model

    enc = models / "text_encoders"
    enc.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    save_encoder(architecture.build_text_encoder(), enc / "demo_shaped_encoder.safetensors",
                 metadata={"concepts": ["test"], "method": "random"})
    save_encoder(build_tiny_model(seed=2).text_encoder, enc / "tiny_width32_encoder.safetensors")
    (enc / "garbage.safetensors").write_bytes(os.urandom(4096))
    save_file({"weight": torch.zeros(3)}, str(enc / "not_an_encoder.safetensors"))
    for sub in ("checkpoints", "vae", "embeddings"):
        (models / sub).mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="session")
def comfy(tmp_path_factory) -> ComfyServer:
    reason = _installed()
    if reason:
        pytest.skip(reason)
    found = installed_version()
    if "COMFYUI_VERSION" in os.environ and found != COMFY_VERSION:
        pytest.fail(f"COMFYUI_VERSION={COMFY_VERSION} but {COMFY_DIR} holds ComfyUI {found}")
    base = tmp_path_factory.mktemp("comfy_base")
    nodes_dir = base / "custom_nodes"
    nodes_dir.mkdir()
    (nodes_dir / PACK_NAME).symlink_to(REPO, target_is_directory=True)
    (nodes_dir / "robust_erasure_testkit").symlink_to(TESTKIT, target_is_directory=True)
    _prepare_models(base / "models")
    port = free_port()
    log = base / "comfyui.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    cmd = [str(COMFY_PYTHON), str(COMFY_MAIN), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--disable-auto-launch", "--base-directory", str(base), "--preview-method", "none"]
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, cwd=str(COMFY_MAIN.parent), stdout=out, stderr=subprocess.STDOUT, env=env)
    server = ComfyServer(base, port, process, log)
    started = time.monotonic()
    try:
        while not server.alive():
            if process.poll() is not None:
                pytest.fail(f"ComfyUI exited with {process.returncode} during start-up:\n{server.log_tail()}")
            if time.monotonic() - started > START_TIMEOUT:
                pytest.fail(f"ComfyUI did not answer /system_stats in {START_TIMEOUT} s:\n{server.log_tail()}")
            time.sleep(0.5)
        server.start_seconds = time.monotonic() - started
        server.version = found
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
