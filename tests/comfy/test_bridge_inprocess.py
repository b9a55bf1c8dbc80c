"""The pack's ComfyUI bridge with ComfyUI's objects in hand (tests/comfy/inprocess_checks.py, run by the ComfyUI
install's own Python, no server): the UNet adaptor against diffusers, the CLIP's effective weights when the
patches are not written into the weights, and the pack's pyproject.toml as ComfyUI reads it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from comfy_install import COMFY_MAIN, COMFY_PYTHON, REPO, installed_version

SCRIPT = Path(__file__).resolve().parent / "inprocess_checks.py"


def run_check(name: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(COMFY_PYTHON), str(SCRIPT), str(COMFY_MAIN.parent), str(REPO), name],
                          capture_output=True, text=True, timeout=600, env=env, cwd=str(COMFY_MAIN.parent))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_unet_adaptor_matches_diffusers_and_builds_no_second_unet():
    found = run_check("unet")
    # Same weights, two implementations (ComfyUI's ldm UNet, diffusers'), fp32 on a CPU: outputs and the
    # conditioning's gradient agree to float rounding (measured: 1.7e-6 on outputs of scale 4.4).
    assert found["output_max_diff"] <= 1e-4 * max(1.0, found["output_scale"]), found
    assert found["grad_max_diff"] <= 1e-4 * max(1.0, found["grad_scale"]), found
    assert found["checkpointed_grad_max_diff"] <= 1e-6 * max(1.0, found["grad_scale"]), found
    # Weights made under inference mode, as ComfyUI's loaders make them, still let the gradient through; the UNet
    # stays frozen.
    assert found["inference_params_before"] > 0 and found["inference_params_after"] == 0, found
    assert not found["unet_requires_grad"] and not found["unet_grads"], found
    # The nodes' SDModel runs on ComfyUI's module: no diffusers UNet constructed, no UNet weights of its own.
    assert found["unets_built"] == 0 and found["sdmodel_unet"] == "ComfyUNet", found
    assert found["sdmodel_unet_is_comfys"] and found["sdmodel_unet_params"] == 0, found


def test_clip_weights_read_from_patches_not_from_loaded_weights():
    found = run_check("weights")
    if installed_version() == "0.28.2":
        # Why the dynamic case is constructed: ComfyUI gives a CPU device the legacy patcher even when asked for
        # ModelPatcherDynamic (its __new__ reroutes CPU devices), so a CPU cannot run the real one.
        assert found["dynamic_patcher_on_cpu"] == "ModelPatcher", found
    # Legacy patcher (what CPUs get): both readings give the patched weights, bit for bit, on every key; reading a
    # clone leaves the original CLIP's weights at their base values.
    assert found["legacy_new_is_patched"] and found["legacy_old_is_patched"], found
    assert found["legacy_new_equals_old_everywhere"] and found["original_untouched"], found
    # Patches applied in the forward pass, not written in: loading and reading the state dict gives the BASE
    # weights (the silent bug), the pack's reading the patched ones.
    assert found["dynamic_old_is_base"] and not found["dynamic_old_is_patched"], found
    assert found["dynamic_new_is_patched"], found


def test_pyproject_reads_as_the_comfy_registry_requires():
    found = run_check("pyproject")
    # Required by the registry spec: name, version, Repository URL, PublisherId; and the web folder ComfyUI serves.
    assert found["name"] == "robust-erasure" and found["version"].count(".") == 2, found
    assert found["repository"].startswith("https://github.com/") and found["publisher"], found
    assert found["web"] == "web" and found["requires_comfyui"] == ">=0.3.75" and found["os"] == ["OS Independent"]
