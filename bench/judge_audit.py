"""How often the demo judge agrees with a person, on images labelled by eye (bench/judge_audit/CONCEPT/).

    python bench/judge_audit.py [--judge DIR] [--set bench/judge_audit/square]

Why: every ASR in the benchmark is the judge's call. The judge is a closed-set classifier (4 shapes, 4 colours),
so an image showing no clear shape still gets one, and erased encoders under attack make many such images. The
audit set holds benchmark images with a person's label ("square", "not square", "ambiguous"); this script runs
a judge on them and prints, per encoder the images came from, how many of the judge's "concept" calls a person
agrees with, and how many concept images it missed. Ambiguous images are counted apart, never as agreement.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from erasure_core.errors import ErasureError  # noqa: E402
from erasure_core.files import load_png  # noqa: E402
from erasure_core.rates import wilson_interval  # noqa: E402

AUDIT_DIR = Path(__file__).resolve().parent / "judge_audit"


def tally(labels: list[str], called: list[bool], groups: list[str]) -> dict[str, dict[str, int]]:
    """Per group: the judge's calls against a person's labels. labels: 'concept', 'not concept' or 'ambiguous';
    called: whether the judge called the concept. Keys: true_pos, false_pos, false_neg, true_neg, ambiguous_called,
    ambiguous_not_called."""
    out: dict[str, dict[str, int]] = {}
    for label, call, group in zip(labels, called, groups, strict=True):
        counts = out.setdefault(group, dict(true_pos=0, false_pos=0, false_neg=0, true_neg=0, ambiguous_called=0,
                                            ambiguous_not_called=0))
        if label == "ambiguous":
            counts["ambiguous_called" if call else "ambiguous_not_called"] += 1
        elif label == "concept":
            counts["true_pos" if call else "false_neg"] += 1
        elif label == "not concept":
            counts["false_pos" if call else "true_neg"] += 1
        else:
            raise ValueError(f"unknown label {label!r}: use 'concept', 'not concept' or 'ambiguous'")
    return out


def load_set(folder: Path) -> tuple[str, list[dict], torch.Tensor]:
    """(concept, rows, images) of an audit folder, every row checked before an image is read."""
    labels = folder / "labels.json"
    if not labels.is_file():
        raise ErasureError(f"{folder} has no labels.json: pass a folder under bench/judge_audit (one per concept)")
    try:
        meta = json.loads(labels.read_text())
        concept, rows = meta["concept"], meta["images"]
    except (ValueError, KeyError, TypeError) as err:
        raise ErasureError(f"{labels} is not an audit label file ({err}): it needs \"concept\" and \"images\"") from err
    allowed = {concept, f"not {concept}", "ambiguous"}
    for row in rows:
        if row.get("label") not in allowed or not (folder / str(row.get("file"))).is_file():
            raise ErasureError(f"{labels}: row {row} needs an existing image file and a label among "
                               f"{sorted(allowed)}")
    return concept, rows, torch.stack([load_png(folder / row["file"]) for row in rows])


def audit(folder: Path, judge_dir: Path | None = None) -> str:
    from erasure_core.demo.judge import DemoJudge

    concept, rows, images = load_set(folder)
    scores = DemoJudge(concept, weights_dir=judge_dir).judge(images).scores
    normal = {concept: "concept", f"not {concept}": "not concept", "ambiguous": "ambiguous"}
    counts = tally([normal[r["label"]] for r in rows], [s >= 0.5 for s in scores],
                   [r["encoder"].split("_s")[0] for r in rows])
    lines = [f"{concept}: {len(rows)} images labelled by eye ({folder}); judge: {judge_dir or 'shipped'}"]
    for group, c in counts.items():
        called = c["true_pos"] + c["false_pos"]
        low, high = wilson_interval(c["true_pos"], called) if called else (0.0, 1.0)
        lines.append(f"  {group}: the judge called {concept} {called + c['ambiguous_called']} times: a person agrees "
                     f"{c['true_pos']}, disagrees {c['false_pos']}, ambiguous {c['ambiguous_called']} "
                     f"(agreement {c['true_pos']}/{called} [{low:.2f}, {high:.2f}]); it missed "
                     f"{c['false_neg']} {concept}s and rightly rejected {c['true_neg']}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge", type=Path, default=None, help="judge weights folder (default: the shipped one)")
    parser.add_argument("--set", type=Path, action="append", default=None,
                        help="an audit folder (default: every folder under bench/judge_audit)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        for folder in args.set or sorted(p for p in AUDIT_DIR.iterdir() if (p / "labels.json").is_file()):
            print(audit(folder, args.judge))
    except ErasureError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
