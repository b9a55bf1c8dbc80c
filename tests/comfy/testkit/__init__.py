"""Test-only ComfyUI nodes (loaded only by the test server): observe CLIPs from outside the pack's own code.

- RobustErasureTestFingerprint: writes output/<name>.safetensors with the CLIP's conditioning for a prompt and
  the sha256 of its effective text-encoder weights (its patches applied), so tests can compare CLIPs bit for bit.
- RobustErasureTestSDXLClip: a tiny CLIP with SDXL's structure (clip_l + clip_g), to test refusals cheaply.
V1 style on purpose: independent of the pack's V3 code.
"""

import hashlib
import inspect
import json
import os

import torch
from safetensors.torch import save_file

import comfy.sd
import comfy.sdxl_clip
import comfy.supported_models_base
import folder_paths


class AnyType(str):
    def __ne__(self, other):
        return False


ANY = AnyType("*")


def effective_text_state(clip):
    """The CLIP's weights as ComfyUI's legacy patcher writes them in, read independently of the pack's own
    reading (which computes them from the patches). Since 0.28.2 a CLIP may hold a ModelPatcherDynamic (NVIDIA
    GPUs), which applies patches in the forward pass and leaves the weights at their base values; a clone with
    dynamic VRAM disabled writes them in on load. 0.3.75's clone() has no such switch and is always legacy."""
    if "disable_dynamic" in inspect.signature(clip.clone).parameters:
        clip = clip.clone(disable_dynamic=True)
    clip.load_model()  # the legacy patcher writes this clone's patches into the shared module
    return {k: v.detach().float().cpu().clone() for k, v in clip.cond_stage_model.state_dict().items()
            if ".transformer.text_model." in k}


def weights_sha(state):
    digest = hashlib.sha256()
    for key in sorted(state):
        name = key.split(".transformer.", 1)[1]
        digest.update(name.encode())
        digest.update(state[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


class Fingerprint:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"clip": ("CLIP",), "text": ("STRING", {"default": "a red circle"}),
                         "name": ("STRING", {"default": "fingerprint"})},
            "optional": {"after": (ANY,)},
        }

    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def run(self, clip, text, name, after=None):
        tokens = clip.tokenize(text)
        cond = clip.encode_from_tokens(tokens)
        state = effective_text_state(clip)
        sha = weights_sha(state)
        os.makedirs(folder_paths.get_output_directory(), exist_ok=True)
        out = os.path.join(folder_paths.get_output_directory(), f"{name}.safetensors")
        save_file({"cond": cond.float().contiguous().cpu()}, out,
                  metadata={"weights_sha": sha, "keys": json.dumps(sorted(state))})
        return {"ui": {"text": [sha]}, "result": (sha,)}


class TinySDXLClip:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self):
        small = {"num_hidden_layers": 3, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2}
        target = comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)
        clip = comfy.sd.CLIP(target=target, model_options={"clip_l_model_config": small, "clip_g_model_config": small})
        return (clip,)


NODE_CLASS_MAPPINGS = {
    "RobustErasureTestFingerprint": Fingerprint,
    "RobustErasureTestSDXLClip": TinySDXLClip,
}
