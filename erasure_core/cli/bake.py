"""`bake`: a single-file SD1.x checkpoint with the robust text encoder in place."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("bake", help="write a single-file SD1.x checkpoint with the robust encoder in place")
    p.add_argument("checkpoint")
    p.add_argument("--encoder", required=True)
    p.add_argument("--out", required=True)
    return p


def run(args) -> None:
    from ..swap import bake

    bake(args.checkpoint, args.encoder, args.out)
    print(f"wrote {args.out}")
