#!/usr/bin/env bash
# The duplicate finder on planted copies: a copy of the Tux Paint 8-category set with five
# copies beside every third stamp (untouched, resized to 50 %, JPEG q60, cropped to 90 %,
# flipped; server/engine/examples/dupes_set.rs), `kadr dupes --json` over it with the default
# backbone, and precision / recall per kind of copy at several thresholds. Needs
# scripts/setup.sh.   THRESHOLDS="0.85 0.9 0.95" bash bench/dupes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kadr/target}"
export KADR_WEIGHTS="${KADR_WEIGHTS:-$PWD/models/tf_efficientnet_lite0/model.safetensors}"
cargo build -q -p kadr -p kadr-engine --examples --bins
bin="$CARGO_TARGET_DIR/debug"
src=${DATA:-data/tuxpaint8}
[ -d "$src" ] || "$bin/kadr" make-dataset tuxpaint --out "$src"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin/examples/dupes_set" make "$src" "$work/set"
thresholds=${THRESHOLDS:-0.8 0.85 0.9 0.95}
lowest=$(printf '%s\n' $thresholds | sort -g | head -1)
KADR_HOME="$work/home" "$bin/kadr" dupes "$work/set" --json --threshold "$lowest" >"$work/report.json"
"$bin/examples/dupes_set" score "$work/set" "$work/report.json" $thresholds
