"""Evaluation over many processes: cases are independent, so they can be sharded across processes/GPUs with
`accelerate`. Each process evaluates its share (`evaluate_sharded`), writes images and
`shards/shard-RANK-of-N.json` into the shared output folder, and the main process merges the shards
(`merge_shards`) into one report:

    accelerate launch --num_processes 4 -m erasure_core evaluate --model ... --encoder erased=enc.safetensors \\
        --prompts i2p_nudity.csv --probe unlearndiffatk --judge nudenet:unlearndiffatk --out report/ --shard

(`--shard` calls `evaluate_sharded`; on one machine with 4 GPUs each process takes one GPU.) Shards already
on disk can be merged again later with `merge_shard_folder(out_dir)`.
"""

from __future__ import annotations

import json
from pathlib import Path

from .attacks.replay import as_cases
from .errors import ErasureError
from .evaluate import evaluate, summarize, sum_timings
from .files import atomic_write_json
from .models import SDModel


def merge_shards(shards: list[dict]) -> dict:
    """One result from shards of the same evaluation (same model, judge, probes, settings, encoders)."""
    if not shards:
        raise ErasureError("no shards to merge")
    first = shards[0]
    for key in ("schema", "model", "judge", "generation", "probes"):
        if any(s[key] != first[key] for s in shards):
            raise ErasureError(f"shards disagree on {key!r}: they come from different evaluations")
    names = list(first["encoders"])
    if any(list(s["encoders"]) != names for s in shards):
        raise ErasureError("shards evaluated different encoders: they come from different evaluations")
    merged = {k: first[k] for k in ("schema", "model", "judge", "generation", "probes")}
    merged["cases"] = _merge_by_index([s["cases"] for s in shards], "cases")
    merged["retain_cases"] = _merge_by_index([s["retain_cases"] for s in shards], "retain cases")
    merged["encoders"] = {
        name: {
            "cases": _merge_by_index([s["encoders"][name]["cases"] for s in shards], f"{name} cases"),
            "retain": _merge_by_index([s["encoders"][name]["retain"] for s in shards], f"{name} retain"),
            # every shard's time, summed (shards run side by side: the wall seconds add up to more than the run)
            "timings": sum_timings(s["encoders"][name]["timings"] for s in shards
                                   if "timings" in s["encoders"][name]),
        }
        for name in names
    }
    merged["curve_cases"] = first.get("curve_cases")  # every shard was given the same (global) indices
    merged["shards"] = len(shards)
    return summarize(merged)


def _merge_by_index(lists: list[list[dict]], what: str) -> list[dict]:
    items = [item for lst in lists for item in lst]
    indices = [item["index"] for item in items]
    if len(set(indices)) != len(indices):
        raise ErasureError(f"shards overlap: the same {what} index appears twice")
    return sorted(items, key=lambda item: item["index"])


def shard_path(out_dir: str | Path, rank: int, world: int) -> Path:
    return Path(out_dir) / "shards" / f"shard-{rank:03d}-of-{world:03d}.json"


def merge_shard_folder(out_dir: str | Path) -> dict:
    """Merge every shard file under out_dir/shards and write the report."""
    from .report import write_report

    files = sorted((Path(out_dir) / "shards").glob("shard-*-of-*.json"))
    if not files:
        raise ErasureError(f"no shard files in {Path(out_dir) / 'shards'}; run evaluate_sharded first")
    worlds = {f.stem.split("-of-")[1] for f in files}
    if len(worlds) != 1 or len(files) != int(worlds.pop()):
        raise ErasureError(f"incomplete or mixed shard set in {Path(out_dir) / 'shards'}: {[f.name for f in files]}")
    merged = merge_shards([json.loads(f.read_text(encoding="utf-8")) for f in files])
    write_report(merged, out_dir)
    return merged


def evaluate_sharded(model: SDModel, encoders, prompts, probes, judge, *, out_dir, seeds=(0,), retain_prompts=(),
                     **kwargs) -> dict:
    """`evaluate` over this process's share of the cases (run under `accelerate launch`; one process works
    too). Every process writes its shard; the main process waits for all and merges them into the report.
    Returns the merged result on the main process and this process's shard elsewhere."""
    from accelerate import PartialState

    state = PartialState()
    model.to(device=state.device)
    for encoder in encoders.values():
        encoder.to(state.device)
    n_cases = len(as_cases(prompts, seeds))
    n_retain = len(as_cases(retain_prompts, seeds)) if retain_prompts else 0
    with state.split_between_processes(list(range(n_cases))) as mine:
        my_cases = list(mine)
    with state.split_between_processes(list(range(n_retain))) as mine:
        my_retain = list(mine)
    shard = evaluate(model, encoders, prompts, probes, judge, seeds=seeds, retain_prompts=retain_prompts,
                     out_dir=out_dir, case_indices=my_cases, retain_indices=my_retain, write_report=False, **kwargs)
    atomic_write_json(shard, shard_path(out_dir, state.process_index, state.num_processes))
    state.wait_for_everyone()
    if state.is_main_process:
        return merge_shard_folder(out_dir)
    return shard
