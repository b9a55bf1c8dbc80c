"""A ComfyUI model's effective weights: its base weights with the patcher's own patches applied.

Read from the patcher's key patches with ComfyUI's own weight calculation (`comfy.lora.calculate_weight`, the
function ComfyUI's legacy patcher uses when it writes patches in), never by loading the model and reading its
state dict: ComfyUI 0.28.2 turns on dynamic VRAM by default on NVIDIA GPUs, and its `ModelPatcherDynamic`
applies patches during the forward pass instead of writing them into the weights, so a state dict read after
`load_model()` holds the BASE weights there. That reading would hand the Probe the original encoder instead of
the CLIP under test and make Save write the original, with every result looking fine. Both 0.3.75 and 0.28.2
have `get_key_patches` and `calculate_weight` with these signatures.

Imports only torch and ComfyUI, so tests load it on its own.
"""

from __future__ import annotations

import torch

import comfy.float
import comfy.lora
import comfy.model_patcher


def effective_weights(patcher, prefix: str) -> dict[str, torch.Tensor]:
    """`{key: tensor}` for every model key starting with `prefix`: fp32 CPU tensors that own their memory
    (normal tensors, safe for autograd), equal to what ComfyUI computes for this patcher.

    Neither loads the model nor changes anything in it or in the patcher.
    """
    out = {}
    with torch.inference_mode(False):
        for key, entries in patcher.get_key_patches(prefix).items():
            # entries[0] = (base weight, convert function); the rest are this patcher's patches on the key.
            # get_key_patches gives the backed-up base when another clone's patches are written in right now.
            (base, convert), patches = entries[0], entries[1:]
            weight = convert(base.detach().to("cpu", torch.float32, copy=True), inplace=True)
            if patches:
                weight = comfy.lora.calculate_weight(patches, weight, key)
                # What the legacy patcher then stores: the result in the weight's own dtype (fp16 for SD1 text
                # encoders on a CPU), so the two readings agree bit for bit.
                weight = comfy.float.stochastic_rounding(weight, base.dtype, seed=comfy.model_patcher.string_to_seed(key))
            out[key] = weight.to(torch.float32, copy=True)
    return out
