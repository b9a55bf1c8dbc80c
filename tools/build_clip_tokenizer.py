"""Rebuild the shipped CLIP BPE tokenizer files from open_clip's vocabulary archive.

The standard SD1 tokenizer (`vocab.json`, `merges.txt`) lives on a model hub we cannot reach; PyPI's
`open-clip-torch` wheel ships the original BPE merge list instead. CLIP builds its vocabulary from that list
deterministically, so we rebuild the same two files here once and ship them in `erasure_core/data/`.

Usage: python tools/build_clip_tokenizer.py path/to/bpe_simple_vocab_16e6.txt.gz
"""

import gzip
import json
import sys
from pathlib import Path

N_MERGES = 49152 - 256 - 2  # CLIP keeps this many merges: 49,408 ids = 2 x 256 bytes + merges + 2 specials
OUT_DIR = Path(__file__).resolve().parents[1] / "erasure_core" / "data" / "clip_tokenizer"


def byte_symbols() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values, in CLIP's vocabulary order.

    Printable bytes map to themselves and come first; the other bytes map to chr(256 + n) and follow.
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def main(archive: str) -> None:
    lines = gzip.open(archive).read().decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]
    tokens = byte_symbols()
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == 49408, len(tokens)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (OUT_DIR / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    print(f"wrote {len(tokens)} tokens and {len(merges)} merges to {OUT_DIR}")


if __name__ == "__main__":
    main(sys.argv[1])
