"""Command line: the same operations as the Python API and the ComfyUI nodes, for headless machines.

    python -m erasure_core erase --model demo --concept circle --out circle.safetensors
    python -m erasure_core info circle.safetensors
    python -m erasure_core demo --concept circle --out out/demo

Every user error exits with status 2 and one paragraph saying what was wrong and what to do.

One module per command (erase, convert, info, swap, bake, probe, evaluate, demo), each with `add_parser(sub)`
and `run(args)`; `common.py` holds the arguments several commands share. The command modules import torch and
the library only inside functions: `main` must set OpenMP's wait policy before torch loads (erasure_core/openmp.py).
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import ErasureCancelled, ErasureError
from ..openmp import apply_default_wait_policy
from . import bake, convert, demo, erase, evaluate, info, probe, swap

COMMANDS = (erase, convert, info, swap, bake, probe, evaluate, demo)  # the order `--help` lists them in


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m erasure_core", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub).set_defaults(func=command.run)
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
    chosen = apply_default_wait_policy()
    if chosen and chosen.startswith("OMP_WAIT_POLICY"):  # slower than the idle default: say why
        print(f"note: {chosen}", file=sys.stderr)
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
