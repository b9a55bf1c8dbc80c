"""The training checkpoint codec: one safetensors file holding the trainable weights, Adam's state, the
adversarial embeddings and the RNG states as tensors, and the step, config and history as JSON metadata.

A resumed run ends bit-identical to an uninterrupted one (tests/training/test_trainer.py checks it), so everything a
future iteration reads must be here: anything derived from the step alone (attack restarts, diagnostics points)
is recomputed instead of stored.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import ErasureError
from ..files import atomic_save_safetensors
from .config import check

CHECKPOINT_FORMAT = "erasure_core.checkpoint/1"
# Fields that may differ between a checkpoint's config and the config given to resume it.
# average_last changes only what is written at the end (TailAverage.restore checks the mean so far).
RESUMABLE_CHANGES = {"iterations", "checkpoint_every", "diagnostics_every", "average_last"}


def write_checkpoint(path: Path, *, named_params, optimizer, adversarial: dict, rng_state: torch.Tensor,
                     metadata: dict, extra: dict | None = None) -> Path:
    """Write the trainer's state atomically; `metadata` (JSON-able) gets `format` and `param_groups` added;
    `extra`: more named tensors (the tail average's running mean)."""
    tensors = {f"encoder.{name}": p.detach() for name, p in named_params}
    state = optimizer.state_dict()
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value)
    tensors.update({f"adversarial.{c}": e for c, e in adversarial.items()})
    tensors.update(extra or {})
    tensors["rng.trainer"] = rng_state
    tensors["rng.torch"] = torch.get_rng_state()
    meta = dict(metadata, format=CHECKPOINT_FORMAT, param_groups=state["param_groups"])
    atomic_save_safetensors(tensors, path, meta)
    return path


def load_checkpoint_into(tensors: dict, meta: dict, *, named_params, optimizer, device) -> dict[int, torch.Tensor]:
    """Copy weights and Adam state into the trainer's objects and set torch's RNG; returns the adversarial
    embeddings per concept index (the trainer's own generator state is `tensors["rng.trainer"]`)."""
    with torch.no_grad():
        for name, param in named_params:
            param.copy_(tensors[f"encoder.{name}"])
    optimizer.load_state_dict(_optimizer_state(tensors, meta["param_groups"]))
    torch.set_rng_state(tensors["rng.torch"])
    return {int(k.split(".")[1]): v.to(device) for k, v in tensors.items() if k.startswith("adversarial.")}


def check_resumable(meta: dict, path, concepts: list[str], config: dict, base_hash: str, iterations: int,
                    defaults: dict | None = None):
    """Refuse a checkpoint made for other concepts, settings or base encoder, or beyond `iterations`.

    `defaults`: each option's default. An option added after the checkpoint was written is not in its config; the
    code that wrote it behaved as the option's default does, so that is what it is compared as."""
    check(meta.get("format") == CHECKPOINT_FORMAT, f"{path} is not an erasure checkpoint")
    check(meta["concepts"] == concepts,
          f"{path} erases {meta['concepts']}, not {concepts}: resume with the same concepts")
    saved = {**(defaults or {}), **meta["config"]}
    differ = sorted(k for k in config if k not in RESUMABLE_CHANGES and saved.get(k) != config[k])
    check(not differ, f"{path} was made with other settings ({', '.join(differ)}); resume with the same config "
                      f"(only {', '.join(sorted(RESUMABLE_CHANGES))} may change)")
    check(meta["base_encoder_fingerprint"] == base_hash,
          f"{path} was trained from another text encoder than this model's")
    check(int(meta["step"]) <= iterations, f"{path} is at iteration {meta['step']}, beyond iterations={iterations}")


def read_checkpoint(path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and decoded JSON metadata of a training checkpoint."""
    path = Path(path)
    check(path.is_file(), f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # a truncated or foreign file
        raise ErasureError(f"cannot read checkpoint {path}: {error}") from error
    meta = {}
    for key, value in raw.items():
        try:
            meta[key] = json.loads(value)
        except json.JSONDecodeError:
            meta[key] = value
    return tensors, meta


def _optimizer_state(tensors, param_groups) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": param_groups}
