"""`swap`: a diffusers folder of --model with the robust text encoder in place."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ErasureError
from .common import add_model_args, load_model_from_args


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("swap", help="write a diffusers folder of --model with the robust encoder in place")
    add_model_args(p)
    p.add_argument("--encoder", required=True)
    p.add_argument("--out", required=True)
    return p


def run(args) -> None:
    from ..files import atomic_folder, write_error
    from ..swap import swap_text_encoder

    model = load_model_from_args(args)
    pipe = swap_text_encoder(model.pipeline(), args.encoder)
    # Written to a temporary folder first: a full disk or a kill leaves no partial pipeline behind.
    with atomic_folder(args.out, replaceable=lambda folder: (folder / "model_index.json").is_file()) as tmp:
        try:
            pipe.save_pretrained(tmp, safe_serialization=True)
        except Exception as err:  # noqa: BLE001 - OSError or safetensors' own error for a full disk
            if isinstance(err, ErasureError) or not (isinstance(err, OSError) or "Safetensor" in type(err).__name__):
                raise
            raise write_error(Path(args.out), err) from err
    print(f"wrote a diffusers folder with the robust encoder to {args.out}")
