"""`demo`: erase a concept from the embedded demo model with ESD and AdvUnlearn, attack, judge and report."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import device_from_name


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="erase a concept from the embedded demo model with ESD and AdvUnlearn, "
                                    "attack all three encoders, judge, and write a report")
    p.add_argument("--concept", default="circle")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    return p


def run(args) -> None:
    from ..demo.run import run_demo

    run_demo(concept=args.concept, out_dir=Path(args.out), seed=args.seed, device=device_from_name(args.device))
