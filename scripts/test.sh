#!/usr/bin/env bash
# Install everything the tests need, then run them all. CI runs exactly this (see .ci/run).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k encoders`.
#
# The node-pack tests (tests/comfy, marked `comfy`, the ComfyUI browser test among them) run twice: on ComfyUI
# 0.3.75 (the newest on PyPI) with everything else, then on 0.28.2 (July 2026, vendored in ../shared/vendor).
set -euo pipefail
cd "$(dirname "$0")/.."

COMFYUI_VERSIONS=(0.3.75 0.28.2)

bash scripts/setup.sh --test
# Real ComfyUI servers, each in .cache/comfyui-<version> with its own venv, for the node-pack tests.
for version in "${COMFYUI_VERSIONS[@]}"; do
    COMFYUI_VERSION="$version" bash tests/comfy/install_comfyui.sh
done
# A real browser for the report and front-end tests: Debian chromium + playwright-core from npm.
bash tests/install_browser.sh || echo "browser tests will be skipped: chromium could not be installed"
(cd tests/browser_comfy && npm ci --no-audit --no-fund --loglevel=error) || echo "the ComfyUI browser test will be skipped: npm ci failed"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
unset COMFYUI_DIR  # each run below finds its own version's install
status=0
COMFYUI_VERSION="${COMFYUI_VERSIONS[0]}" .venv/bin/python -m pytest -q "$@" || status=$?
for version in "${COMFYUI_VERSIONS[@]:1}"; do
    echo "--- the node-pack tests again, on ComfyUI $version"
    # Exit code 5 = the arguments selected no node-pack test (e.g. one test file outside tests/comfy): fine.
    rc=0
    COMFYUI_VERSION="$version" .venv/bin/python -m pytest -q -m comfy "$@" || rc=$?
    if [[ $rc -ne 0 && $rc -ne 5 ]]; then status=$rc; fi
done
exit $status
