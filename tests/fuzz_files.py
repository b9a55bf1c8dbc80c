"""A seeded generator of valid and malformed text-encoder files, and a runner that checks how the loaders treat
them: valid files load bit-exactly, malformed ones raise ErasureError, nothing hangs, nothing is left behind,
no pickle payload runs. Used by tests/test_fuzz_files.py (a short run) and directly for longer runs:

    PYTHONPATH=. python tests/fuzz_files.py --cases 2000 --seed 1
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
import random
import signal
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sd1_fixtures import advunlearn_training_state, canonical_state, tiny_text_encoder  # noqa: E402

from erasure_core.cli import main as cli_main  # noqa: E402
from erasure_core.encoders import convert_encoder, load_robust_text_encoder, read_encoder, save_encoder  # noqa: E402
from erasure_core.encoders import state_dict_from_text_encoder  # noqa: E402
from erasure_core.errors import ErasureError  # noqa: E402

WIDTH, LAYERS = 32, 1  # smallest encoder the rules accept (49,408 x 32 token table: 3 MB in fp16)
FLOATS = (torch.float16, torch.bfloat16, torch.float32)
BAD_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool, torch.float8_e4m3fn,
              torch.float8_e5m2)
PREFIXES = {
    "text_model": "text_model.", "transformers5": "", "sd1-checkpoint": "cond_stage_model.transformer.text_model.",
    "sd1-checkpoint-old": "cond_stage_model.transformer.", "comfyui": "clip_l.transformer.text_model.",
}
LAYOUTS = ("text_model", "transformers5", "sd1-checkpoint", "sd1-checkpoint-old", "comfyui", "advunlearn-pt",
           "pickle", "hf-folder", "advunlearn-folder", "ours", "pipeline-folder")
CATEGORIES = ("valid", "truncate", "flip", "garbage", "dtype", "nonfinite", "shape", "missing", "extra", "mixed",
              "alias", "config", "config-file", "metadata", "foreign", "huge", "payload", "fs-object", "name")


@dataclass
class Case:
    category: str
    detail: str
    path: Path
    expect: str  # "valid": loads bit-exactly; "refuse": ErasureError; "either": ErasureError or a checked load
    state: dict | None = None  # expected canonical tensors of a valid file
    marker: Path | None = None  # a payload that ran would create this file
    extra: dict = field(default_factory=dict)


class _Payload:
    """Pickles to a call of `open(marker, "w")`: creates the marker file if a loader ever runs it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ----------------------------------------------------------------------------------------------------------------
# Writers
# ----------------------------------------------------------------------------------------------------------------


def _in_layout(canon: dict, layout: str) -> dict:
    if layout == "advunlearn-pt":
        return advunlearn_training_state(canon)
    prefix = PREFIXES.get(layout, "text_model.")
    state = {prefix + k.removeprefix("text_model."): v for k, v in canon.items()}
    if layout == "comfyui":
        state["clip_l.transformer.text_projection.weight"] = torch.eye(WIDTH, dtype=next(iter(canon.values())).dtype)
        state["clip_l.logit_scale"] = torch.tensor(4.6)
    return state


def _config(canon: dict) -> dict:
    return {"vocab_size": 49408, "hidden_size": WIDTH, "intermediate_size": 4 * WIDTH, "projection_dim": WIDTH,
            "num_hidden_layers": LAYERS, "num_attention_heads": 1, "max_position_embeddings": 77,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "bos_token_id": 49406, "eos_token_id": 49407,
            "pad_token_id": 49407, "model_type": "clip_text_model"}


def _save_pickle(state: dict, path: Path, rng: random.Random) -> None:
    obj = {"state_dict": state, "global_step": 3} if path.suffix == ".ckpt" else state
    torch.save(obj, str(path), _use_new_zipfile_serialization=rng.random() < 0.8)


