"""`demo`: erase a concept from the embedded demo model with ESD and AdvUnlearn, attack, judge and report."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

from ..errors import ErasureCancelled
from .common import device_from_name

STAGES = {"train": ("train ESD and AdvUnlearn", "it"), "evaluate": ("attack and judge", "step")}


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

    from tqdm.auto import tqdm

    bars, progress = _stage_bars()
    try:
        run_demo(concept=args.concept, out_dir=Path(args.out), seed=args.seed,
                 device=device_from_name(args.device), progress=progress, log=tqdm.write)
    except KeyboardInterrupt:
        raise ErasureCancelled(_cancelled(bars, Path(args.out))) from None
    finally:
        for bar in bars.values():
            bar.close()


def _cancelled(bars: dict, out: Path) -> str:
    """What a Ctrl-C left: the report is written only at the end; images are written as the attacks make them."""
    if "evaluate" in bars:
        return (f"the demo stopped while attacking; {out} holds the images made so far and no report. "
                "Run the same command again to start over")
    return "the demo stopped while training; nothing was written. Run the same command again to start over"


def _stage_bars():
    """A tqdm bar per stage of the demo, the previous one closed when the next starts; the training stage reports
    from two threads, hence the lock."""
    from tqdm.auto import tqdm

    bars: dict = {}
    lock = threading.Lock()

    def progress(stage: str, done: int, total: int) -> None:
        with lock:
            if stage not in bars:
                for bar in bars.values():
                    bar.close()
                desc, unit = STAGES.get(stage, (stage, "step"))
                bars[stage] = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)
            bar = bars[stage]
            bar.total = total
            bar.update(done - bar.n)  # redraws at most every tenth of a second (tqdm's mininterval)

    return bars, progress
