#!/usr/bin/env bash
# ConvNeXt-Tiny embedding throughput on a GPU: kadr's CUDA build (.gpu/bench_embed, built on
# another machine, see bench/gpu/README.md) against PyTorch + timm eager (bench/embed.py), same
# seeded random weights, f16 and bf16, batches 1, 32, 256. Run from the repository root on the
# GPU machine; needs python3 with torch, timm, safetensors and the CUDA 13 runtime libraries of
# the `nvidia-*` Python packages (no Rust, no network). Finishes within ~4 minutes: every step
# gets a time limit from one overall deadline, and a failing kadr step only prints its error.
#
# Environment: OUT [/tmp/out] where gpu.jsonl and the logs go; BIN [.gpu/bench_embed];
# BENCH_SECONDS [3] timed seconds per batch size; BENCH_BUDGET [225] seconds for the whole run.
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT=${OUT:-/tmp/out}
BIN=${BIN:-.gpu/bench_embed}
SECS=${BENCH_SECONDS:-3}
BUDGET=${BENCH_BUDGET:-225}
MODEL=convnext_tiny
BATCHES=1,32,256
W=/tmp/w.safetensors
CHECK=/tmp/check.safetensors
mkdir -p "$OUT"
JSONL=$OUT/gpu.jsonl
: >"$JSONL"

log() { printf '== %s\n' "$*" >&2; }
# Seconds a step may take: its own cap, or what is left of the overall budget.
limit() {
    local left=$((BUDGET - SECONDS))
    if ((left < 5)); then left=5; fi
    echo $(($1 < left ? $1 : left))
}

log "machine"
nvidia-smi -L || true
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
nvcc --version 2>/dev/null | tail -2 || echo "nvcc not on PATH"
python3 -c 'import sys, torch, timm; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "timm", timm.__version__)' || true

# The CUDA 13 user-space libraries the binary links (cuBLAS, cuBLASLt, cudart, cuRAND, NVRTC)
# come from the Python `nvidia` packages: either the merged nvidia/cu13/lib layout or one
# nvidia/<package>/lib per package. libcuda.so.1 comes from the driver.
libdirs=$(python3 - <<'EOF' || true
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except Exception:
    roots = []
want = ("libcublas*.so*", "libcublasLt*.so*", "libcudart*.so*", "libcurand*.so*", "libnvrtc*.so*")
dirs = []
for root in roots:
    for d in sorted(glob.glob(os.path.join(root, "cu13", "lib")) + glob.glob(os.path.join(root, "*", "lib"))
                    + glob.glob(os.path.join(root, "*", "lib64"))):
        if d not in dirs and any(glob.glob(os.path.join(d, p)) for p in want):
            dirs.append(d)
print(":".join(dirs))
EOF
)
export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
log "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
if [[ -x $BIN ]]; then
    log "ldd $BIN"
    ldd "$BIN" || true
else
    log "no executable $BIN: kadr steps will be skipped"
fi

log "seeded random $MODEL weights and reference features"
timeout "$(limit 60)" python3 bench/embed.py --model $MODEL --make-weights $W
check_args=(--check $CHECK)
timeout "$(limit 60)" python3 bench/embed.py --model $MODEL --weights $W --write-check $CHECK --device cuda ||
    { log "writing $CHECK FAILED: kadr runs without --check"; check_args=(); }

for d in f16 bf16; do
    log "kadr $MODEL cuda $d"
    if [[ -x $BIN ]]; then
        rc=0
        timeout "$(limit 70)" "$BIN" --model $MODEL --weights $W --device cuda --dtype $d \
            --batches $BATCHES --seconds "$SECS" "${check_args[@]}" \
            >"$OUT/kadr_$d.jsonl" 2>"$OUT/kadr_$d.log" || rc=$?
        cat "$OUT/kadr_$d.log" >&2
        cat "$OUT/kadr_$d.jsonl"
        # The check line carries no dtype/impl: add them so gpu.jsonl stands on its own.
        python3 -c '
import json, sys
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("{"):
        r = json.loads(line)
        r.setdefault("impl", "kadr"); r.setdefault("dtype", sys.argv[2]); r.setdefault("model", sys.argv[3])
        print(json.dumps(r))' "$OUT/kadr_$d.jsonl" $d $MODEL >>"$JSONL" || true
        ((rc == 0)) || log "kadr $d FAILED (exit $rc); see $OUT/kadr_$d.log"
    fi
    log "pytorch $MODEL cuda $d"
    rc=0
    timeout "$(limit 60)" python3 bench/embed.py --model $MODEL --weights $W --device cuda --dtype $d \
        --batches $BATCHES --seconds "$SECS" >"$OUT/pytorch_$d.jsonl" 2>"$OUT/pytorch_$d.log" || rc=$?
    cat "$OUT/pytorch_$d.log" >&2
    cat "$OUT/pytorch_$d.jsonl"
    grep '^{' "$OUT/pytorch_$d.jsonl" >>"$JSONL" || true
    ((rc == 0)) || log "pytorch $d FAILED (exit $rc)"
done

log "results ($JSONL, ${SECONDS}s)"
python3 - "$JSONL" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for r in rows:
    if "check" in r:
        print(f"check kadr {r.get('dtype')}: max_abs_diff {r['max_abs_diff']:.4g}, min_cosine {r['min_cosine']:.6f}")
runs = {(r["impl"], r["model"], r["dtype"], r["batch"]): r for r in rows if "batch" in r}
order = {"f32": 0, "f16": 1, "bf16": 2}
keys = sorted({k[1:] for k in runs}, key=lambda k: (k[0], order.get(k[1], 9), k[2]))
print(f"{'model':<14} {'dtype':<5} {'batch':>5} {'kadr img/s':>11} {'pytorch img/s':>14} {'kadr/pt':>8} {'kadr ms':>9} {'pytorch ms':>11}")
fmt = lambda v, f: format(v, f) if v is not None else "-"
for m, d, b in keys:
    k, p = runs.get(("kadr", m, d, b)), runs.get(("pytorch", m, d, b))
    ki, pi = (k or {}).get("ips"), (p or {}).get("ips")
    ratio = ki / pi if ki and pi else None
    print(f"{m:<14} {d:<5} {b:>5} {fmt(ki, '11.1f'):>11} {fmt(pi, '14.1f'):>14} {fmt(ratio, '8.3f'):>8} "
          f"{fmt((k or {}).get('ms_per_batch'), '9.2f'):>9} {fmt((p or {}).get('ms_per_batch'), '11.2f'):>11}")
EOF
