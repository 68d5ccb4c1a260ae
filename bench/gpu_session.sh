#!/usr/bin/env bash
# One GPU lease, as one prepared script: train `paper` and three `lite` variants concurrently
# within a time budget, then run the GPU benchmark, then pack weights, cards, logs and results
# into $OUT as parts of at most 15 MiB (the device tool's limit per file is 16 MiB).
#
#   DATA=.gpu/ped2 BUDGET=320 bash bench/gpu_session.sh        (on the GPU machine, $OUT set)
#
# Rehearse it on a CPU with tiny settings first:
#   OUT=/tmp/out DEVICE=cpu PRECISION=fp32 BUDGET=60 EXTRA="--max-clips 8 --epochs 2" \
#   BENCH_ARGS="--configs lite --streams 1 --precisions fp32 --seconds 0.2" bash bench/gpu_session.sh
set -u
: "${OUT:?set OUT to the folder that comes back}"
DATA=${DATA:-.gpu/ped2}
BUDGET=${BUDGET:-320}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-bf16}
EXTRA=${EXTRA:-}
BENCH_ARGS=${BENCH_ARGS:---streams 1,8,32,128 --precisions tf32,bf16 --graph-streams 1,8,32 --ablation-streams 1,128}
WORK=${WORK:-/tmp/vad-gpu}
rm -rf "$WORK"
mkdir -p "$WORK/weights" "$WORK/logs" "$WORK/bench"
export PYTHONUNBUFFERED=1
began=$(date +%s)
say() { echo "[$(( $(date +%s) - began )) s] $*"; }

(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true) > "$WORK/logs/nvidia-smi.txt" 2>&1
python3 -c "import torch, cv2, safetensors, tqdm, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
    || { say "python environment lacks a package"; exit 3; }

declare -A PIDS RC
start_job() {
    local name=$1; shift
    # shellcheck disable=SC2086  # EXTRA holds several flags
    python3 bench/gpu_train.py --data "$DATA" --output "$WORK/weights/$name.safetensors" \
        --device "$DEVICE" --time-budget "$BUDGET" "$@" $EXTRA > "$WORK/logs/$name.log" 2>&1 &
    PIDS[$name]=$!
}
start_job ped2-paper --config paper --precision "$PRECISION"
start_job ped2-lite --config lite --precision fp32
start_job ped2-lite-w32 --config lite --base-width 32 --precision fp32
start_job ped2-lite-r256 --config lite --image-size 256 --patch 16 4 --precision fp32
say "training: ${!PIDS[*]}"

# Fail fast: a job that dies in its first minute is a bug; stop, so the lease is not spent.
for _ in $(seq 1 12); do
    sleep 5
    for name in "${!PIDS[@]}"; do
        [ -n "${RC[$name]:-}" ] && continue
        kill -0 "${PIDS[$name]}" 2>/dev/null && continue
        wait "${PIDS[$name]}"; RC[$name]=$?
        if [ "${RC[$name]}" != 0 ]; then
            say "FAILED early: $name"; tail -n 30 "$WORK/logs/$name.log"
            kill "${PIDS[@]}" 2>/dev/null
            tar cf - -C "$WORK" logs | split -b 15m - "$OUT/results.tar.part-"
            exit 4
        fi
    done
done
for name in "${!PIDS[@]}"; do
    [ -n "${RC[$name]:-}" ] || { wait "${PIDS[$name]}"; RC[$name]=$?; }
    if [ "${RC[$name]}" = 0 ]; then say "trained: $name"; else say "FAILED: $name"; fi
    tail -n 3 "$WORK/logs/$name.log"
done

# Weights first: they must come back even if the benchmark overruns the lease.
for name in ped2-paper ped2-lite-w32; do  # fp16 storage for the two large files (loading casts back)
    if [ -f "$WORK/weights/$name.safetensors" ]; then
        python3 -c "import sys; sys.path.insert(0, '.'); from model.weights import store_as; store_as(sys.argv[1], sys.argv[2])" \
            "$WORK/weights/$name.safetensors" "$WORK/weights/$name.fp16.safetensors" \
            && rm "$WORK/weights/$name.safetensors"
    fi
done
rm -rf "$WORK"/weights/*.ckpt  # optimizer state: not needed here, too large to bring back
ls -l "$WORK/weights"
tar cf - -C "$WORK" weights logs | split -b 15m - "$OUT/weights.tar.part-"

say "benchmark"
# shellcheck disable=SC2086
timeout "${BENCH_LIMIT:-200}" python3 bench/gpu_bench.py --out "$WORK/bench" $BENCH_ARGS > "$WORK/logs/bench.log" 2>&1 \
    || say "benchmark failed or ran out of time"
tail -n 40 "$WORK/logs/bench.log"
tar czf "$OUT/bench.tar.gz" -C "$WORK" logs bench
ls -l "$OUT"
say "done"
