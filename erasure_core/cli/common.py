"""What several commands share: the model arguments (erase, swap, probe, evaluate), the generation arguments
and the encoder under test (probe, evaluate), and probes from their specs."""

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
    from ..loading import load_model

    model = load_model(args.model, device=device_from_name(args.device))
    return model.at_resolution(args.resolution) if args.resolution else model


def add_generation_args(p: argparse.ArgumentParser) -> None:
    from ..sampling import SCHEDULERS  # imports torch: after main() set OpenMP's policy

    p.add_argument("--steps", type=int, default=20, help="sampling steps of each generation")
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--scheduler", default="ddim", choices=list(SCHEDULERS))


def model_and_encoder(args, encoder_path):
    from ..encoders import load_robust_text_encoder

    model = load_model_from_args(args)
    if encoder_path is None:
        return model, model.text_encoder
    encoder = load_robust_text_encoder(encoder_path, reference=model.text_encoder)
    return model, encoder.to(model.device, model.dtype).requires_grad_(False).eval()


def probes_from_specs(specs: list[str], concept: str):
    from ..attacks.registry import parse_probe_spec, probe_names

    return [parse_probe_spec(spec, concept=concept) for spec in (specs or probe_names())]
