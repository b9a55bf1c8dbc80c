"""Atomic file writes: a file (or folder) either appears complete or not at all, with the umask's permissions.

Each write goes to a temporary name beside the target, `.<name>.<pid>-<random>.tmp`, and is renamed onto the
target only when complete, so a kill, a full disk or a second writer of the same path never leaves a partial
file. Temporaries that a killed process left behind (its pid is gone) are removed by the next write to the
same folder. Failures are `ErasureError`s naming the user's path, not the temporary one.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import ErasureError

_TEMP_NAME = re.compile(r"^\..+\.(\d+)-[0-9a-f]{8}\.tmp$")
_LEGACY_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # tempfile.mkstemp names of earlier versions
_LEGACY_STALE_S = 3600  # a legacy temporary (no pid) untouched this long belongs to no running write


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def clean_stale_temporaries(folder: Path) -> list[Path]:
    """Remove our temporaries in `folder` whose writer is gone; returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        try:
            if match:
                stale = int(match[1]) != os.getpid() and not _pid_alive(int(match[1]))
            else:
                stale = bool(_LEGACY_TEMP_NAME.match(entry.name)) and \
                    now - entry.stat(follow_symlinks=False).st_mtime > _LEGACY_STALE_S
            if stale:
                shutil.rmtree(entry.path) if entry.is_dir(follow_symlinks=False) else os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue  # another writer's cleanup got there first, or we may not remove it: not our business
    return removed


def _temp_name(path: Path) -> Path:
    # ASCII only: native writers (safetensors) refuse names that are not valid UTF-8.
    stem = re.sub(r"[^A-Za-z0-9._+-]", "_", path.name)[:80] or "file"
    return path.parent / f".{stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp"


def write_error(path: Path, err: BaseException) -> ErasureError:
    """A user-facing error for a failed write of `path` (disk full, permissions, a file in the way...)."""
    code = getattr(err, "errno", None)
    text = str(err)
    if code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) or "No space" in text or "too large" in text:
        why = "the disk is full (or the file is larger than this file system allows); free space or write elsewhere"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS) or "ermission denied" in text:
        why = "permission denied; choose a folder you can write to"
    elif code in (errno.ENOTDIR, errno.EEXIST):
        why = "a file is in the way of a folder in that path; choose another path"
    elif code == errno.EISDIR:
        why = "it is a folder; give a file name"
    else:
        why = (getattr(err, "strerror", None) or text.splitlines()[0] if text else type(err).__name__)
    return ErasureError(f"cannot write {path}: {why}")


def prepare_output(path: str | Path, folder: bool = False) -> None:
    """Check now that `path` can be written (not a folder, no file in the way; parents created), so a long job
    does not find out at its end."""
    _prepare(Path(path), folder)


def _prepare(path: Path, folder: bool = False) -> None:
    if path.is_dir() and not folder:
        raise ErasureError(f"cannot write {path}: it is a folder; give a file name such as {path / 'out'}")
    if path.exists() and folder and not path.is_dir():
        raise ErasureError(f"cannot write the folder {path}: a file of that name exists; choose another path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise ErasureError(f"cannot write {path}: {err.filename or path.parent} is a file, not a folder; "
                           "choose another path") from err
    except OSError as err:
        raise write_error(path, err) from err
    clean_stale_temporaries(path.parent)


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds. The file gets the
    permissions a plain open() would (0666 less the umask)."""
    path = Path(path)
    _prepare(path)
    tmp = _temp_name(path)
    with _cleaned_on_failure(tmp, path):
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp-like writers (and safetensors) leave 0600
        os.replace(tmp, path)


@contextmanager
def atomic_folder(path: str | Path, replaceable=lambda folder: False):
    """Yield a temporary folder beside `path`; it becomes `path` only if the block succeeds. An existing `path`
    is replaced only when empty or when `replaceable(path)` says it is one of ours; else it is refused."""
    path = Path(path)
    _prepare(path, folder=True)
    if path.is_dir() and any(path.iterdir()) and not replaceable(path):
        raise ErasureError(f"{path} already exists and holds other files; choose a new folder or empty it")
    tmp = _temp_name(path)
    old = _temp_name(path)
    with _cleaned_on_failure(tmp, path):
        tmp.mkdir(mode=0o777)
        yield tmp
        if path.is_dir():
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except OSError:
            if old.exists() and not path.exists():
                os.replace(old, path)  # put the user's folder back
            raise
        _remove(old)


@contextmanager
def _cleaned_on_failure(tmp: Path, path: Path):
    """Any failure removes the temporary `tmp`; an OSError becomes an ErasureError naming the user's `path`."""
    try:
        yield
    except ErasureError:
        _remove(tmp)
        raise
    except OSError as err:
        _remove(tmp)
        raise write_error(path, err) from err
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    try:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        pass  # cleaned by the next write to this folder


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None):
    """Write a safetensors file atomically. Metadata values that are not strings are stored as JSON."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=meta)
        except SafetensorError as err:  # safetensors reports I/O failures (a full disk...) as its own type
            raise write_error(Path(path), err) from err


def atomic_write_text(text: str, path: str | Path):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def atomic_write_json(obj, path: str | Path):
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=False), path)


def safe_name(name: str) -> str:
    """A file-name-safe form of an encoder or probe name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("._") or "x"


def load_png(path: str | Path) -> torch.Tensor:
    """One image file as [3, H, W] float in [0, 1] (RGB): what save_png wrote, read back."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(array).permute(2, 0, 1)


def save_png(image: torch.Tensor, path: str | Path):
    """One image [3, H, W] in [0, 1] as a PNG, atomically."""
    from PIL import Image

    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
