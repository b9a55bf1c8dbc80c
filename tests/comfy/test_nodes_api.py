"""The node pack through a real ComfyUI server's HTTP API (POST /prompt, /history, /object_info)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from comfy_server import assert_success, execution_error

PACK_NODES = {
    "RobustErasureLoadDemoModel",
    "RobustErasureLoadTextEncoder",
    "RobustErasureSaveTextEncoder",
    "RobustErasureCompare",
}


def fingerprint(comfy, name: str) -> tuple[str, torch.Tensor]:
    path = Path(comfy.output) / f"{name}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        sha = f.metadata()["weights_sha"]
    return sha, load_file(str(path))["cond"]


def demo_graph(extra: dict) -> dict:
    return {"demo": {"class_type": "RobustErasureLoadDemoModel", "inputs": {}}, **extra}


def test_server_lists_pack_nodes_and_serves_web(comfy):
    info = comfy.get("/object_info")
    missing = PACK_NODES - set(info)
    assert not missing, f"nodes missing from /object_info: {missing}"
    assert info["RobustErasureLoadTextEncoder"]["category"].startswith("Robust Erasure")
    assert "demo_shaped_encoder.safetensors" in info["RobustErasureLoadTextEncoder"]["input"]["required"][
        "encoder_name"][1]["options"]
    extensions = comfy.get("/extensions")
    assert any(e.endswith("/compare_slider.js") for e in extensions), extensions
    js = [e for e in extensions if e.endswith("/compare_slider.js")][0]
    status, body = comfy.request("GET", js)
    assert status == 200 and b"registerExtension" in body


def test_demo_model_generates_with_stock_nodes(comfy):
    graph = demo_graph({
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["demo", 1], "text": "a red circle"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["demo", 1], "text": ""}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 2}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["demo", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
            "seed": 1, "steps": 3, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["demo", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "demo_gen"}},
    })
    entry = comfy.run(graph)
    assert_success(entry)
    images = entry["outputs"]["save"]["images"]
    assert len(images) == 2
    from PIL import Image

    with Image.open(Path(comfy.output) / images[0]["subfolder"] / images[0]["filename"]) as im:
        assert im.size == (64, 64)  # the demo VAE is 4x: 16x16 latents -> 64x64 px


def test_load_robust_encoder_leaves_original_clip_bit_identical(comfy):
    before = demo_graph({"fp": {"class_type": "RobustErasureTestFingerprint",
                                "inputs": {"clip": ["demo", 1], "text": "a red circle", "name": "orig_before"}}})
    assert_success(comfy.run(before))
    graph = demo_graph({
        "load": {"class_type": "RobustErasureLoadTextEncoder",
                 "inputs": {"clip": ["demo", 1], "encoder_name": "demo_shaped_encoder.safetensors"}},
        "fp_robust": {"class_type": "RobustErasureTestFingerprint",
                      "inputs": {"clip": ["load", 0], "text": "a red circle", "name": "robust"}},
        "fp_orig": {"class_type": "RobustErasureTestFingerprint",
                    "inputs": {"clip": ["demo", 1], "text": "a red circle", "name": "orig_after",
                               "after": ["fp_robust", 0]}},
    })
    entry = comfy.run(graph)
    assert_success(entry)
    sha_before, cond_before = fingerprint(comfy, "orig_before")
    sha_after, cond_after = fingerprint(comfy, "orig_after")
    sha_robust, cond_robust = fingerprint(comfy, "robust")
    assert sha_before == sha_after
    assert torch.equal(cond_before, cond_after)
    assert sha_robust != sha_before
    assert not torch.allclose(cond_robust, cond_before)
    # The robust CLIP holds exactly the file's weights (as ComfyUI stores them).
    file_state = load_file(str(comfy.text_encoders / "demo_shaped_encoder.safetensors"))
    import hashlib

    digest = hashlib.sha256()
    for key in sorted(file_state):
        digest.update(key.encode())
        digest.update(file_state[key].float().contiguous().numpy().tobytes())
    assert digest.hexdigest() == sha_robust


def _error_of(comfy, graph) -> str:
    entry = comfy.run(graph)
    err = execution_error(entry)
    assert err is not None, "the graph was expected to fail"
    assert comfy.alive()
    return f"{err['node_type']}: {err['exception_type']}: {err['exception_message']}"


@pytest.mark.parametrize(
    "encoder, expected",
    [
        ("tiny_width32_encoder.safetensors", "width 32"),
        ("garbage.safetensors", "safetensors"),
        ("not_an_encoder.safetensors", "not a CLIP text encoder"),
    ],
)
def test_load_robust_encoder_refuses_bad_files(comfy, encoder, expected):
    message = _error_of(comfy, demo_graph({
        "load": {"class_type": "RobustErasureLoadTextEncoder", "inputs": {"clip": ["demo", 1], "encoder_name": encoder}},
        "fp": {"class_type": "RobustErasureTestFingerprint", "inputs": {"clip": ["load", 0], "text": "x", "name": "x"}},
    }))
    assert "Load Robust Text Encoder" in message and expected in message, message


def test_load_robust_encoder_refuses_sdxl_clip(comfy):
    message = _error_of(comfy, {
        "sdxl": {"class_type": "RobustErasureTestSDXLClip", "inputs": {}},
        "load": {"class_type": "RobustErasureLoadTextEncoder",
                 "inputs": {"clip": ["sdxl", 0], "encoder_name": "demo_shaped_encoder.safetensors"}},
        "fp": {"class_type": "RobustErasureTestFingerprint", "inputs": {"clip": ["load", 0], "text": "x", "name": "x"}},
    })
    assert "SDXLClipModel" in message and "Stable Diffusion 1.x" in message, message



def test_encoder_name_outside_the_folder_is_refused(comfy):
    """ComfyUI 0.3.75 does not validate V3 combo values at queue time, so the node itself refuses names that
    are not files listed in models/text_encoders (a validation error would be fine too)."""
    graph = demo_graph({
        "load": {"class_type": "RobustErasureLoadTextEncoder",
                 "inputs": {"clip": ["demo", 1], "encoder_name": "../../../../etc/passwd"}},
        "fp": {"class_type": "RobustErasureTestFingerprint", "inputs": {"clip": ["load", 0], "text": "x", "name": "x"}},
    })
    status, body = comfy.queue(graph)
    if status == 400:
        assert "load" in body["node_errors"], body
    else:
        err = execution_error(comfy.wait(body["prompt_id"]))
        assert err and "is not a file in ComfyUI's models/text_encoders folder" in err["exception_message"], err
    assert comfy.alive()


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "sub/dir", "..", "   "])
def test_save_refuses_path_traversal(comfy, name):
    message = _error_of(comfy, demo_graph({
        "save": {"class_type": "RobustErasureSaveTextEncoder",
                 "inputs": {"clip": ["demo", 1], "file_name": name, "overwrite": False}},
    }))
    assert "Save Robust Text Encoder" in message or "file name" in message, message
    assert not (comfy.models / "escape.safetensors").exists()
    assert not Path("/tmp/abs.safetensors").exists()


def test_save_then_reload_round_trips(comfy):
    graph = demo_graph({
        "load": {"class_type": "RobustErasureLoadTextEncoder",
                 "inputs": {"clip": ["demo", 1], "encoder_name": "demo_shaped_encoder.safetensors"}},
        "save": {"class_type": "RobustErasureSaveTextEncoder",
                 "inputs": {"clip": ["load", 0], "file_name": "round trip", "overwrite": True}},
    })
    entry = comfy.run(graph)
    assert_success(entry)
    written = comfy.text_encoders / "round_trip.safetensors"
    assert written.is_file()
    saved, original = load_file(str(written)), load_file(str(comfy.text_encoders / "demo_shaped_encoder.safetensors"))
    assert set(saved) == set(original)
    assert all(torch.equal(saved[k], original[k].to(saved[k].dtype)) for k in saved)


def test_compare_grid_and_slider_payload(comfy):
    graph = demo_graph({
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["demo", 1], "text": "a circle"}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 2}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["demo", 0], "positive": ["pos", 0], "negative": ["pos", 0], "latent_image": ["latent", 0],
            "seed": 3, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["demo", 2]}},
        "inv": {"class_type": "ImageInvert", "inputs": {"image": ["decode", 0]}},
        "cmp": {"class_type": "RobustErasureCompare",
                "inputs": {"before": ["decode", 0], "after": ["inv", 0], "label_before": "orig", "label_after": "inv"}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["cmp", 0], "filename_prefix": "cmp"}},
    })
    entry = comfy.run(graph)
    assert_success(entry)
    pairs = entry["outputs"]["cmp"]["robust_erasure_compare"]
    assert len(pairs) == 2 and pairs[0]["label_after"] == "inv"
    from PIL import Image

    img = entry["outputs"]["save"]["images"][0]
    with Image.open(Path(comfy.output) / img["subfolder"] / img["filename"]) as im:
        w, h = im.size
    assert w == 2 * 64 + 4 and h > 2 * 64


def erase_graph(concepts="circle", iterations=3, resume=False, name="erased_circle", method="advunlearn",
                extra_options=""):
    options = "num_ddim_steps=2, concept_pool_size=1, retain_pool_size=1, retain_batch=1" + extra_options
    return demo_graph({
        "erase": {"class_type": "RobustErasureErase", "inputs": {
            "model": ["demo", 0], "clip": ["demo", 1], "concepts": concepts, "preset": "object",
            "method": method, "iterations": iterations, "seed": 0, "resume": resume, "file_name": name,
            "attack_steps": 1, "warmup_iterations": 1, "options": options}},
        "fp_erased": {"class_type": "RobustErasureTestFingerprint",
                      "inputs": {"clip": ["erase", 0], "text": "a red circle", "name": f"{name}_fp"}},
        "fp_orig": {"class_type": "RobustErasureTestFingerprint",
                    "inputs": {"clip": ["demo", 1], "text": "a red circle", "name": f"{name}_orig",
                               "after": ["fp_erased", 0]}},
    })


def test_robust_erase_runs_saves_and_leaves_original_identical(comfy):
    before = demo_graph({"fp": {"class_type": "RobustErasureTestFingerprint",
                                "inputs": {"clip": ["demo", 1], "text": "a red circle", "name": "erase_before"}}})
    assert_success(comfy.run(before))
    entry = comfy.run(erase_graph())
    assert_success(entry)
    assert entry["outputs"]["erase"]["text"] == ["erased_circle.safetensors"]
    written = comfy.text_encoders / "erased_circle.safetensors"
    assert written.is_file()
    sha0, cond0 = fingerprint(comfy, "erase_before")
    sha1, cond1 = fingerprint(comfy, "erased_circle_orig")
    sha_e, cond_e = fingerprint(comfy, "erased_circle_fp")
    assert sha0 == sha1 and torch.equal(cond0, cond1)
    assert sha_e != sha0
    with safe_open(str(written), framework="pt") as f:
        meta = f.metadata()
    assert "circle" in meta["robust_erasure"]


def test_robust_erase_refuses_empty_concept(comfy):
    message = _error_of(comfy, erase_graph(concepts="  \n ", name="empty"))
    assert "at least one concept" in message, message


def test_robust_erase_refuses_a_resolution_the_model_cannot_take(comfy):
    graph = erase_graph(name="odd_size")
    graph["erase"]["inputs"]["resolution"] = 40  # the demo's latents need multiples of 16 px
    message = _error_of(comfy, graph)
    assert "Robust Erase" in message and "40 px" in message and "multiple of 16" in message, message


def test_robust_erase_cancel_keeps_checkpoint_and_resume_finishes(comfy):
    import time

    # A checkpoint after every iteration: its first appearance proves the training loop is running, so the
    # Cancel below lands inside it however fast or slow this machine is.
    every = ", checkpoint_every=1"
    graph = erase_graph(iterations=40, name="cancel_me", extra_options=every)
    status, body = comfy.queue(graph)
    assert status == 200, body
    prompt_id = body["prompt_id"]
    checkpoints = comfy.output / "robust_erasure" / "checkpoints"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(checkpoints.glob("circle_advunlearn_*.safetensors")):
        time.sleep(0.05)
    comfy.request("POST", "/interrupt", {})
    entry = comfy.wait(prompt_id, timeout=300)
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, entry["status"]
    saved = sorted(checkpoints.glob("circle_advunlearn_*.safetensors"))
    assert saved, f"no checkpoint in {checkpoints}: {list(checkpoints.glob('*'))}"
    with safe_open(str(saved[0]), framework="pt") as f:
        step = int(f.metadata()["step"])
    assert 1 <= step < 40
    assert comfy.alive()
    # Resume with the same settings (a different setting is another run, with another checkpoint).
    resumed = erase_graph(iterations=40, name="cancel_me", resume=True, extra_options=every)
    entry = comfy.run(resumed, timeout=600)
    assert_success(entry)
    assert not saved[0].exists(), "the checkpoint of a finished run is removed"
    assert (comfy.text_encoders / "cancel_me.safetensors").is_file()


def test_saved_encoder_loads_in_stock_cliploader_with_same_conditioning(comfy):
    """An SD1.5-shaped (ViT-L/14, random) encoder: stock CLIPLoader -> Save Robust Text Encoder -> stock
    CLIPLoader again gives bit-identical conditioning."""
    from transformers import CLIPTextConfig, CLIPTextModel

    sys_path_repo()
    from erasure_core.encoders import save_encoder
    from erasure_core.layouts import sd1_text_config

    source = comfy.text_encoders / "sd15_shaped_random.safetensors"
    if not source.exists():
        torch.manual_seed(0)
        config = CLIPTextConfig(**sd1_text_config())
        save_encoder(CLIPTextModel(config), source)
    save = {
        "load": {"class_type": "CLIPLoader", "inputs": {"clip_name": source.name, "type": "stable_diffusion"}},
        "save": {"class_type": "RobustErasureSaveTextEncoder",
                 "inputs": {"clip": ["load", 0], "file_name": "sd15_resaved", "overwrite": True}},
        "fp": {"class_type": "RobustErasureTestFingerprint",
               "inputs": {"clip": ["load", 0], "text": "a photo of a cat", "name": "sd15_source"}},
    }
    assert_success(comfy.run(save))
    reload = {
        "load": {"class_type": "CLIPLoader", "inputs": {"clip_name": "sd15_resaved.safetensors", "type": "stable_diffusion"}},
        "fp": {"class_type": "RobustErasureTestFingerprint",
               "inputs": {"clip": ["load", 0], "text": "a photo of a cat", "name": "sd15_resaved"}},
    }
    assert_success(comfy.run(reload))
    sha_a, cond_a = fingerprint(comfy, "sd15_source")
    sha_b, cond_b = fingerprint(comfy, "sd15_resaved")
    assert cond_a.shape == (1, 77, 768)
    assert torch.isfinite(cond_b).all()
    assert sha_a == sha_b and torch.equal(cond_a, cond_b)


def sys_path_repo():
    import sys

    repo = str(Path(__file__).resolve().parents[2])
    if repo not in sys.path:
        sys.path.insert(0, repo)


def test_probe_judge_and_report_nodes_on_the_demo(comfy):
    graph = demo_graph({
        "probe": {"class_type": "RobustErasureProbe", "inputs": {
            "model": ["demo", 0], "original_clip": ["demo", 1], "clip_under_test": ["demo", 1], "vae": ["demo", 2],
            "prompt": "a red circle", "probe": "soft_prompt", "steps": 2, "seed": 0, "judge": "",
            "options": "k=1, sampling_steps=2, trajectories=1, points=2", "generation_steps": 2, "guidance": 5.0}},
        "judge": {"class_type": "RobustErasureJudge", "inputs": {"images": ["probe", 3], "judge": "demo:circle"}},
        "report": {"class_type": "RobustErasureReport", "inputs": {
            "model": ["demo", 0], "original_clip": ["demo", 1], "erased_clip": ["demo", 1], "vae": ["demo", 2],
            "prompts": "a red circle", "judge": "demo:circle",
            "probes": "soft_prompt:steps=2:k=1:sampling_steps=2:trajectories=1:points=2", "seeds": "0",
            "retain_prompts": "a blue square", "generation_steps": 2, "guidance": 5.0, "report_name": "ci"}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["report", 0], "filename_prefix": "report"}},
    })
    entry = comfy.run(graph, timeout=900)
    assert_success(entry)
    outputs = entry["outputs"]
    assert "concept shown in" in outputs["judge"]["text"][0]
    folder = outputs["report"]["text"][0].split("output/", 1)[1].rsplit("/report.html", 1)[0]
    assert (comfy.output / folder / "report.html").is_file()
    assert (comfy.output / folder / "report.json").is_file()


def test_bad_judge_spec_is_a_clear_node_error(comfy):
    message = _error_of(comfy, demo_graph({
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["latent", 0], "vae": ["demo", 2]}},
        "judge": {"class_type": "RobustErasureJudge", "inputs": {"images": ["decode", 0], "judge": "telepathy"}},
    }))
    assert "Concept Judge" in message and "telepathy" in message, message
