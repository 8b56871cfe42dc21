#!/usr/bin/env bash
# Qwen2-VL caption benchmark: kadr's port (the bench_caption example) against transformers'
# Qwen2VLForConditionalGeneration (bench/gpu/qwen2vl.py), the same seeded random weights of the
# real 2B config on both sides. First a check on 3 synthetic images preprocessed by transformers:
# logits max abs diff and greedy tokens, in f32 (then the bf16 drift of each side from that f32
# reference); then caption throughput, images/s at batch 1 and 32 (448 px, 48 new tokens, eos
# ignored so both make every token), side by side.
#
# GPU machine (default): .gpu/bench_caption (built elsewhere with --features cuda, see
# bench/gpu/README.md), CUDA, bf16; python3 with torch, transformers (4.57 tested), safetensors,
# numpy, pillow; no Rust, no network. Every step gets a time limit from one deadline, a failing
# kadr step only prints its error (the transformers numbers still come back), and without
# transformers kadr still runs its own random-weight throughput.
#
# CPU proof (QWEN2VL_TINY=1): the tiny golden config (../shared/golden/qwen2vl_tiny.json), f32,
# 112 px, 16 new tokens; the binary is built with cargo when cargo exists (release, in
# $CARGO_TARGET_DIR or target/), else BIN must name it. A minute or two.
#
# Environment: OUT [/tmp/out] where qwen2vl.jsonl and the logs go; BIN; PYTHON [python3];
# CONFIG; DEVICE; DTYPE; BATCHES [1,32]; SIZE; NEW_TOKENS; BENCH_BUDGET seconds for the run
# [480, tiny 300]; WORK [/tmp/qwen2vl] where the weights (4.4 GB for 2B) and check file go;
# MIN_SECONDS [1]: each timed part (preprocess, prefill, generate) is repeated until this long
# has passed and the median is reported, on both sides.
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT=${OUT:-/tmp/out}
PYTHON=${PYTHON:-python3}
WORK=${WORK:-/tmp/qwen2vl}
BATCHES=${BATCHES:-1,32}
MIN_SECONDS=${MIN_SECONDS:-1}
if [[ ${QWEN2VL_TINY:-0} != 0 ]]; then
    MODEL=qwen2vl-tiny
    CONFIG=${CONFIG:-${KADR_SHARED:-../shared}/golden/qwen2vl_tiny.json}
    DEVICE=${DEVICE:-cpu}
    DTYPE=${DTYPE:-f32}
    SIZE=${SIZE:-112}
    NEW_TOKENS=${NEW_TOKENS:-16}
    BUDGET=${BENCH_BUDGET:-300}
    # transformers' 0.02 init leaves the tiny model's greedy tokens equal to its last prompt
    # token (tied embeddings dominate); wider weights make them vary with the image.
    PREP_ARGS=(--weights-dtype f32 --init-std 0.2)
else
    MODEL=qwen2vl-2b
    CONFIG=${CONFIG:-server/models/examples/data/qwen2vl_2b_config.json}
    DEVICE=${DEVICE:-cuda}
    DTYPE=${DTYPE:-bf16}
    SIZE=${SIZE:-448}
    NEW_TOKENS=${NEW_TOKENS:-48}
    BUDGET=${BENCH_BUDGET:-480}
    # bf16-representable weights: the file is half the size, and f32 and bf16 runs of both
    # frameworks all use exactly these values.
    PREP_ARGS=(--weights-dtype bf16)
fi
W=$WORK/weights.safetensors
CHECK=$WORK/check.safetensors
mkdir -p "$OUT" "$WORK"
JSONL=$OUT/qwen2vl.jsonl
: >"$JSONL"

log() { printf '== %s\n' "$*" >&2; }
# Seconds a step may take: its own cap, or what is left of the overall budget.
limit() {
    local left=$((BUDGET - SECONDS))
    if ((left < 5)); then left=5; fi
    echo $(($1 < left ? $1 : left))
}
# Appends the JSON lines of $1 to qwen2vl.jsonl, tagged with the model.
collect() {
    "$PYTHON" -c '
import json, sys
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("{"):
        r = json.loads(line)
        r.setdefault("model", sys.argv[2])
        print(json.dumps(r))' "$1" $MODEL >>"$JSONL" || grep '^{' "$1" >>"$JSONL" || true
}

log "machine"
if [[ $DEVICE == cuda ]]; then
    nvidia-smi -L || true
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
else
    echo "$(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
fi
have_tf=1
"$PYTHON" -c 'import sys, torch, transformers, safetensors, numpy, PIL
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "transformers", transformers.__version__)' || have_tf=0
if ((have_tf == 0)); then
    log "transformers (or torch / safetensors / numpy / pillow) is missing for $PYTHON:"
    log "  pip install transformers==4.57.1 safetensors numpy pillow   (or PYTHON=/path/to/venv/bin/python)"
    log "  the transformers steps and the check are skipped; kadr runs on its own random weights"
fi

if [[ -z ${BIN:-} ]]; then
    if [[ $DEVICE == cpu ]] && command -v cargo >/dev/null; then
        # The default `openblas` feature links -lopenblas: without libopenblas-dev, candle's gemm.
        features=()
        ldconfig -p 2>/dev/null | grep -q 'libopenblas\.so ' || features=(--no-default-features)
        log "cargo build --release -p kadr-models ${features[*]} --example bench_caption"
        CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0} cargo build --release -p kadr-models \
            "${features[@]}" --example bench_caption >&2 || log "cargo build FAILED"
        BIN=${CARGO_TARGET_DIR:-target}/release/examples/bench_caption
        SECONDS=0 # the budget is for the benchmark, not the build
    else
        BIN=.gpu/bench_caption
    fi
fi

