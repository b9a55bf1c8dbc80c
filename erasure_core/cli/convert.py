"""`convert`: any text-encoder layout (transformers folder, ldm checkpoint, ComfyUI file...) to our format."""

from __future__ import annotations

import argparse

from ..errors import ErasureError

DTYPES = ("fp16", "bf16", "fp32")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("convert", help="convert any text-encoder layout to our .safetensors format")
    p.add_argument("src")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default="fp16")
    return p


def run(args) -> None:
    from ..encoders import convert_encoder

    convert_encoder(args.src, args.out, dtype=_dtype(args.dtype))
    print(f"wrote {args.out}")


def _dtype(name: str):
    import torch

    if name not in DTYPES:
        raise ErasureError(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]
