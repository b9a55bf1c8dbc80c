"""What makes `demo_efficacy.py` resumable: what it keeps in OUT, and the checks before anything is reused.

A full run takes hours, so it keeps its work as it goes, every file written atomically:

    OUT/run.json                                 the run's settings and the model they apply to
    OUT/CONCEPT/encoders/<method>_s<seed>.safetensors   each trained encoder (fp32, so a reloaded encoder is
                                                 the trained one bit for bit), with the erase config it was
                                                 trained with and its training time in the file's metadata
    OUT/CONCEPT/parts/part_s<seed>.json          each evaluated part (a training seed's share of the cases, or
                                                 all of them): what pooling needs from its report (every
                                                 encoder's rates, curve and timings), with the part's settings
                                                 and their fingerprint, so a run stopped in a concept's
                                                 evaluation redoes only the parts not finished
    OUT/CONCEPT/result.json                      the concept's pooled figures and timings, with the settings
                                                 that produced them and their fingerprint (sha256)

Each part trains only the encoders it needs, and only when the part itself is not saved yet, so a part's JSON
alone carries finished work to a later run: a run kept in git under bench/results/ keeps its run.json, parts
and results and leaves the encoders out (bench/results/.gitignore).

`--resume` reuses a finished concept, an evaluated part and a saved encoder only when their settings equal the
current ones exactly (a concept's settings include the judge's description, which names its weights by sha256);
anything else is refused with the differences named, never silently recomputed or mixed. One rule makes that
survive new code: an erase option added since a file was saved, and at its default now, reads as its default in
the file (every new option defaults to the behaviour before it, so the saved run is what that default does);
any other difference, a changed default included, is still refused. The erase configs are compared as they take
effect, not as they were spelled: an `--erase-option` at the preset's value is the run without it. Without
`--resume` an OUT that already holds work is refused: nothing is overwritten by accident.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from erasure_core.errors import ErasureError
from erasure_core.files import atomic_write_json

RUN_FILE = "run.json"
RESULT_FILE = "result.json"
SCHEMA = "bench.demo_efficacy.store/1"


def canonical(value):
    """JSON's view of a value (tuples become lists), so settings compare equal to what was read back from disk."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def fingerprint(record: dict) -> str:
    return hashlib.sha256(json.dumps(canonical(record), sort_keys=True).encode()).hexdigest()


