"""`erase`: train a robust text encoder (AdvUnlearn or ESD) and write it; Ctrl-C leaves a resumable checkpoint."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from ..errors import ErasureError
from .common import add_model_args, load_model_from_args


def add_parser(sub) -> argparse.ArgumentParser:
    from ..training.config import LAYER_GROUPS, METHODS, PRECISIONS  # imports torch: after main() set OpenMP's policy

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
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other training option (repeatable), e.g. caption_weight=1 or "
                        "contrast_words=square,triangle; the names are EraseConfig's (python -m erasure_core erase "
                        "--option help lists them)")
    p.add_argument("--out", default=None, help="encoder file to write (.safetensors)")
    p.add_argument("--checkpoint", default=None, help="resumable checkpoint path (default: beside --out)")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="write the resumable checkpoint every N iterations (0: only on cancel)")
    p.add_argument("--resume", default=None, help="continue from this checkpoint")
    return p


def run(args) -> None:
    from ..files import prepare_output
    from ..jobs import erase_to_file
    from ..training import EraseConfig

    overrides = {k: v for k, v in dict(
        method=args.method, iterations=args.iterations, seed=args.seed, lr=args.lr,
        layers=_layers(args.layers), mixed_precision=args.mixed_precision,
        retain_weight=args.retain_weight, attack_steps=args.attack_steps, attack_k=args.attack_k,
        checkpoint_every=args.checkpoint_every,
    ).items() if v is not None}
    overrides = {**_options(args.option, set(overrides)), **overrides}
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


def _options(parts: list[str], flagged: set[str]) -> dict:
    """--option KEY=VALUE parts, typed by the one options parser; a key also given as its own flag is refused."""
    from ..options import parse_options
    from ..training import EraseConfig

    if "help" in parts:
        from ..options import option_names

        raise ErasureError("--option takes KEY=VALUE with KEY one of: " + ", ".join(option_names(EraseConfig)))
    values = parse_options(parts, EraseConfig, context="--option: ")
    both = sorted(flagged & set(values))
    if both:
        raise ErasureError(f"--option {both[0]}=... repeats --{both[0].replace('_', '-')}: give it once")
    return values


def _layers(value: str | None):
    """--layers: all | mlp | attention | comma-separated indices, read by the trainer's own parser."""
    from ..training.config import parse_layers

    if value is None:
        return None
    try:
        return parse_layers(value)
    except ErasureError as err:
        raise ErasureError(f"--layers: {err}") from None


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
