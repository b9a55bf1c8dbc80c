"""Checks of the pack's ComfyUI bridge that need ComfyUI's objects in hand rather than its HTTP API.

Run by tests/comfy/test_bridge_inprocess.py with the ComfyUI install's own Python:
    python inprocess_checks.py COMFYUI_DIR REPO CHECK      (CHECK: unet | weights | pyproject)
It imports ComfyUI as its main.py does for --cpu (no server), imports this repository as a package (as ComfyUI's
custom-node loader does), builds what it needs INSIDE torch.inference_mode() as ComfyUI's executor does, and
prints one JSON line of findings; the pytest side asserts on them.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys


def setup(comfy_dir: str, repo: str):
    sys.argv = [sys.argv[0], "--cpu"]
    sys.path.insert(0, comfy_dir)
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.model_management  # noqa: F401 - parses --cpu

    spec = importlib.util.spec_from_file_location("robust_erasure_pack", f"{repo}/__init__.py",
                                                  submodule_search_locations=[repo])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pack
    spec.loader.exec_module(pack)
    return lambda name: importlib.import_module(f"robust_erasure_pack.nodes.{name}")


def check_unet(nodes) -> dict:
    """ComfyUNet (ComfyUI's module) against the diffusers UNet holding the same weights: the demo model
    (v-prediction, 4x VAE), its ComfyUI MODEL built under inference mode as the Load Demo Model node does."""
    import diffusers
    import torch

    from erasure_core.demo import load_demo_model

    torch.manual_seed(0)
    sd = load_demo_model()
    with torch.inference_mode():
        model, clip, _vae = nodes("_native").native_parts(sd, sd.name)
        # What ComfyUI's own loaders leave: weights created under inference mode (the demo's MODEL is built from
        # ordinary tensors, so make its weights inference tensors here).
        for sub in model.model.diffusion_model.modules():
            for name, p in list(sub._parameters.items()):
                if p is not None:
                    sub._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=False)
    inference_before = sum(p.is_inference() for p in model.model.diffusion_model.parameters())
    unet = nodes("_model_unet").ComfyUNet(model)
    size, width = sd.latent_size, sd.text_encoder.config.hidden_size
    x = torch.randn(3, sd.unet.config.in_channels, size, size)
    t = torch.tensor([15, 480, 980])
    cond = torch.randn(3, sd.max_length, width)
    found = {"inference_params_before": int(inference_before)}
    results = {}
    for name, net in (("diffusers", sd.unet), ("comfy", unet)):
        c = cond.clone().requires_grad_(True)
        out = net(x, t, encoder_hidden_states=c).sample.float()
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        results[name] = (out.detach(), c.grad.detach())
    unet.enable_gradient_checkpointing()  # recomputed in the backward pass: the same gradient
    c = cond.clone().requires_grad_(True)
    out = unet(x, t, encoder_hidden_states=c).sample.float()
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    unet.disable_gradient_checkpointing()
    found["checkpointed_grad_max_diff"] = float((c.grad - results["comfy"][1]).abs().max())
    (ref, ref_grad), (got, got_grad) = results["diffusers"], results["comfy"]
    found.update(
        output_scale=float(ref.abs().max()), output_max_diff=float((ref - got).abs().max()),
        grad_scale=float(ref_grad.abs().max()), grad_max_diff=float((ref_grad - got_grad).abs().max()),
        unet_requires_grad=any(p.requires_grad for p in model.model.diffusion_model.parameters()),
        unet_grads=any(p.grad is not None for p in model.model.diffusion_model.parameters()),
        inference_params_after=sum(p.is_inference() for p in model.model.diffusion_model.parameters()),
    )

    # The nodes' SDModel for a non-demo MODEL (a clone: no demo modules attached) builds no diffusers UNet.
    built = []
    original_init = diffusers.UNet2DConditionModel.__init__

    def counting_init(self, *args, **kwargs):
        built.append(type(self).__name__)
        original_init(self, *args, **kwargs)

    diffusers.UNet2DConditionModel.__init__ = counting_init
    try:
        with torch.inference_mode(False):
            sd_model = nodes("_sdmodel").sd_model_from_comfy(model.clone(), clip, "check", resolution=0)
    finally:
        diffusers.UNet2DConditionModel.__init__ = original_init
    found.update(
        unets_built=len(built), sdmodel_unet=type(sd_model.unet).__name__,
        sdmodel_unet_is_comfys=sd_model.unet.patcher.model is model.model,
        sdmodel_unet_params=sum(p.numel() for p in sd_model.unet.parameters()),
        sdmodel_latent_size=sd_model.latent_size, demo_latent_size=sd.latent_size,
    )
    return found


def check_weights(nodes) -> dict:
    """The CLIP's effective weights when the patches are NOT written into the weights (as 0.28.2's
    ModelPatcherDynamic does on NVIDIA GPUs): the old reading (load, then the state dict) against the pack's."""
    import torch

    import comfy.model_patcher
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base

    found = {}
    dynamic = getattr(comfy.model_patcher, "ModelPatcherDynamic", None)
    if dynamic is not None:  # 0.28.2: does ComfyUI let a CPU device have the dynamic patcher? (it does not)
        probe = dynamic(torch.nn.Linear(2, 2), torch.device("cpu"), torch.device("cpu"))
        found["dynamic_patcher_on_cpu"] = type(probe).__name__
    small = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2}
    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    torch.manual_seed(0)
    with torch.inference_mode():
        clip = comfy.sd.CLIP(target=target, model_options={"clip_l_model_config": small})
        for p in clip.cond_stage_model.parameters():
            p.copy_(torch.randn_like(p) * 0.02)
    keys = ["clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight",
            "clip_l.transformer.text_model.final_layer_norm.bias"]
    base = {k: v.detach().float().clone() for k, v in clip.cond_stage_model.state_dict().items()}
    patched = clip.clone()
    values = {k: torch.randn(base[k].shape) for k in keys}
    patched.add_patches({k: ("set", (v,)) for k, v in values.items()}, 1.0, 1.0)
    expected = {k: v.to(torch.float16).float() for k, v in values.items()}  # stored in the CLIP's fp16

    def old_reading(c):
        c.load_model()
        return {k: v.detach().float() for k, v in c.cond_stage_model.state_dict().items()}

    clip_text_state = nodes("_clip_encoder").clip_text_state
    prefix = "clip_l.transformer."

    def agrees(state, reference) -> bool:
        return all(torch.equal(state[k[len(prefix):]], reference[k]) for k in keys)

    new = clip_text_state(patched)
    found["legacy_new_is_patched"] = agrees(new, expected)
    found["legacy_old_is_patched"] = all(torch.equal(old_reading(patched)[k], expected[k]) for k in keys)
    old_all = old_reading(patched)
    found["legacy_new_equals_old_everywhere"] = all(
        torch.equal(new[k[len(prefix):]], old_all[k]) for k in old_all if k.startswith(prefix + "text_model."))
    found["original_untouched"] = agrees(clip_text_state(clip), base)

    class PatchesInForward(type(patched.patcher)):
        """Stands in for ModelPatcherDynamic, which ComfyUI builds only for GPU devices: loading leaves the
        weights at their base values (the patches would be applied in the forward pass)."""

        def patch_weight_to_device(self, key, device_to=None, *args, **kwargs):
            return None

    clip.patcher.unpatch_model()  # the shared module back to its base weights
    dyn = clip.clone()
    dyn.add_patches({k: ("set", (v,)) for k, v in values.items()}, 1.0, 1.0)
    dyn.patcher.__class__ = PatchesInForward
    old = old_reading(dyn)
    found["dynamic_old_is_patched"] = all(torch.equal(old[k], expected[k]) for k in keys)
    found["dynamic_old_is_base"] = all(torch.equal(old[k], base[k]) for k in keys)
    found["dynamic_new_is_patched"] = agrees(clip_text_state(dyn), expected)
    return found


def check_pyproject(repo: str) -> dict:
    """The pack's pyproject.toml as ComfyUI's own reader (comfy_config, kept in sync with the Comfy Registry's
    comfy-cli types) sees it."""
    from comfy_config import config_parser

    config = config_parser.extract_node_configuration(repo)
    return {"name": config.project.name, "version": config.project.version,
            "repository": config.project.urls.repository, "publisher": config.tool_comfy.publisher_id,
            "display_name": config.tool_comfy.display_name, "web": config.tool_comfy.web,
            "requires_comfyui": config.project.supported_comfyui_version, "os": config.project.supported_os}


if __name__ == "__main__":
    comfy_dir, repo, check = sys.argv[1:4]
    nodes = setup(comfy_dir, repo)
    if check == "pyproject":
        print("RESULT " + json.dumps(check_pyproject(repo)))
    else:
        print("RESULT " + json.dumps({"unet": check_unet, "weights": check_weights}[check](nodes)))
