"""The shipped SD1.5 workflows, run through a real ComfyUI server against a random-weight SD1.5-shaped checkpoint.

The checkpoint has SD1.5's real single-file key layout and shapes (ComfyUI's CheckpointLoaderSimple detects it as
SD1.5) and random fp16 weights; it and a "robust" text encoder that fits it are written once per machine into
.cache/sd15_random/ (tests/comfy/sd15_checkpoint.py) and linked into the test server's model folders. Each
shipped workflow is converted to API format as the frontend does it; only the checkpoint / encoder file names,
image sizes, step counts, iterations and probe budgets are shrunk (same graph, same nodes) because CI runs on
2 CPU cores.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

import sd15_checkpoint
import workflow_tools
from comfy_server import assert_success

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"

# Tiny generations: 64x64 px (8x8 latents) and 2 sampling steps for every stock sampler in the graphs.
TINY = {
    "EmptyLatentImage": {"width": 64, "height": 64, "batch_size": 1},
    "KSampler": {"steps": 2},
}
# One AdvUnlearn iteration with one inner attack step (no warm-up, so the adversarial path runs), pools of one
# single-step DDIM trajectory, one retain prompt, at 64 px (the shipped workflows work at the native 512 px).
TINY_ERASE = {
    "RobustErasureErase": {"iterations": 1, "warmup_iterations": 0, "attack_steps": 1, "resolution": 64,
                           "options": "num_ddim_steps=1, concept_pool_size=1, retain_pool_size=1, retain_batch=1"},
}
# UnlearnDiffAtk at one timestep with one step; the report over one prompt, one seed and one retain prompt.
TINY_PROBE = {
    "RobustErasureProbe": {"steps": 1, "options": "timesteps=500", "generation_steps": 1, "resolution": 64},
    "RobustErasureReport": {"prompts": workflow_tools.NUDITY_PROMPT, "seeds": "0", "retain_prompts": "a photo of a dog",
                            "probes": "unlearndiffatk:steps_per_timestep=1:timesteps=500", "generation_steps": 1,
                            "resolution": 64},
}


@pytest.fixture(scope="module")
def sd15(comfy):
    """The random SD1.5 checkpoint and robust encoder, linked into the server's models/ folders."""
    checkpoint, encoder = sd15_checkpoint.cached_files()
    targets = {checkpoint: comfy.models / "checkpoints" / checkpoint.name, encoder: comfy.text_encoders / encoder.name}
    for source, target in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(source)
    # ComfyUI re-lists a model folder when its modification time changes: both files must now be offered.
    info = comfy.get("/object_info/CheckpointLoaderSimple")["CheckpointLoaderSimple"]
    assert checkpoint.name in info["input"]["required"]["ckpt_name"][0], info["input"]["required"]["ckpt_name"]
    info = comfy.get("/object_info/RobustErasureLoadTextEncoder")["RobustErasureLoadTextEncoder"]
    assert encoder.name in info["input"]["required"]["encoder_name"][1]["options"]
    return {"checkpoint": checkpoint.name, "encoder": encoder.name}


def shrunk_prompt(comfy, sd15, name: str, *overrides: dict) -> dict:
    """workflows/<name> in API format, on the test files, with the overrides applied per node type."""
    prompt = workflow_tools.ui_to_api(json.loads((WORKFLOWS / name).read_text()), comfy.get("/object_info"))
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            assert inputs["ckpt_name"] == workflow_tools.SD15_CHECKPOINT
            inputs["ckpt_name"] = sd15["checkpoint"]
        if node["class_type"] == "RobustErasureLoadTextEncoder":
            assert inputs["encoder_name"] == workflow_tools.SD15_ENCODER
            inputs["encoder_name"] = sd15["encoder"]
        for table in overrides:
            for key, value in table.get(node["class_type"], {}).items():
                assert key in inputs, f"{node['class_type']} has no input {key!r} in {name}"
                inputs[key] = value
    return prompt


def outputs_of(entry: dict, prompt: dict, class_type: str) -> list[dict]:
    return [v for k, v in entry["outputs"].items() if prompt[k]["class_type"] == class_type]


def saved_images(comfy, entry: dict, prompt: dict) -> list[Path]:
    """The files SaveImage nodes wrote (each must exist)."""
    paths = []
    for out in outputs_of(entry, prompt, "SaveImage"):
        for image in out["images"]:
            assert image["type"] == "output"
            path = comfy.output / image["subfolder"] / image["filename"]
            assert path.is_file(), path
            paths.append(path)
    return paths


