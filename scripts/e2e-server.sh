#!/usr/bin/env bash
# The server the Playwright journeys run against: the real `kadr serve` with the bundled
# default model over the Tux Paint 8-category set, in a workspace of its own, with a category
# head trained on it.
set -euo pipefail
cd "$(dirname "$0")/.."
kadr="${CARGO_TARGET_DIR:-target}/debug/kadr"
dir=${E2E_DIR:-target/e2e}
[ -d "$dir/tuxpaint8" ] || "$kadr" make-dataset tuxpaint --out "$dir/tuxpaint8" >&2
mkdir -p "$dir/planted/mammals"
cp "$dir/tuxpaint8/mammals/apes/chimp.png" "$dir/planted/mammals/chimp-copy.png"
# A category head, so the results show its guess beside the vote (indexes the set first).
"$kadr" --home "$dir/home" train --data "$dir/tuxpaint8" >&2
exec "$kadr" --home "$dir/home" serve --addr "${E2E_ADDR:-127.0.0.1:3055}" --site-root target/site "$dir/tuxpaint8" "$dir/planted"