def write_layout(src: dict, layout: str, folder: Path, rng: random.Random, config: dict | None,
                 metadata: dict | None = None) -> Path:
    """Write `src` (keys already in `layout`) as a file or folder; returns the path a user would give."""
    contiguous = {k: v.contiguous() for k, v in src.items()}
    if layout in ("hf-folder", "advunlearn-folder", "pipeline-folder"):
        root = folder / f"{layout}"
        target = root / "text_encoder" if layout == "pipeline-folder" else root
        target.mkdir(parents=True)
        if layout == "pipeline-folder":
            (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
        if config is not None:
            (target / "config.json").write_text(json.dumps(config))
        if layout == "advunlearn-folder":
            torch.save(contiguous, str(target / "pytorch_model.bin"))
        else:
            save_file(contiguous, str(target / "model.safetensors"), metadata=metadata)
        return root
    if layout in ("advunlearn-pt", "pickle"):
        path = folder / ("model" + rng.choice((".pt", ".bin", ".pth", ".ckpt")))
        _save_pickle(contiguous, path, rng)
        return path
    path = folder / "model.safetensors"
    save_file(contiguous, str(path), metadata=metadata)
    return path


def _ours_metadata(config: dict) -> dict:
    record = {"format": "robust-erasure-text-encoder", "format_version": 1, "config": config, "concepts": ["x"]}
    return {"format": "robust-erasure-text-encoder", "format_version": "1", "robust_erasure": json.dumps(record)}


def write_sparse_safetensors(path: Path, specs: dict, metadata: dict | None = None) -> Path:
    """A valid safetensors file of all-zero tensors that costs no disk: the data is a sparse hole."""
    sizes = {"F32": 4, "F16": 2, "BF16": 2}
    header, offset = {}, 0
    for key, (shape, dtype) in specs.items():
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    return path


def clip_specs(width: int, layers: int, vocab: int = 49408, positions: int = 77, prefix: str = "text_model.",
               mlp: int | None = None) -> dict:
    mlp = mlp or 4 * width
    specs = {prefix + "embeddings.token_embedding.weight": ((vocab, width), "F16"),
             prefix + "embeddings.position_embedding.weight": ((positions, width), "F16"),
             prefix + "final_layer_norm.weight": ((width,), "F16"), prefix + "final_layer_norm.bias": ((width,), "F16")}
    for i in range(layers):
        p = f"{prefix}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            specs[p + f"self_attn.{proj}.weight"] = ((width, width), "F16")
            specs[p + f"self_attn.{proj}.bias"] = ((width,), "F16")
        for norm in ("layer_norm1", "layer_norm2"):
            specs[p + f"{norm}.weight"] = ((width,), "F16")
            specs[p + f"{norm}.bias"] = ((width,), "F16")
        specs[p + "mlp.fc1.weight"], specs[p + "mlp.fc1.bias"] = ((mlp, width), "F16"), ((mlp,), "F16")
        specs[p + "mlp.fc2.weight"], specs[p + "mlp.fc2.bias"] = ((width, mlp), "F16"), ((width,), "F16")
    return specs


# ----------------------------------------------------------------------------------------------------------------
# Case makers: each returns a Case written under `folder`
# ----------------------------------------------------------------------------------------------------------------


class CaseMaker:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.canon = canonical_state(tiny_text_encoder(seed=seed % 5, width=WIDTH, layers=LAYERS))

    def make(self, index: int, folder: Path, category: str | None = None) -> Case:
        rng = self.rng
        category = category or CATEGORIES[index % len(CATEGORIES)]
        folder.mkdir(parents=True, exist_ok=True)
        return getattr(self, "_" + category.replace("-", "_"))(folder, rng)

    # --- helpers ---
    def _base(self, rng, layouts=LAYOUTS):
        dtype = rng.choice(FLOATS)
        canon = {k: v.to(dtype) for k, v in self.canon.items()}
        return canon, rng.choice(layouts), dtype

    def _write(self, canon, layout, folder, rng, src=None, config="default", metadata=None):
        src = _in_layout(canon, layout) if src is None else src
        config = _config(canon) if config == "default" else config
        if layout == "ours":
            metadata = _ours_metadata(config) if metadata is None else metadata
            return write_layout(src, "text_model", folder, rng, None, metadata)
        use_config = config if layout in ("hf-folder", "advunlearn-folder", "pipeline-folder") else None
        return write_layout(src, layout, folder, rng, use_config, metadata)

    @staticmethod
    def _primary_keys(src: dict, layout: str) -> list[str]:
        keys = [k for k in src if not k.endswith("position_ids") and "text_projection" not in k and "logit" not in k]
        if layout == "advunlearn-pt":
            keys = [k for k in keys if k.startswith("text_encoder.")]
        return sorted(keys)

    # --- categories ---
    def _valid(self, folder, rng):
        canon, layout, dtype = self._base(rng)
        if layout == "ours" and rng.random() < 0.5:
            model_state = {k: v.float() for k, v in canon.items()}
            path = save_encoder(model_state, folder / "ours.safetensors", dtype=dtype)
            return Case("valid", f"save_encoder/{dtype}", path, "valid", canon)
        return Case("valid", f"{layout}/{dtype}", self._write(canon, layout, folder, rng), "valid", canon)

    def _bytes_of(self, path: Path) -> Path:
        if path.is_dir():
            return next(p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix != ".json")
        return path

    def _truncate(self, folder, rng):
        canon, layout, _ = self._base(rng)
        path = self._write(canon, layout, folder, rng)
        target = self._bytes_of(path)
        data = target.read_bytes()
        cut = rng.choice((0, 1, 7, 8, 9, rng.randrange(len(data)), len(data) - rng.randrange(1, 64)))
        target.write_bytes(data[:cut])
        return Case("truncate", f"{layout} {target.name} cut at {cut}/{len(data)}", path, "refuse")

    def _flip(self, folder, rng):
        canon, layout, _ = self._base(rng)
        path = self._write(canon, layout, folder, rng)
        target = self._bytes_of(path)
        data = bytearray(target.read_bytes())
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(min(len(data), 4096))
            data[i] = rng.randrange(256)
        target.write_bytes(bytes(data))
        return Case("flip", f"{layout} {target.name} header bytes", path, "either")

    def _garbage(self, folder, rng):
        path = folder / ("junk" + rng.choice((".safetensors", ".pt", ".bin", ".ckpt", ".pth")))
        size = rng.choice((1, 8, 16, 100, 5000))
        head = rng.choice((b"", b"PK\x03\x04", b"\x80\x02", struct.pack("<Q", rng.randrange(1 << 40))))
        path.write_bytes(head + bytes(rng.randrange(256) for _ in range(size)))
        return Case("garbage", f"{path.suffix} {size} bytes", path, "refuse")

    def _mutate_one(self, folder, rng, category, mutate):
        canon, layout, _ = self._base(rng)
        src = _in_layout(canon, layout if layout not in ("ours", "hf-folder", "advunlearn-folder",
                                                         "pipeline-folder", "pickle") else "text_model")
        key = rng.choice(self._primary_keys(src, layout))
        detail = mutate(src, key, rng)
        return Case(category, f"{layout} {key}: {detail}", self._write(canon, layout, folder, rng, src), "refuse")

    def _dtype(self, folder, rng):
        def mutate(src, key, rng):
            dtype = rng.choice(BAD_DTYPES)
            src[key] = (src[key].float() * 10).to(dtype)
            return str(dtype)
        return self._mutate_one(folder, rng, "dtype", mutate)

    def _nonfinite(self, folder, rng):
        def mutate(src, key, rng):
            t = src[key].clone().reshape(-1)
            value = rng.choice((float("nan"), float("inf"), float("-inf")))
            for _ in range(rng.randint(1, 3)):
                t[rng.randrange(t.numel())] = value
            src[key] = t.reshape(src[key].shape)
            return str(value)
        return self._mutate_one(folder, rng, "nonfinite", mutate)

    def _shape(self, folder, rng):
        def mutate(src, key, rng):
            t = src[key]
            how = rng.choice(("narrow", "widen", "flatten", "unsqueeze", "empty", "transpose"))
            if how == "narrow" and t.shape[0] > 1:
                src[key] = t[:-1]
            elif how == "widen" or (how == "transpose" and (t.ndim != 2 or t.shape[0] == t.shape[1])):
                src[key] = torch.cat([t, t[:1]])
            elif how == "flatten" and t.ndim == 2:
                src[key] = t.reshape(-1)
            elif how == "transpose":
                src[key] = t.t()
            elif how == "empty":
                src[key] = t[:0]
            else:
                src[key] = t.unsqueeze(0)
            return f"{how} -> {tuple(src[key].shape)}"
        return self._mutate_one(folder, rng, "shape", mutate)

    def _missing(self, folder, rng):
        def mutate(src, key, rng):
            src.pop(key)
            return "dropped"
        return self._mutate_one(folder, rng, "missing", mutate)

    def _extra(self, folder, rng):
        def mutate(src, key, rng):
            prefix = key[: key.rindex("encoder.layers")] if "encoder.layers" in key else ""
            name = rng.choice(("vision_model.post_layernorm.weight", "foo", "text_model.pooler.weight",
                               f"{prefix}encoder.layers.{LAYERS + rng.randrange(3)}.mlp.fc1.weight",
                               "model.diffusion_model.out.2.weight", "first_stage_model.decoder.conv_in.weight"))
            src[name] = torch.zeros(4, dtype=src[key].dtype)
            return f"added {name}"
        return self._mutate_one(folder, rng, "extra", mutate)

    def _mixed(self, folder, rng):
        canon, _, _ = self._base(rng)
        a, b = rng.sample(sorted(PREFIXES), 2)
        keys = sorted(canon)
        moved = set(rng.sample(keys, rng.randint(1, len(keys) - 1)))
        src = {(PREFIXES[b] if k in moved else PREFIXES[a]) + k.removeprefix("text_model."): v for k, v in canon.items()}
        return Case("mixed", f"{a} + {len(moved)} keys in {b}", self._write(canon, "text_model", folder, rng, src),
                    "refuse")

    def _alias(self, folder, rng):
        canon, _, _ = self._base(rng)
        src = advunlearn_training_state(canon)
        alias = rng.choice(sorted(k for k in src if not k.startswith("text_encoder.") and "position_ids" not in k))
        how = rng.choice(("differs", "orphan", "valid-without-aliases"))
        if how == "differs":
            src[alias] = src[alias].clone()
            src[alias].reshape(-1)[0] += 1
        elif how == "orphan":
            twin = "text_encoder.text_model." + alias.replace("embedding.", "embeddings.", 1) \
                if alias.startswith("embedding.") else "text_encoder.text_model." + alias
            src.pop(twin)
        else:
            src = {k: v for k, v in src.items() if k.startswith("text_encoder.")}
        path = self._write(canon, "advunlearn-pt", folder, rng, src)
        return Case("alias", f"{alias} {how}", path, "valid" if how.startswith("valid") else "refuse",
                    canon if how.startswith("valid") else None)

    def _config(self, folder, rng):
        canon, layout, _ = self._base(rng, ("ours", "hf-folder", "advunlearn-folder", "pipeline-folder"))
        config = _config(canon)
        name = rng.choice(sorted(config))
        bad = {
            "vocab_size": (-1, 0, 10**12, 49409, "49408", None, 1.5, True, [1]),
            "hidden_size": (-32, 0, 10**9, 64, "32", None, 32.0),
            "intermediate_size": (-1, 10**9, 127, "x", None),
            "projection_dim": (-1, 0, 10**9, "x"),
            "num_hidden_layers": (10**6, 0, -1, 2, 13, "1", None),
            "num_attention_heads": (0, -1, 3, 5, 10**6, "x", None, 1.0),
            "max_position_embeddings": (78, 10**7, 0, "77"),
            "hidden_act": ("bogus", 3, None, ["gelu"], ""),
            "layer_norm_eps": (0, -1, "x", 2.0, None),
            "bos_token_id": (-1, 10**9, "x", 1.5),
            "eos_token_id": (-5, 49408, "x"),
            "pad_token_id": (10**12, [], "x"),
            "model_type": ("clip",),
        }[name]
        value = rng.choice(bad)
        expect = "refuse"
        if name == "model_type":
            expect = "valid"  # "clip" without text_config: read as a text config, as transformers does
        config[name] = value
        path = self._write(canon, layout, folder, rng, config=config)
        return Case("config", f"{layout} {name}={value!r}", path, expect, canon if expect == "valid" else None)

    def _config_file(self, folder, rng):
        canon, layout, _ = self._base(rng, ("hf-folder", "advunlearn-folder", "pipeline-folder"))
        path = self._write(canon, layout, folder, rng)
        target = next(path.rglob("config.json"))
        how = rng.choice(("invalid-json", "list", "number", "binary", "fifo", "folder", "projection"))
        target.unlink()
        if how == "invalid-json":
            target.write_text('{"hidden_size": 32,')
        elif how in ("list", "number"):
            target.write_text("[1, 2]" if how == "list" else "42")
        elif how == "binary":
            target.write_bytes(bytes(rng.randrange(256) for _ in range(64)) + b"\xff\xfe")
        elif how == "fifo":
            os.mkfifo(target)
        elif how == "folder":
            target.mkdir()
        else:
            target.write_text(json.dumps({**_config(canon), "architectures": ["CLIPTextModelWithProjection"]}))
        return Case("config-file", f"{layout} config.json {how}", path, "refuse")

    def _metadata(self, folder, rng):
        canon, _, _ = self._base(rng)
        how = rng.choice(("not-json", "list", "string", "number", "null", "config-list", "config-number",
                          "config-bad-json", "config-huge"))
        record = {"format": "robust-erasure-text-encoder", "config": _config(canon)}
        raw = {"not-json": "{oops", "list": "[1, 2]", "string": '"abc"', "number": "7", "null": "null"}.get(how)
        if raw is None:
            record["config"] = {"config-list": [1], "config-number": 5, "config-bad-json": "{x",
                                "config-huge": {**_config(canon), "num_hidden_layers": 10**6}}[how]
            raw = json.dumps(record)
        path = write_layout(_in_layout(canon, "text_model"), "text_model", folder, rng, None,
                            {"format": "robust-erasure-text-encoder", "robust_erasure": raw})
        return Case("metadata", how, path, "refuse")

    def _foreign(self, folder, rng):
        how = rng.choice(("sd2-transformers", "sd2-folder", "sdxl-te2", "clip-g", "sd2-openclip", "sdxl-ckpt",
                          "deep-768", "vocab", "positions", "wide-mlp"))
        path = folder / "foreign.safetensors"
        if how in ("sd2-transformers", "sd2-folder"):
            specs = clip_specs(1024, 2)
            if how == "sd2-folder":
                path = folder / "sd2_text_encoder"
                path.mkdir()
                cfg = {**_config({}), "hidden_size": 1024, "num_attention_heads": 16, "hidden_act": "gelu",
                       "intermediate_size": 4096, "num_hidden_layers": 2}
                (path / "config.json").write_text(json.dumps(cfg))
                write_sparse_safetensors(path / "model.safetensors", specs)
                return Case("foreign", how, path, "refuse", extra={"words": "SD 2.x"})
        elif how == "sdxl-te2":
            specs = {**clip_specs(1280, 2), "text_projection.weight": ((1280, 1280), "F16")}
        elif how == "clip-g":
            specs = clip_specs(1280, 1, prefix="clip_g.transformer.text_model.")
        elif how == "sd2-openclip":
            specs = {"cond_stage_model.model.token_embedding.weight": ((49408, 1024), "F16"),
                     "model.diffusion_model.input_blocks.0.0.weight": ((320, 4, 3, 3), "F16")}
        elif how == "sdxl-ckpt":
            specs = {"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": ((768,), "F16"),
                     "model.diffusion_model.input_blocks.0.0.weight": ((320, 4, 3, 3), "F16")}
        elif how == "deep-768":
            specs = clip_specs(64, 13)
        elif how == "vocab":
            specs = clip_specs(WIDTH, 1, vocab=49409)
        elif how == "positions":
            specs = clip_specs(WIDTH, 1, positions=rng.choice((1, 76, 78, 256)))
        else:
            specs = clip_specs(WIDTH, 1, mlp=WIDTH * 16)
        write_sparse_safetensors(path, specs)
        return Case("foreign", how, path, "refuse")

    def _huge(self, folder, rng):
        key = rng.choice(("text_model.embeddings.token_embedding.weight", "text_model.encoder.layers.0.mlp.fc1.weight"))
        shape = rng.choice(((2**34,), (49408, 2**20), (2**31, 32), (49408, 32, 2**10)))
        specs = {**clip_specs(WIDTH, 1), key: (shape, "F32")}
        return Case("huge", f"{key} {shape}", write_sparse_safetensors(folder / "huge.safetensors", specs), "refuse")

    def _payload(self, folder, rng):
        marker = folder / "PAYLOAD_RAN"
        payload = _Payload(marker)
        state = {k: v for k, v in self.canon.items()}
        where = rng.choice(("top", "value", "state_dict", "list", "wrapped-pickle"))
        obj = {"top": payload, "value": {**state, "hook": payload}, "state_dict": {"state_dict": payload},
               "list": [state, payload], "wrapped-pickle": {"state_dict": {**state, "x": [payload]}}}[where]
        suffix = rng.choice((".pt", ".bin", ".pth", ".ckpt"))
        path = folder / ("evil" + suffix)
        if rng.random() < 0.3:
            path.write_bytes(pickle.dumps(obj, protocol=2))  # a raw pickle, not torch's zip
        else:
            torch.save(obj, str(path), _use_new_zipfile_serialization=rng.random() < 0.7)
        if rng.random() < 0.3:  # a published-folder look-alike
            root = folder / "evil_unlearned"
            root.mkdir()
            (root / "config.json").write_text(json.dumps(_config(self.canon)))
            path.rename(root / "pytorch_model.bin")
            path = root
        return Case("payload", f"{where} {suffix}", path, "refuse", marker=marker)

    def _fs_object(self, folder, rng):
        how = rng.choice(("fifo", "dir-with-suffix", "symlink-loop", "dangling", "empty-folder", "config-only",
                          "weights-fifo", "weights-dir", "devnull", "sharded"))
        path = folder / "x.safetensors"
        if how == "fifo":
            os.mkfifo(path)
        elif how == "dir-with-suffix":
            path.mkdir()
        elif how == "symlink-loop":
            os.symlink(folder / "y.safetensors", path)
            os.symlink(path, folder / "y.safetensors")
        elif how == "dangling":
            os.symlink(folder / "nowhere.safetensors", path)
        elif how == "devnull":
            path = folder / "x.pt"
            os.symlink("/dev/null", path)
        else:
            path = folder / "enc"
            path.mkdir()
            if how != "empty-folder":
                (path / "config.json").write_text(json.dumps(_config(self.canon)))
            if how == "weights-fifo":
                os.mkfifo(path / "model.safetensors")
            elif how == "weights-dir":
                (path / "model.safetensors").mkdir()
            elif how == "sharded":
                (path / "model.safetensors.index.json").write_text("{}")
        return Case("fs-object", how, path, "refuse")

    def _name(self, folder, rng):
        canon, _, dtype = self._base(rng)
        how = rng.choice(("non-utf8", "missing", "suffix", "spaces"))
        if how == "missing":
            return Case("name", how, folder / "does-not-exist.safetensors", "refuse")
        path = write_layout(_in_layout(canon, "text_model"), "text_model", folder, rng, None)
        new = {"non-utf8": os.fsdecode(b"caf\xe9-\xff.safetensors"), "suffix": "model.txt",
               "spaces": "my model (1).safetensors"}[how]
        path = path.rename(folder / new)
        return Case("name", how, path, "refuse" if how == "suffix" else "valid", canon if how != "suffix" else None)


# ----------------------------------------------------------------------------------------------------------------
# Running a case
# ----------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def time_limit(seconds: float):
    def expire(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _same(expected: dict, got: dict) -> str | None:
    if sorted(expected) != sorted(got):
        return f"keys differ: {sorted(set(expected) ^ set(got))[:4]}"
    for key, tensor in expected.items():
        if got[key].dtype != tensor.dtype or not torch.equal(got[key], tensor):
            return f"{key} differs ({got[key].dtype} vs {tensor.dtype})"
    return None


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def run_case(case: Case, out_dir: Path, limit_s: float = 30.0) -> tuple[str, str | None]:
    """("accepted" | "refused", failure or None) for one case, through read, load, convert and `info`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "out.safetensors"
    before = _files(case.path.parent)
    failure = None
    try:
        with time_limit(limit_s):
            try:
                encoder = read_encoder(case.path)
                model = load_robust_text_encoder(case.path)
                convert_encoder(case.path, out, dtype=torch.float32)
                outcome = "accepted"
            except ErasureError as err:
                outcome, message = "refused", str(err)
                case.extra["message"] = message
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                rc = cli_main(["info", str(case.path)])
    except TimeoutError as err:
        return "hang", f"{case.category}/{case.detail}: {err}"
    except Exception as err:  # noqa: BLE001 - any other exception is exactly the failure this test looks for
        return "crash", f"{case.category}/{case.detail}: {type(err).__name__}: {err}"
    if rc != (0 if outcome == "accepted" else 2):
        failure = f"info exit {rc} but the load was {outcome}"
    elif case.expect == "valid" and outcome != "accepted":
        failure = f"a valid file was refused: {message}"
    elif case.expect == "refuse" and outcome != "refused":
        failure = "a malformed file was accepted"
    elif outcome == "accepted" and case.state is not None:
        failure = _same(case.state, encoder.state_dict) or _same(
            {k: v.float() for k, v in case.state.items()}, state_dict_from_text_encoder(model))
    elif outcome == "refused" and ("Traceback" in message or not message.strip()):
        failure = f"unclear refusal: {message!r}"
    if case.marker is not None and case.marker.exists():
        failure = "A PICKLE PAYLOAD RAN"
    left = _files(out_dir) - ({"out.safetensors"} if outcome == "accepted" else set())
    left |= {n for n in _files(case.path.parent) - before if n.endswith(".tmp")}
    if left and failure is None:
        failure = f"left behind: {sorted(left)}"
    if out.exists():
        out.unlink()
    return outcome, (f"{case.category}/{case.detail}: {failure}" if failure else None)


def fuzz(n_cases: int, seed: int, root: Path, limit_s: float = 30.0, log=None) -> dict:
    """Run `n_cases` generated cases; returns counts per category and the failures."""
    maker = CaseMaker(seed)
    counts = {"tried": 0, "accepted": 0, "refused": 0, "failures": [], "by_category": {}}
    for i in range(n_cases):
        case_dir = root / f"case{i:05d}"
        case = maker.make(i, case_dir)
        outcome, failure = run_case(case, root / f"out{i:05d}", limit_s)
        counts["tried"] += 1
        counts[outcome] = counts.get(outcome, 0) + 1
        per = counts["by_category"].setdefault(case.category, {"tried": 0, "accepted": 0, "refused": 0})
        per["tried"] += 1
        per[outcome] = per.get(outcome, 0) + 1
        if failure:
            counts["failures"].append(failure)
        if log:
            why = case.extra.get("message", "")[:240]
            log(f"{i} {case.category}/{case.detail}: {outcome}" + (f" FAIL {failure}" if failure else f" {why}"))
        _remove_tree(case_dir)
        _remove_tree(root / f"out{i:05d}")
    return counts


def _remove_tree(path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        return
    for child in sorted(path.rglob("*"), key=lambda p: -len(p.parts)):
        child.rmdir() if child.is_dir() and not child.is_symlink() else child.unlink()
    path.rmdir()


if __name__ == "__main__":
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        result = fuzz(args.cases, args.seed, Path(tmp), log=print if args.verbose else None)
    result["seconds"] = round(time.time() - start, 1)
    print(json.dumps(result, indent=1))
