#!/usr/bin/env bash
# Builds the web app's browser side into target/site (or $SITE_ROOT), without cargo-leptos:
#   pkg/kadr.js + pkg/kadr_bg.wasm   the `app` crate with `hydrate`, via wasm-bindgen and wasm-opt
#   pkg/kadr.css                     Tailwind 4 from style/tailwind.css
#   everything in public/            copied as is
# The server side is the `kadr` binary (`kadr serve --site-root target/site`).
# Tools: wasm-bindgen-cli of exactly the wasm-bindgen version in Cargo.lock (installed here
# on first use), and the npm devDependencies (`npm ci`): binaryen's wasm-opt and tailwindcss.
# Debian's binaryen 108 must not be used: its wasm-opt breaks hydration.
set -euo pipefail
cd "$(dirname "$0")/.."

site=${SITE_ROOT:-target/site}
target_dir=${CARGO_TARGET_DIR:-target}
# A build directory of its own: other targets and profiles share nothing with this build, and
# the server's cargo builds do not block it on the directory lock.
wasm_target_dir="$target_dir/web"
log() { printf '== %s\n' "$*" >&2; }

# --- wasm-bindgen-cli, same version as the library ---------------------------------------
wb_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
[ -n "$wb_version" ] || { echo "no wasm-bindgen in Cargo.lock: run cargo generate-lockfile" >&2; exit 1; }

install_wasm_bindgen() {
  # `cargo install wasm-bindgen-cli --locked` fails: its lock file wants webpki-roots 1.0.11,
  # which the registry does not serve. Install from the unpacked crate with 1.0.10 instead.
  local work src crate
  work=$(mktemp -d)
  crate=$(ls ~/.cargo/registry/cache/*/wasm-bindgen-cli-"$wb_version".crate 2>/dev/null | head -1 || true)
  if [ -z "$crate" ]; then
    log "fetching wasm-bindgen-cli $wb_version"
    mkdir -p "$work/fetch/src"
    printf '[package]\nname = "fetch-wbg"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nwasm-bindgen-cli = "=%s"\n' \
      "$wb_version" > "$work/fetch/Cargo.toml"
    touch "$work/fetch/src/lib.rs"
    (cd "$work/fetch" && cargo fetch --quiet)
    crate=$(ls ~/.cargo/registry/cache/*/wasm-bindgen-cli-"$wb_version".crate | head -1)
  fi
  tar -xzf "$crate" -C "$work"
  src="$work/wasm-bindgen-cli-$wb_version"
  if grep -q '^name = "webpki-roots"' "$src/Cargo.lock"; then
    (cd "$src" && cargo update --quiet -p webpki-roots --precise 1.0.10)
  fi
  log "installing wasm-bindgen-cli $wb_version (several minutes, once per machine)"
  cargo install --quiet --path "$src" --locked --target-dir "$target_dir/web-tools"
  rm -rf "$work"
}

if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$wb_version" ]; then
  install_wasm_bindgen
fi

# --- npm tools -----------------------------------------------------------------------------
bin=node_modules/.bin
if [ ! -x "$bin/wasm-opt" ] || [ ! -x "$bin/tailwindcss" ] || [ ! -d node_modules/echarts ] \
  || [ ! -d node_modules/swagger-ui-dist ]; then
  log "npm ci"
  npm ci --no-audit --no-fund
fi

# --- WASM: compile, bind, shrink -------------------------------------------------------
log "cargo build app (hydrate, wasm32)"
cargo build -p app --lib --target wasm32-unknown-unknown --profile wasm-release \
  --no-default-features --features hydrate --target-dir "$wasm_target_dir"
mkdir -p "$site/pkg"
wasm-bindgen --target web --no-typescript --out-dir "$site/pkg" --out-name kadr \
  "$wasm_target_dir/wasm32-unknown-unknown/wasm-release/app.wasm"
# The features rustc enables by default for wasm32-unknown-unknown.
"$bin/wasm-opt" -Oz --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
  --enable-mutable-globals --enable-reference-types --enable-multivalue \
  "$site/pkg/kadr_bg.wasm" -o "$site/pkg/kadr_bg.wasm"

# --- CSS and static assets ---------------------------------------------------------------
log "tailwind"
"$bin/tailwindcss" --input style/tailwind.css --output "$site/pkg/kadr.css" --minify 2>/dev/null
if [ -n "$(ls -A public 2>/dev/null)" ]; then
  cp -R public/. "$site/"
fi
# Browser libraries from npm, served locally (never a CDN): ECharts draws the dashboard's
# charming charts, Swagger UI shows the OpenAPI document at /docs/.
mkdir -p "$site/vendor" "$site/docs"
cp node_modules/echarts/dist/echarts.min.js "$site/vendor/"
cp node_modules/swagger-ui-dist/swagger-ui.css node_modules/swagger-ui-dist/swagger-ui-bundle.js "$site/docs/"

# Precompressed copies, served by the server's ServeDir when the browser accepts gzip.
gzip -9 -k -f "$site/pkg/kadr_bg.wasm" "$site/pkg/kadr.js" "$site/pkg/kadr.css" "$site/vendor/echarts.min.js"
log "built $site: wasm $(stat -c %s "$site/pkg/kadr_bg.wasm") bytes ($(stat -c %s "$site/pkg/kadr_bg.wasm.gz") gzip)"
