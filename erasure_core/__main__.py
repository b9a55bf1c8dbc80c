"""Command line: the same operations as the Python API and the ComfyUI nodes, for headless machines.

    python -m erasure_core erase --model demo --concept circle --out circle.safetensors
    python -m erasure_core info circle.safetensors
    python -m erasure_core demo --concept circle --out out/demo

Every user error exits with status 2 and one paragraph saying what was wrong and what to do.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from .cli_common import add_model_args, device_from_name, load_model_from_args
from .errors import ErasureCancelled, ErasureError
from .openmp import apply_default_wait_policy


class _CancelOnSigint:
    """Turns the first Ctrl-C into a clean cancel (checkpoint written); a second one aborts at once."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            signal.signal(signal.SIGINT, self._previous)
            raise KeyboardInterrupt
        self.requested = True
        print("\ncancelling: writing a resumable checkpoint (Ctrl-C again to abort at once)", file=sys.stderr)

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._previous)
        return False


def _tqdm_progress(total_hint: int, desc: str):
    from tqdm.auto import tqdm

    bar = tqdm(total=total_hint, desc=desc, unit="it", dynamic_ncols=True)

    def progress(step: int, total: int, logs: dict) -> None:
        bar.total = total
        bar.n = step
        shown = {k: f"{v:.4g}" for k, v in logs.items() if isinstance(v, (int, float))}
        bar.set_postfix(shown, refresh=False)
        bar.refresh()

    return bar, progress


def _layers(value: str | None):
    """--layers: all | mlp | attention | comma-separated indices, read by the trainer's own parser."""
    from .training.config import parse_layers

    if value is None:
        return None
    try:
        return parse_layers(value)
    except ErasureError as err:
        raise ErasureError(f"--layers: {err}") from None


def cmd_erase(args) -> None:
    from .files import prepare_output
    from .jobs import erase_to_file
    from .training import EraseConfig

    overrides = {k: v for k, v in dict(
        method=args.method, iterations=args.iterations, seed=args.seed, lr=args.lr,
        layers=_layers(args.layers), mixed_precision=args.mixed_precision,
        retain_weight=args.retain_weight, attack_steps=args.attack_steps, attack_k=args.attack_k,
        checkpoint_every=args.checkpoint_every,
    ).items() if v is not None}
    preset = args.preset or ("demo" if args.model == "demo" else "object")
    config = EraseConfig.from_preset(preset, **overrides)
    out = Path(args.out or f"{'_'.join(c.replace(' ', '-') for c in args.concept)}_{config.method}.safetensors")
    checkpoint = Path(args.checkpoint or out.with_suffix(".ckpt.safetensors"))
    if out.suffix.lower() != ".safetensors":
        raise ErasureError(f"--out must end in .safetensors (encoders are written as safetensors only): {out}")
    for path in (out, checkpoint):
        prepare_output(path)  # a bad --out is reported now, not after the training
    model = load_model_from_args(args)
    bar, progress = _tqdm_progress(config.iterations, f"erase {', '.join(args.concept)} ({config.method})")
    with _CancelOnSigint() as cancel:
        try:
            result = erase_to_file(
                model, args.concept, config, out, progress=progress, should_cancel=lambda: cancel.requested,
                checkpoint_path=checkpoint, resume_from=args.resume,
            )
        finally:
            bar.close()
    print(f"wrote {out} ({result.unet_evaluations} UNet evaluations)")


def cmd_convert(args) -> None:
    from .encoders import convert_encoder

    convert_encoder(args.src, args.out, dtype=_dtype(args.dtype))
    print(f"wrote {args.out}")


def _dtype(name: str):
    import torch

    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    if name not in dtypes:
        raise ErasureError(f"--dtype must be one of {', '.join(dtypes)}, got {name!r}")
    return dtypes[name]


def cmd_info(args) -> None:
    from .encoders import describe_encoder

    print(json.dumps(describe_encoder(args.file), indent=2, default=str))


def cmd_swap(args) -> None:
    from .files import atomic_folder, write_error
    from .swap import swap_text_encoder

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


def cmd_bake(args) -> None:
    from .swap import bake

    bake(args.checkpoint, args.encoder, args.out)
    print(f"wrote {args.out}")


def cmd_probe(args) -> None:
    from .cli_probe import run_probe_command

    run_probe_command(args)


def cmd_evaluate(args) -> None:
    from .cli_probe import run_evaluate_command

    run_evaluate_command(args)


def cmd_demo(args) -> None:
    from .demo.run import run_demo

    run_demo(concept=args.concept, out_dir=Path(args.out), seed=args.seed, device=device_from_name(args.device))


def build_parser() -> argparse.ArgumentParser:
    from .training.config import LAYER_GROUPS, METHODS, PRECISIONS  # imports torch: after main() set OpenMP's policy

    parser = argparse.ArgumentParser(prog="python -m erasure_core", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("erase", help="erase concept(s) by training the text encoder (AdvUnlearn or ESD)")
    add_model_args(p)
    p.add_argument("--concept", action="append", required=True, help="repeat for several concepts")
    p.add_argument("--preset", default=None,
                   help="nudity, style, object (the paper's defaults) or demo (the embedded model's); "
                        "default: demo for --model demo, else object")
    p.add_argument("--method", choices=list(METHODS), default=None)
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--layers", default=None, help=f"{', '.join(LAYER_GROUPS)}, or indices like 0,1,2")
    p.add_argument("--retain-weight", type=float, default=None)
    p.add_argument("--attack-steps", type=int, default=None)
    p.add_argument("--attack-k", type=int, default=None)
    p.add_argument("--mixed-precision", choices=list(PRECISIONS), default=None)
    p.add_argument("--out", default=None, help="encoder file to write (.safetensors)")
    p.add_argument("--checkpoint", default=None, help="resumable checkpoint path (default: beside --out)")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="write the resumable checkpoint every N iterations (0: only on cancel)")
    p.add_argument("--resume", default=None, help="continue from this checkpoint")
    p.set_defaults(func=cmd_erase)

    p = sub.add_parser("convert", help="convert any text-encoder layout to our .safetensors format")
    p.add_argument("src")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default="fp16")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="print an encoder file's metadata and key summary")
    p.add_argument("file")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("swap", help="write a diffusers folder of --model with the robust encoder in place")
    add_model_args(p)
    p.add_argument("--encoder", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_swap)

    p = sub.add_parser("bake", help="write a single-file SD1.x checkpoint with the robust encoder in place")
    p.add_argument("checkpoint")
    p.add_argument("--encoder", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_bake)

    from .cli_probe import add_evaluate_parser, add_probe_parser

    add_probe_parser(sub).set_defaults(func=cmd_probe)
    add_evaluate_parser(sub).set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="erase a concept from the embedded demo model with ESD and AdvUnlearn, "
                                    "attack all three encoders, judge, and write a report")
    p.add_argument("--concept", default="circle")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_demo)
    return parser


def _quiet_libraries() -> None:
    """Keep the terminal for our own progress: transformers' notices about optional backends (torchvision) and
    its per-load progress bars say nothing a user of this tool can act on."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    # Before anything imports torch: OpenMP reads its wait policy once, when torch loads it (erasure_core/openmp.py).
    apply_default_wait_policy()
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        args.func(args)
    except ErasureCancelled as err:
        print(f"cancelled: {err}", file=sys.stderr)
        return 130
    except ErasureError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a path that is not writable, a folder where a file was expected...
        print(f"error: {err.strerror or err}: {err.filename or ''} (check the paths you gave)", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory; a file is larger than this machine can hold, or its header is corrupt",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
