"""Command-line arguments shared by the commands that load a model (erase, swap, probe, evaluate)."""

from __future__ import annotations

import argparse


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="demo", help='"demo" (embedded), "tiny", a diffusers folder or an SD1.x file')
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda if available)")
    p.add_argument("--resolution", type=int, default=0,
                   help="work at this many pixels square (default: the model's native size, 512 for SD1.5); "
                        "lower is much faster, e.g. 128 to try a run on a CPU")


def device_from_name(name: str | None) -> str:
    import torch

    if name:
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model_from_args(args):
    """The model named by --model on --device, at --resolution when given."""
    from .loading import load_model

    model = load_model(args.model, device=device_from_name(args.device))
    return model.at_resolution(args.resolution) if args.resolution else model
