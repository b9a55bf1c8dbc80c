"""Peak resident memory (RSS) of one SD1.5-shaped erase at 64 px: through the Robust Erase node in a real
ComfyUI server, and through the library path the CLI runs (`load_model(file)` + `erase_to_file`), same settings.

    python tests/comfy/measure_erase_memory.py node [--pack DIR]   (DIR: a checkout of the pack; default: this repo)
    python tests/comfy/measure_erase_memory.py cli

Settings: the random SD1.5-shaped checkpoint (tests/comfy/sd15_checkpoint.py), concept "nudity", preset nudity,
AdvUnlearn, 1 iteration, 1 attack step, no warm-up, pools of one single-step trajectory, one retain prompt, 64 px
(the SD1.5 workflow test's TINY_ERASE). The server runs --cpu from the install COMFYUI_VERSION names. Peak RSS
is the process's VmHWM (Linux), read when the erase has finished; for the node also after start-up, before the
prompt. Prints one JSON line. Use OMP_WAIT_POLICY=PASSIVE on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]

import sd15_checkpoint  # noqa: E402
from comfy_install import COMFY_MAIN, COMFY_PYTHON, REPO, installed_version  # noqa: E402
from comfy_server import ComfyServer, assert_success, free_port  # noqa: E402

CONCEPTS = ["nudity"]
OVERRIDES = {"method": "advunlearn", "iterations": 1, "seed": 0, "warmup_iterations": 0, "attack_steps": 1,
             "num_ddim_steps": 1, "concept_pool_size": 1, "retain_pool_size": 1, "retain_batch": 1}
RESOLUTION = 64


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def node(pack: Path) -> dict:
    checkpoint, _ = sd15_checkpoint.cached_files()
    with tempfile.TemporaryDirectory(prefix="erase_memory_") as tmp:
        base = Path(tmp)
        (base / "custom_nodes").mkdir()
        (base / "custom_nodes" / "robust-erasure").symlink_to(pack, target_is_directory=True)
        (base / "models" / "checkpoints").mkdir(parents=True)
        (base / "models" / "text_encoders").mkdir(parents=True)
        (base / "models" / "checkpoints" / checkpoint.name).symlink_to(checkpoint)
        port, log = free_port(), base / "comfyui.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        env.pop("PYTHONPATH", None)
        cmd = [str(COMFY_PYTHON), str(COMFY_MAIN), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--disable-auto-launch", "--base-directory", str(base), "--preview-method", "none"]
        with open(log, "wb") as out:
            process = subprocess.Popen(cmd, cwd=str(COMFY_MAIN.parent), stdout=out, stderr=subprocess.STDOUT, env=env)
        server = ComfyServer(base, port, process, log)
        try:
            while not server.alive():
                if process.poll() is not None:
                    raise RuntimeError(server.log_tail())
                time.sleep(0.5)
            idle = vm_hwm_mb(process.pid)
            options = ", ".join(f"{k}={v}" for k, v in OVERRIDES.items()
                                if k not in ("method", "iterations", "seed", "warmup_iterations", "attack_steps"))
            graph = {
                "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint.name}},
                "erase": {"class_type": "RobustErasureErase", "inputs": {
                    "model": ["ckpt", 0], "clip": ["ckpt", 1], "concepts": "\n".join(CONCEPTS), "preset": "nudity",
                    "method": OVERRIDES["method"], "iterations": OVERRIDES["iterations"], "seed": OVERRIDES["seed"],
                    "resume": False, "file_name": "memory_check", "attack_steps": OVERRIDES["attack_steps"],
                    "warmup_iterations": OVERRIDES["warmup_iterations"], "options": options,
                    "resolution": RESOLUTION}},
            }
            started = time.monotonic()
            assert_success(server.run(graph, timeout=3600))
            seconds = time.monotonic() - started
            return {"path": "node", "pack": str(pack), "comfyui": installed_version(), "idle_peak_rss_mb": round(idle),
                    "peak_rss_mb": round(vm_hwm_mb(process.pid)), "seconds": round(seconds, 1)}
        finally:
            process.terminate()
            process.wait(timeout=30)


def cli() -> dict:
    checkpoint, _ = sd15_checkpoint.cached_files()
    code = f"""
import json, resource, sys, tempfile, time, torch
sys.path.insert(0, {str(REPO)!r})
from erasure_core.jobs import erase_to_file
from erasure_core.loading import load_model
from erasure_core.training import EraseConfig
started = time.monotonic()
model = load_model({str(checkpoint)!r}, device="cpu").at_resolution({RESOLUTION})
config = EraseConfig.from_preset("nudity", **{OVERRIDES!r})
with tempfile.TemporaryDirectory() as tmp:
    erase_to_file(model, {CONCEPTS!r}, config, tmp + "/out.safetensors")
print(json.dumps({{"seconds": round(time.monotonic() - started, 1)}}))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-4000:])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"path": "cli", "peak_rss_mb": round(peak), **json.loads(proc.stdout.strip().splitlines()[-1])}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", choices=["node", "cli"])
    parser.add_argument("--pack", type=Path, default=REPO)
    args = parser.parse_args()
    print(json.dumps(node(args.pack.resolve()) if args.path == "node" else cli()))