def assert_compare_grid(path: Path, size: int = 64):
    """A Before / After Compare grid of one pair at `size` px: a label row, then before | 4 px gap | after; the two
    halves differ (the robust / erased CLIP really conditioned the second sampler)."""
    with Image.open(path) as im:
        grid = im.convert("RGB")
    assert grid.size[0] == 2 * size + 4 and grid.size[1] > size, grid.size
    top = grid.size[1] - size
    before = grid.crop((0, top, size, top + size))
    after = grid.crop((size + 4, top, 2 * size + 4, top + size))
    assert before.tobytes() != after.tobytes(), f"{path.name}: before and after are identical"


def test_sd15_checkpoint_has_the_real_layout():
    from safetensors import safe_open

    checkpoint, _ = sd15_checkpoint.cached_files()
    with safe_open(str(checkpoint), framework="pt") as f:
        keys = list(f.keys())
        embedding = f.get_slice("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight")
        assert embedding.get_shape() == [49408, 768]
        assert f.get_slice("model.diffusion_model.input_blocks.0.0.weight").get_shape() == [320, 4, 3, 3]
    parts = {p: sum(k.startswith(p) for k in keys)
             for p in ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model.")}
    assert parts == {"model.diffusion_model.": 686, "first_stage_model.": 248,
                     "cond_stage_model.transformer.text_model.": 196}, parts


def test_sd15_swap_robust_encoder_runs(comfy, sd15):
    name = "sd15_swap_robust_encoder.json"
    prompt = shrunk_prompt(comfy, sd15, name, TINY)
    entry = comfy.run(prompt, timeout=600)
    assert_success(entry)
    compare = outputs_of(entry, prompt, "RobustErasureCompare")
    assert compare and len(compare[0]["robust_erasure_compare"]) == 1
    saved = saved_images(comfy, entry, prompt)
    assert len(saved) == 1
    assert_compare_grid(saved[0])


def test_sd15_erase_nudity_runs(comfy, sd15):
    name = "sd15_erase_nudity.json"
    prompt = shrunk_prompt(comfy, sd15, name, TINY, TINY_ERASE)
    folder = comfy.text_encoders
    before = set(folder.iterdir())
    entry = comfy.run(prompt, timeout=1800)
    assert_success(entry)
    written = sorted(p.name for p in set(folder.iterdir()) - before)
    erase = outputs_of(entry, prompt, "RobustErasureErase")[0]["text"][0]
    save = outputs_of(entry, prompt, "RobustErasureSaveTextEncoder")[0]["text"][0]
    assert erase.startswith("nudity_advunlearn") and save.startswith("nudity_advunlearn_copy")
    assert sorted([erase, save]) == written
    # The saved file is an SD1.5-sized encoder that records what it erased.
    from erasure_core.encoders import read_encoder

    saved = read_encoder(folder / save)
    assert saved.state_dict["text_model.embeddings.token_embedding.weight"].shape == (49408, 768)
    assert "nudity" in json.dumps(saved.metadata)
    saved_paths = saved_images(comfy, entry, prompt)
    assert len(saved_paths) == 1
    assert_compare_grid(saved_paths[0])
    for path in (folder / erase, folder / save):
        path.unlink()  # keep the shared test server's encoder list as the other tests expect it


def test_sd15_probe_and_report_runs(comfy, sd15):
    name = "sd15_probe_and_report.json"
    prompt = shrunk_prompt(comfy, sd15, name, TINY, TINY_PROBE)
    entry = comfy.run(prompt, timeout=1800)
    assert_success(entry)
    judged = outputs_of(entry, prompt, "RobustErasureJudge")
    assert judged and judged[0]["text"][0].startswith("nudenet: concept shown in ") and judged[0]["images"]
    report = [k for k, v in prompt.items() if v["class_type"] == "RobustErasureReport"][0]
    text = entry["outputs"][report]["text"][0]
    assert text.startswith("report: output/")
    folder = comfy.output / text[len("report: output/"):].rsplit("/report.html", 1)[0]
    assert (folder / "report.html").is_file() and (folder / "report.json").is_file()
    results = json.loads((folder / "report.json").read_text())
    assert "erased" in json.dumps(results) and "unlearndiffatk" in json.dumps(results)
    saved = saved_images(comfy, entry, prompt)
    assert len(saved) == 2  # the judged image and the report summary
    with Image.open(saved[0] if "probe" in saved[0].name else saved[1]) as im:
        assert im.size == (64, 64)
    shutil.rmtree(folder)
