#!/usr/bin/env bash
# The test command: sets up the machine (scripts/setup.sh), then runs every test —
# unit and golden tests, the Tux Paint evaluation, the Milvus backend against a real Milvus
# server, and the Playwright journeys in Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export KADR_WEIGHTS="$PWD/models/tf_efficientnet_lite0/model.safetensors"
# The milvus feature: the Milvus backend's tests run against a real Milvus server.
cargo test --workspace --features kadr/milvus --no-fail-fast -- --test-threads 1
npx playwright test -c end2end/playwright.config.ts
