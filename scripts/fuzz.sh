#!/usr/bin/env bash
# Fuzzes the image upload path (decode + preprocess, server/engine/src/decode.rs and preprocess.rs)
# with cargo-fuzz: libFuzzer under AddressSanitizer, on nightly Rust. The fuzz crate is
# server/engine/fuzz, a workspace of its own (the root workspace excludes it) with its own target dir.
#
#   scripts/fuzz.sh                       # 10 minutes of decode_preprocess
#   FUZZ_SECONDS=60 scripts/fuzz.sh       # shorter
#   FUZZ_KEEP_GOING=1 scripts/fuzz.sh     # fork mode: record crashes/timeouts/OOMs and go on
#   FUZZ_REGRESSIONS=1 scripts/fuzz.sh    # only replay server/engine/fuzz/seeds/regressions/*
#   scripts/fuzz.sh -- -runs=0            # extra arguments go to libFuzzer (after `--`)
#
# Tools are installed on first use: a nightly toolchain (rustup) and cargo-fuzz at a pinned
# version. The seeds (server/engine/fuzz/seeds/<target>, made by server/engine/fuzz/make_seeds.py) are read
# only; inputs libFuzzer finds go to server/engine/fuzz/corpus/<target> and crashes to
# server/engine/fuzz/artifacts/<target>, both ignored by git. A crash worth keeping goes into
# server/engine/fuzz/seeds/regressions/ by hand; those are replayed by FUZZ_REGRESSIONS=1 (not in the
# timed run, where an unfixed one would stop libFuzzer at once).
# On a shared machine: CARGO_BUILD_JOBS=1 nice -n 19 scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
target=${FUZZ_TARGET:-decode_preprocess}
seconds=${FUZZ_SECONDS:-600}
fuzz_dir=server/engine/fuzz
log() { printf '== %s\n' "$*" >&2; }

# --- tools ---------------------------------------------------------------------------------
if ! rustup toolchain list | grep -q '^nightly'; then
  log "installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if [ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi
log "$(cargo +nightly --version); $(cargo fuzz --version)"

# --- corpus --------------------------------------------------------------------------------
seeds="$fuzz_dir/seeds/$target"
corpus="$fuzz_dir/corpus/$target"
mkdir -p "$corpus" "$fuzz_dir/artifacts/$target"
cp -n "$seeds"/* "$corpus"/ 2>/dev/null || true

# --- run -----------------------------------------------------------------------------------
[ "${1:-}" = "--" ] && shift
# An explicit target dir: a CARGO_TARGET_DIR in the environment (CI sets one) must not mix the
# sanitizer build into the server's.
run=(cargo +nightly fuzz run --fuzz-dir "$fuzz_dir" --target-dir "$fuzz_dir/target" "$target")
if [ -n "${FUZZ_REGRESSIONS:-}" ]; then
  # Files, not directories: libFuzzer runs each once and stops at the first failure.
  shopt -s nullglob
  inputs=()
  for f in "$fuzz_dir"/seeds/regressions/*; do
    [ "${f##*.}" = md ] || inputs+=("$f")   # not the README
  done
  [ ${#inputs[@]} -gt 0 ] || { log "no regression inputs"; exit 0; }
  set -x
  exec "${run[@]}" "${inputs[@]}" -- -rss_limit_mb=2048 -timeout=10 "$@"
fi
libfuzzer_args=(
  -max_total_time="$seconds"
  -rss_limit_mb=2048
  -timeout=10
  -max_len=262144
  -print_final_stats=1
)
if [ -n "${FUZZ_KEEP_GOING:-}" ]; then
  libfuzzer_args+=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
fi
set -x
exec "${run[@]}" "$corpus" "$seeds" -- "${libfuzzer_args[@]}" "$@"
