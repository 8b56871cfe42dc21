#!/usr/bin/env bash
# The test command: sets up the machine (scripts/setup.sh), then runs every test —
# unit and golden tests, the Tux Paint evaluation, and the Playwright journeys in Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export KADR_WEIGHTS="$PWD/models/tf_efficientnet_lite0/model.safetensors"
cargo test --workspace --no-fail-fast -- --test-threads 1
npx playwright test -c end2end/playwright.config.ts
