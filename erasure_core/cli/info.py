"""`info`: an encoder file's metadata and key summary, as JSON."""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("info", help="print an encoder file's metadata and key summary")
    p.add_argument("file")
    return p


def run(args) -> None:
    from ..encoders import describe_encoder

    print(json.dumps(describe_encoder(args.file), indent=2, default=str))
