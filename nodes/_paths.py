"""Where the nodes read and write encoder files: ComfyUI's models/text_encoders folder, never outside it."""

from __future__ import annotations

import re
from pathlib import Path

import folder_paths

from ._errors import NodeError

TEXT_ENCODERS = "text_encoders"


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_file_stem(name: str, what: str = "file name") -> str:
    """A file name stem that cannot leave its folder: no separators, no '..', no leading dots, <= 100 chars.

    Refuses (instead of silently rewriting) a name that tries to name another folder, so the user sees why.
    """
    raw = (name or "").strip()
    if not raw:
        raise NodeError(f"the {what} is empty")
    if "/" in raw or "\\" in raw or ".." in raw or raw.startswith("~") or ":" in raw or "\x00" in raw:
        raise NodeError(
            f"the {what} {raw!r} names a path; give a plain file name (letters, digits, '.', '_', '-'): files are "
            f"only written into ComfyUI's models/{TEXT_ENCODERS} folder"
        )
    stem = raw[: -len(".safetensors")] if raw.lower().endswith(".safetensors") else raw
    stem = _SAFE.sub("_", stem).strip("._")[:100]
    if not stem:
        raise NodeError(f"the {what} {raw!r} has no usable characters")
    return stem


def text_encoder_output_path(name: str, overwrite: bool = False) -> Path:
    """A path inside the first models/text_encoders folder for `name` (sanitised), never outside it.

    Without `overwrite`, an existing file gets a numbered sibling (name_00001.safetensors...).
    """
    folder = Path(folder_paths.get_folder_paths(TEXT_ENCODERS)[0]).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    stem = safe_file_stem(name)
    path = (folder / f"{stem}.safetensors").resolve()
    counter = 1
    while path.exists() and not overwrite:
        path = (folder / f"{stem}_{counter:05d}.safetensors").resolve()
        counter += 1
    if path.parent != folder:
        raise NodeError(f"refusing to write {path}: outside {folder}")
    return path


def text_encoder_input_path(name: str) -> Path:
    """The full path of a file listed in models/text_encoders (the name must be one ComfyUI lists)."""
    if name not in folder_paths.get_filename_list(TEXT_ENCODERS):
        raise NodeError(f"{name!r} is not a file in ComfyUI's models/{TEXT_ENCODERS} folder")
    return Path(folder_paths.get_full_path_or_raise(TEXT_ENCODERS, name))