def differences(saved, current, path: str = "", labels: tuple[str, str] = ("in OUT", "now")) -> list[str]:
    """Where two settings records differ, one line per leaf: 'prompts: 16 in OUT, 32 now' (`labels` name the two)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        lines = []
        for key in sorted(set(saved) | set(current)):
            where = f"{path}.{key}" if path else str(key)
            if key not in saved or key not in current:
                lines.append(f"{where}: {'missing' if key not in saved else saved[key]!r} {labels[0]}, "
                             f"{'missing' if key not in current else current[key]!r} {labels[1]}")
            else:
                lines += differences(saved[key], current[key], where, labels)
        return lines
    return [] if saved == current else [f"{path or 'settings'}: {saved!r} {labels[0]}, {current!r} {labels[1]}"]


def with_new_options(saved_config: dict) -> dict:
    """A saved erase config with the options added to EraseConfig since, at their defaults (module docstring)."""
    from erasure_core.training.config import EraseConfig

    return {**EraseConfig().to_dict(), **saved_config}


def _as_current(settings: dict) -> dict:
    """A concept or part record as the current code reads it: each erase config with_new_options."""
    if not isinstance(settings.get("erase_configs"), dict):
        return settings
    configs = {run: with_new_options(config) for run, config in settings["erase_configs"].items()}
    return {**settings, "erase_configs": configs}


def _check_saved(path: Path, saved: dict, record: dict, what: str) -> None:
    """Refuse a saved record that does not match its own fingerprint (edited by hand) or the current settings."""
    if "settings" in saved and saved.get("fingerprint") != fingerprint(saved["settings"]):
        raise ErasureError(f"{path} does not match its own settings (edited by hand?): remove it to {what}, or "
                           f"pass another --out")
    _refuse_mismatch(str(path), _as_current(saved.get("settings", {})), _as_current(record))


def _without_erase_options(record: dict) -> dict:
    """A record less the erase options as given (`--erase-option`): the effective erase configs are what count,
    and they are compared where they are kept (each concept's and part's `erase_configs`, each encoder's metadata).
    So an option given at the preset's value is the run made without it, e.g. `project_conflicts=false` resumes the
    full run of sessions 15-16, made before the preset turned it on."""
    settings = record.get("settings")
    if not isinstance(settings, dict) or not isinstance(settings.get("demo"), dict):
        return record
    demo = {k: v for k, v in settings["demo"].items() if k != "erase"}
    return {**record, "settings": {**settings, "demo": demo}}


def _refuse_mismatch(what: str, saved: dict, current: dict) -> None:
    lines = differences(canonical(_without_erase_options(saved)), canonical(_without_erase_options(current)))
    if lines:
        shown = "; ".join(lines[:8]) + (f"; and {len(lines) - 8} more" if len(lines) > 8 else "")
        raise ErasureError(f"{what} was made with other settings ({shown}): resume with the settings it was made "
                           f"with, or pass another --out")


def _holds_work(out_dir: Path) -> list[Path]:
    if not out_dir.is_dir():
        return []
    found = [out_dir / name for name in (RUN_FILE, "efficacy.json") if (out_dir / name).exists()]
    return found + sorted(out_dir.glob(f"*/{RESULT_FILE}")) + sorted(out_dir.glob("*/encoders/*.safetensors"))


def open_run(out_dir: Path, record: dict, resume: bool) -> None:
    """Before any work: without `resume`, refuse an OUT that holds work; with it, refuse one whose run.json
    differs from `record` (naming what differs). Then (re)write run.json."""
    held = _holds_work(out_dir)
    run_file = out_dir / RUN_FILE
    if held and not resume:
        more = " and more" if len(held) > 1 else ""
        raise ErasureError(f"{out_dir} already holds benchmark results ({held[0]}{more}): pass --resume to "
                           f"continue that run, or another --out")
    if resume and run_file.is_file():
        _refuse_mismatch(f"the run in {out_dir}", _read_json(run_file).get("settings", {}), record)
    elif resume and held:
        raise ErasureError(f"{out_dir} holds results but no {RUN_FILE} saying what settings made them: "
                           f"pass another --out")
    atomic_write_json({"schema": SCHEMA, "settings": canonical(record)}, run_file)


def load_result(concept_dir: Path, record: dict) -> dict | None:
    """A finished concept's {"results", "timings"} when its settings equal `record`; None when not finished;
    a finished concept made with other settings is refused."""
    return _load_record(concept_dir / RESULT_FILE, record, "recompute that concept")


def _load_record(path: Path, record: dict, what: str) -> dict | None:
    """A saved result or part when its settings equal `record`; None when there is no file; refused (named,
    with `what` to do about it) when made with other settings or edited by hand."""
    if not path.is_file():
        return None
    saved = _read_json(path)
    _check_saved(path, saved, record, what)
    return saved


def save_result(concept_dir: Path, record: dict, results: dict, timings: dict) -> None:
    _save_record(concept_dir / RESULT_FILE, record, results=results, timings=timings)


def _save_record(path: Path, record: dict, **content) -> None:
    """`content` beside the settings that made it and their fingerprint, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json({"schema": SCHEMA, "fingerprint": fingerprint(record), "settings": canonical(record),
                       **content}, path)


def part_path(concept_dir: Path, training_seeds) -> Path:
    return concept_dir / "parts" / f"part_s{'-'.join(str(seed) for seed in training_seeds)}.json"


def load_part(path: Path, record: dict) -> dict | None:
    """An evaluated part's {"report", "timing"} when its settings equal `record`; None when there is none; one
    evaluated with other settings is refused (named), never mixed into the pooled figures."""
    return _load_record(path, record, "evaluate that part again")


def save_part(path: Path, record: dict, report: dict, timing: dict) -> None:
    _save_record(path, record, report=canonical(report), timing=timing)


def encoder_path(concept_dir: Path, run: str) -> Path:
    return concept_dir / "encoders" / f"{run}.safetensors"


def save_trained_encoder(path: Path, encoder, erase_config: dict, training: dict) -> None:
    """The trained encoder in fp32 with the erase config it was trained with and its training time."""
    import torch

    from erasure_core.encoders import save_encoder

    save_encoder(encoder, path, metadata={"erase_config": canonical(erase_config), "training": training},
                 dtype=torch.float32)


def load_trained_encoder(path: Path, erase_config: dict, model):
    """(encoder on the model's device, its training timing) when `path` holds an encoder trained with
    `erase_config`; None when there is no file; refused when it was trained with another config."""
    if not path.is_file():
        return None
    import torch

    from erasure_core.encoders import load_robust_text_encoder, read_encoder

    saved = read_encoder(path)
    _refuse_mismatch(str(path), with_new_options(saved.metadata.get("erase_config", {})),
                     with_new_options(erase_config))
    encoder = load_robust_text_encoder(saved, reference=model.text_encoder, dtype=torch.float32)
    return encoder.to(model.device).requires_grad_(False).eval(), dict(saved.metadata.get("training", {}))


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ErasureError(f"{path} cannot be read ({err}): remove it to recompute that part, or pass another "
                           f"--out") from err
    if not isinstance(value, dict):
        raise ErasureError(f"{path} is not a benchmark record (not a JSON object): remove it or pass another --out")
    return value
