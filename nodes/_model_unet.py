"""ComfyUI's own SD1 diffusion module, called the way `erasure_core` calls a diffusers UNet: one UNet in memory.

`erasure_core` calls its UNet as `unet(latents, timesteps, encoder_hidden_states=cond).sample` (UNetRunner, the
UnlearnDiffAtk probe, diffusers' StableDiffusionPipeline when a probe generates) and reads `.dtype`, `.device`
and `.config`. The nodes used to copy the MODEL's weights into a second, fp32 diffusers UNet (3.4 GB more for
SD1.5, beside ComfyUI's own copy); `ComfyUNet` instead calls ComfyUI's module, as ComfyUI's own training node
(comfy_extras/nodes_train.py) differentiates through the MODEL it is given:
- ComfyUI loads and places it (`load_models_gpu`: its device, its dtype, this MODEL's weight patches such as
  LoRAs, written in or applied in the forward pass by dynamic VRAM), and may offload it between runs;
- it runs outside inference mode, frozen (no UNet gradients); gradients flow to the conditioning only;
- the input is what a diffusers UNet takes, the DDPM latent x_t and the integer timestep t: ComfyUI's
  `apply_model` scales its own latent x = x_t * sqrt(1 + sigma^2) by c_in to exactly that and turns sigma back
  into t before it calls the same module, so the two agree (checked against the diffusers UNet in
  tests/comfy/test_unet_bridge.py).
Model-level patches that ComfyUI passes only through its samplers (`transformer_options`: FreeU, attention
replacements) are not applied; the copied diffusers UNet did not apply them either.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.utils.checkpoint
from diffusers.configuration_utils import FrozenDict

import comfy.model_management


def _config(model) -> FrozenDict:
    """The diffusers UNet config fields `erasure_core` and the SD pipeline read, from ComfyUI's unet_config."""
    unet_config = model.model.model_config.unet_config
    net = model.model.diffusion_model
    width = int(unet_config.get("model_channels", getattr(net, "model_channels", 320)))
    mult = unet_config.get("channel_mult", getattr(net, "channel_mult", (1, 2, 4, 4)))
    return FrozenDict(
        in_channels=int(unet_config.get("in_channels", getattr(net, "in_channels", 4))),
        out_channels=int(unet_config.get("out_channels", getattr(net, "out_channels", 4))),
        sample_size=64,  # SD1's native 64x64 latents (512 px)
        block_out_channels=tuple(width * int(m) for m in mult),
        cross_attention_dim=int(unet_config["context_dim"]),
        time_cond_proj_dim=None,
    )


def _normal_tensors(module: torch.nn.Module) -> int:
    """Re-create, one at a time, the module's inference-mode parameters and buffers as normal tensors (same
    values, same device and dtype), so autograd can save them for the backward pass; returns how many.

    ComfyUI loads every model inside torch.inference_mode(), and "inference tensors cannot be saved for
    backward": the conditioning's gradient needs the weights. One tensor at a time, so memory grows by the
    largest tensor only (SD1.5: 13 MB), not by a copy of the UNet. ComfyUI keeps working with the new tensors.
    """
    count = 0
    with torch.inference_mode(False):
        for sub in module.modules():
            for table in (sub._parameters, sub._buffers):
                for name, tensor in table.items():
                    if tensor is not None and tensor.is_inference():
                        copy = tensor.detach().clone()
                        table[name] = torch.nn.Parameter(copy, requires_grad=False) if table is sub._parameters \
                            else copy
                        count += 1
    return count


class ComfyUNet(torch.nn.Module):
    """A ComfyUI SD1 MODEL as a diffusers-style UNet (frozen; holds no weights of its own)."""

    def __init__(self, model):
        super().__init__()
        self.__dict__["patcher"] = model  # not a submodule: ComfyUI manages its memory, .to() must not move it
        self.config = _config(model)
        self.is_gradient_checkpointing = False

    @property
    def dtype(self) -> torch.dtype:
        """The dtype ComfyUI computes in (its apply_model casts inputs to the same)."""
        base = self.patcher.model
        return base.manual_cast_dtype or base.get_dtype()

    @property
    def device(self) -> torch.device:
        return torch.device(self.patcher.load_device)

    def enable_gradient_checkpointing(self):
        """Recompute the UNet's activations in the backward pass instead of keeping them (whole-module
        checkpointing: ComfyUI's blocks have no per-block switch)."""
        self.is_gradient_checkpointing = True

    def disable_gradient_checkpointing(self):
        self.is_gradient_checkpointing = False

    def _load(self):
        """Have ComfyUI load this MODEL (device, patches); a no-op while it stays loaded."""
        comfy.model_management.load_models_gpu([self.patcher])
        net = self.patcher.model.diffusion_model
        net.requires_grad_(False)
        _normal_tensors(net)
        return net

    def forward(self, sample, timestep, encoder_hidden_states, return_dict: bool = True, timestep_cond=None,
                cross_attention_kwargs=None, added_cond_kwargs=None, **unused):
        if timestep_cond is not None or cross_attention_kwargs or added_cond_kwargs or unused:
            raise ValueError("ComfyUNet takes latents, timesteps and text conditioning only (an SD1 UNet)")
        net = self._load()
        device, dtype = self.device, self.dtype
        x = sample.to(device, dtype)
        t = torch.as_tensor(timestep, device=device).float().reshape(-1).expand(x.shape[0])
        context = encoder_hidden_states.to(device, dtype)
        options = {}
        current = getattr(self.patcher.model, "current_patcher", None)
        if current is not None and hasattr(current, "is_dynamic"):  # 0.28.2's apply_model passes the same
            options["prefetch_dynamic_vbars"] = current.is_dynamic()

        def run(x, t, context):
            return net(x, t, context=context, transformer_options=dict(options))

        if self.is_gradient_checkpointing and torch.is_grad_enabled():
            out = torch.utils.checkpoint.checkpoint(run, x, t, context, use_reentrant=False)
        else:
            out = run(x, t, context)
        out = out.to(sample.device)
        return SimpleNamespace(sample=out) if return_dict else (out,)
