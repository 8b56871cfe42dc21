#!/usr/bin/env bash
# The main job on the bundled default: set up, build the Tux Paint 8-category set, index it
# with EfficientNet-Lite0, print its leave-one-out evaluation, and serve the web app.
set -euo pipefail
cd "$(dirname "$0")/.."
kadr="${CARGO_TARGET_DIR:-target}/debug/kadr"
bash scripts/setup.sh
data=${DATA:-data/tuxpaint8}
[ -d "$data" ] || "$kadr" make-dataset tuxpaint --out "$data"
"$kadr" eval --data "$data"
echo "serving on http://${ADDR:-127.0.0.1:3000}" >&2
exec "$kadr" serve "$data"
