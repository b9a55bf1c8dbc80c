"""Reading weight files from strangers: names, shapes and dtypes first, data only when asked, and checked.

`open_weights(path)` opens a `.safetensors` file (header only: safetensors maps the data lazily) or a pickle
(`.bin`/`.pt`/`.pth`/`.ckpt`, unpickled with `weights_only=True` and memory-mapped, so no code runs and no data
is read). Its `specs` tell every tensor's shape and dtype, so callers decide layout, family and sizes before any
data is read; `read(keys)` then reads just those tensors and refuses non-float dtypes and NaN/inf values, naming
the tensor. Every failure is a `ModelFormatError` naming the user's path. Writing lives in `files.py`.
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
from contextlib import ExitStack
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple

import torch

from .errors import ModelFormatError
from .layouts import short_list

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
WEIGHT_SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
# safetensors' dtype codes, named as torch names them.
_SAFETENSORS_DTYPES = {
    "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "I8": "int8", "I16": "int16",
    "I32": "int32", "I64": "int64", "U8": "uint8", "U16": "uint16", "U32": "uint32", "U64": "uint64",
    "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}
_ITEM_BYTES = {"float64": 8, "int64": 8, "uint64": 8, "float32": 4, "int32": 4, "uint32": 4,
               "float16": 2, "bfloat16": 2, "int16": 2, "uint16": 2}


class TensorSpec(NamedTuple):
    """What a file says about one tensor before its data is read."""

    shape: tuple[int, ...]
    dtype: str  # torch's name: "float16", "int64", ...

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _ITEM_BYTES.get(self.dtype, 1)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def spec_of(tensor: torch.Tensor) -> TensorSpec:
    return TensorSpec(tuple(int(n) for n in tensor.shape), dtype_name(tensor.dtype))


def _dtype_error(where: str, key: str, dtype: str) -> ModelFormatError:
    return ModelFormatError(
        f"{where}: tensor {key!r} is {dtype}; weights must be float16, bfloat16, float32 or float64 (an integer, "
        "boolean or float8 tensor would be silently cast). The file is not a plain weights file."
    )


def check_tensors(tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Refuse non-float dtypes and NaN/inf values, naming the first offending tensor."""
    for key, tensor in tensors.items():
        if dtype_name(tensor.dtype) not in FLOAT_DTYPES:
            raise _dtype_error(where, key, dtype_name(tensor.dtype))
        if tensor.numel() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ModelFormatError(
                f"{where}: tensor {key!r} holds {bad} NaN/inf value(s) of {tensor.numel()}; the weights are "
                "broken (a diverged training run or a corrupt download). Use another file."
            )


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def _native_path(path: Path, stack: ExitStack) -> str:
    """A path string native readers accept: safetensors and torch refuse names that are not valid UTF-8, so
    such files are opened by descriptor (Linux/macOS expose open descriptors as paths)."""
    text = str(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        fd = os.open(path, os.O_RDONLY)
        stack.callback(os.close, fd)
        for candidate in (f"/proc/self/fd/{fd}", f"/dev/fd/{fd}"):
            if os.path.exists(candidate):
                return candidate
        raise ModelFormatError(f"{path!r}: the file name is not valid UTF-8 here; rename the file") from None


class WeightFile:
    """An open weights file. `specs`: name -> TensorSpec for every tensor; `metadata`: safetensors' string
    metadata ({} for pickles). Use as a context manager, or call close()."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.specs: dict[str, TensorSpec] = {}
        self.metadata: dict[str, str] = {}
        self._stack = ExitStack()
        self._handle = None
        self._tensors: dict[str, torch.Tensor] = {}
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "WeightFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._handle, self._tensors = None, {}
        self._stack.close()

    @property
    def kind(self) -> str:
        return "safetensors" if self._handle is not None else "pickle"

    def _open(self) -> None:
        path = self.path
        if not path.exists():
            raise ModelFormatError(f"{path} does not exist")
        if not path.is_file():
            raise ModelFormatError(f"{path} is not a regular file")
        suffix = path.suffix.lower()
        if suffix not in WEIGHT_SUFFIXES:
            raise ModelFormatError(f"{path}: unknown weights file type {suffix!r}; use .safetensors, .bin, .pt or .ckpt")
        if not os.access(path, os.R_OK):
            raise ModelFormatError(f"cannot read {path}: permission denied")
        if path.stat().st_size == 0:
            raise ModelFormatError(f"{path} is empty (0 bytes): the download or copy did not finish. Get it again.")
        if suffix == ".safetensors":
            self._open_safetensors()
        else:
            self._open_pickle()

    def _open_safetensors(self) -> None:
        from safetensors import SafetensorError, safe_open

        try:
            handle = self._stack.enter_context(safe_open(_native_path(self.path, self._stack), framework="pt"))
            metadata = handle.metadata() or {}
            specs = {}
            for key in handle.keys():
                part = handle.get_slice(key)
                code = part.get_dtype()
                specs[key] = TensorSpec(tuple(int(n) for n in part.get_shape()), _SAFETENSORS_DTYPES.get(code, code))
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            if "allocate memory" in str(err):
                raise ModelFormatError(
                    f"{self.path} is {self.path.stat().st_size / 2**30:.1f} GiB, more than this machine can map "
                    "into memory; its header claims tensors no SD 1.x text encoder has, or the file is corrupt."
                ) from err
            raise ModelFormatError(
                f"cannot read {self.path} as safetensors ({str(err)[:300]}); the file is truncated, still "
                "downloading, or not a safetensors file. Download it again."
            ) from err
        self._handle, self.metadata, self.specs = handle, dict(metadata), specs

    def _open_pickle(self) -> None:
        obj = _load_pickle(self.path, _native_path(self.path, self._stack))
        if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]  # Lightning/ldm .ckpt wrapper
        if not isinstance(obj, Mapping):
            raise ModelFormatError(f"{self.path} holds a {type(obj).__name__}, not a state dict of tensors")
        odd = [repr(k) for k in obj if not isinstance(k, str)]
        if odd:
            raise ModelFormatError(f"{self.path}: a state dict's keys must be names; found {short_list(odd, 4)}")
        # Non-tensor entries (a step counter, an optimiser's hyperparameters) are no weights: not ours to read.
        self._tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        self.specs = {k: spec_of(v) for k, v in self._tensors.items()}

    def read(self, keys: Iterable[str] | None = None, check: bool = True) -> dict[str, torch.Tensor]:
        """The data of `keys` (default: all), after a memory bound; `check` refuses non-float and non-finite."""
        keys = list(self.specs if keys is None else keys)
        unknown = [k for k in keys if k not in self.specs]
        if unknown:
            raise ModelFormatError(f"{self.path} has no tensor(s) {short_list(unknown)}")
        need = sum(self.specs[k].nbytes for k in keys)
        if need > _physical_memory():
            raise ModelFormatError(
                f"{self.path} claims {need / 2**30:.1f} GiB of tensors, more than this machine's memory; the "
                "header is corrupt or the file is not a Stable Diffusion 1.x model."
            )
        wrong = sorted(k for k in keys if self.specs[k].dtype not in FLOAT_DTYPES)
        if check and wrong:  # refused from the header, before any data is read
            raise _dtype_error(str(self.path), wrong[0], self.specs[wrong[0]].dtype)
        try:
            out = {k: self._handle.get_tensor(k) if self._handle is not None else self._tensors[k] for k in keys}
        except (MemoryError, RuntimeError, OSError) as err:
            raise ModelFormatError(f"cannot read the tensors of {self.path} ({str(err)[:200]}); the file is "
                                   "corrupt or larger than this machine's memory") from err
        except Exception as err:  # noqa: BLE001 - safetensors' error type is private to its Rust core
            raise ModelFormatError(f"cannot read the tensors of {self.path} ({str(err)[:200]}); the file is "
                                   "truncated or corrupt. Download it again.") from err
        if check:
            check_tensors(out, str(self.path))
        return out


def _load_pickle(path: Path, native: str):
    try:
        return torch.load(native, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        # Only a legacy (non-zip) pickle is read again without mmap: a zip whose mapping failed may claim
        # more data than exists (a sparse file), and reading it in full would exhaust memory.
        if "mmap" not in str(err) or zipfile.is_zipfile(native):
            raise _pickle_error(path, err) from err
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad pickles; all mean "unreadable"
        raise _pickle_error(path, err) from err
    try:
        return torch.load(native, map_location="cpu", weights_only=True)  # legacy pickles cannot be mapped
    except Exception as err:  # noqa: BLE001
        raise _pickle_error(path, err) from err


def _pickle_error(path: Path, err: Exception) -> ModelFormatError:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    if "Weights only load failed" in text:
        # torch's own text goes on to explain how to load the file unsafely: not advice to pass on.
        why = "it holds Python objects other than tensors, which could run code, so it is not unpickled"
    else:
        why = f"{type(err).__name__}: {(text.splitlines() or [''])[0].split('. ')[0][:200]}"
    return ModelFormatError(
        f"cannot read {path} as a PyTorch weights file ({why}). It is truncated, corrupt, or not a plain state "
        "dict of tensors (only weights_only=True loading is allowed). Convert it to .safetensors or download it "
        "again."
    )


def open_weights(path: str | Path) -> WeightFile:
    """Open a weights file for inspection (see `WeightFile`)."""
    return WeightFile(path)


def read_state_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(every tensor, metadata) of a weights file, unchecked: for callers that pass tensors through as-is."""
    with open_weights(path) as weights:
        return weights.read(check=False), dict(weights.metadata)


def read_json_object(path: Path, advice: str = "") -> dict:
    """A JSON file that must hold an object (config.json, model_index.json); a clear error otherwise."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFormatError(f"cannot read {path}: {err}{advice}") from err
    if not isinstance(value, dict):
        raise ModelFormatError(f"{path} must hold a JSON object, not {type(value).__name__}")
    return value