if [[ $DEVICE == cuda ]]; then
    # The CUDA 13 user-space libraries the binary links come from the Python `nvidia` packages
    # (nvidia/cu13/lib, or nvidia/<package>/lib); libcuda.so.1 comes from the driver.
    libdirs=$("$PYTHON" - <<'EOF' || true
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
fi
if [[ -x $BIN ]]; then
    [[ $DEVICE == cuda ]] && { log "ldd $BIN"; ldd "$BIN" || true; }
else
    log "no executable $BIN: the kadr step is skipped"
fi

common=(--config "$CONFIG" --device "$DEVICE" --size "$SIZE" --new-tokens "$NEW_TOKENS"
    --min-seconds "$MIN_SECONDS")
check_ok=0
if ((have_tf)); then
    log "$MODEL: seeded random weights ($W), check inputs and f32 reference ($CHECK)"
    rc=0
    timeout "$(limit 200)" "$PYTHON" bench/gpu/qwen2vl.py prepare "${common[@]}" "${PREP_ARGS[@]}" \
        --write-weights "$W" --write-check "$CHECK" \
        >"$OUT/transformers_prepare.jsonl" 2>"$OUT/transformers_prepare.log" || rc=$?
    cat "$OUT/transformers_prepare.log" >&2
    collect "$OUT/transformers_prepare.jsonl"
    if ((rc == 0)); then check_ok=1; else log "prepare FAILED (exit $rc)"; fi
fi

if ((check_ok)); then
    log "transformers $MODEL $DEVICE $DTYPE, batches $BATCHES"
    rc=0
    timeout "$(limit 200)" "$PYTHON" bench/gpu/qwen2vl.py bench "${common[@]}" --dtype "$DTYPE" \
        --weights "$W" --check "$CHECK" --batches "$BATCHES" \
        >"$OUT/transformers.jsonl" 2>"$OUT/transformers.log" || rc=$?
    cat "$OUT/transformers.log" >&2
    cat "$OUT/transformers.jsonl"
    collect "$OUT/transformers.jsonl"
    ((rc == 0)) || log "transformers FAILED (exit $rc); see $OUT/transformers.log"
fi

if [[ -x $BIN ]]; then
    if ((check_ok)); then
        kargs=(--weights "$W" --check "$CHECK" --check-dtype f32)
    else
        kargs=(--random --json)
    fi
    log "kadr $MODEL $DEVICE $DTYPE, batches $BATCHES (${kargs[*]})"
    rc=0
    timeout "$(limit 240)" "$BIN" "${common[@]}" --dtype "$DTYPE" --batches "$BATCHES" "${kargs[@]}" \
        >"$OUT/kadr.jsonl" 2>"$OUT/kadr.log" || rc=$?
    cat "$OUT/kadr.log" >&2
    cat "$OUT/kadr.jsonl"
    collect "$OUT/kadr.jsonl"
    ((rc == 0)) || log "kadr FAILED (exit $rc); see $OUT/kadr.log"
fi

log "results ($JSONL, ${SECONDS}s)"
"$PYTHON" - "$JSONL" <<'EOF' | tee "$OUT/qwen2vl_table.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
fmt = lambda v, f: format(v, f) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"
yes = lambda v: "-" if v is None else ("yes" if v else "NO")
checks = [r for r in rows if r.get("check") or r.get("drift")]
if checks:
    print("check on 3 images, same weights, eos ignored; reference: transformers f32")
    print(f"{'impl':<13} {'dtype':<5} {'logits max diff':>15} {'all positions':>13} {'max |logit|':>11} "
          f"{'argmax eq':>9} {'tokens equal':>12} {'matching':>9} {'pixels diff':>11}")
    for r in checks:
        print(f"{r['impl']:<13} {r['dtype']:<5} {fmt(r.get('logits_max_abs_diff'), '15.3e'):>15} "
              f"{fmt(r.get('logits_all_max_abs_diff'), '13.3e'):>13} {fmt(r.get('logits_max_abs_ref'), '11.3f'):>11} "
              f"{yes(r.get('argmax_equal')):>9} {yes(r.get('tokens_equal')):>12} {r.get('tokens_matching', '-'):>9} "
              f"{fmt(r.get('pixel_max_abs_diff'), '11.3e'):>11}")
    print()
runs = {(r["impl"], r["model"], r["dtype"], r["batch"]): r for r in rows if "batch" in r}
keys = sorted({k[1:] for k in runs})
if keys:
    any_r = next(iter(runs.values()))
    print(f"caption throughput, {any_r['size']} px, {any_r['new_tokens']} new tokens, "
          f"{any_r['image_tokens']} image tokens, prompt {any_r['prompt_len']} ids "
          "(img/s = batch / (preprocess + generate))")
    print(f"{'model':<13} {'dtype':<5} {'batch':>5} {'kadr img/s':>10} {'tf img/s':>9} {'kadr/tf':>7} "
          f"{'kadr prefill s':>14} {'tf prefill s':>12} {'kadr dec tok/s':>14} {'tf dec tok/s':>12}")
    for m, d, b in keys:
        k, p = runs.get(("kadr", m, d, b)) or {}, runs.get(("transformers", m, d, b)) or {}
        ki, pi = k.get("ips"), p.get("ips")
        ratio = ki / pi if ki and pi else None
        print(f"{m:<13} {d:<5} {b:>5} {fmt(ki, '10.3f'):>10} {fmt(pi, '9.3f'):>9} {fmt(ratio, '7.2f'):>7} "
              f"{fmt(k.get('prefill_s'), '14.3f'):>14} {fmt(p.get('prefill_s'), '12.3f'):>12} "
              f"{fmt(k.get('decode_tok_s'), '14.1f'):>14} {fmt(p.get('decode_tok_s'), '12.1f'):>12}")
EOF
