#!/usr/bin/env bash
# Create .venv and install Robust Erasure into it (editable). Usage: bash scripts/setup.sh [--test]
#   --test        also install the test extras
#   TORCH_SPEC    the torch requirement to install first (default torch==2.13.0; e.g. a CUDA build on a GPU box)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: left unpinned, pip resolves the newest CUDA build (gigabytes) even on a CPU machine.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
if [ "${1:-}" = "--test" ]; then
  .venv/bin/python -m pip install -q -e ".[test]"
else
  .venv/bin/python -m pip install -q -e .
fi
echo "Robust Erasure installed in $(pwd)/.venv"
