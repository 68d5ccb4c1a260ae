#!/usr/bin/env bash
# The final benchmark set, written to bench/results/final/ (see docs/backends.md).
# Run it on an otherwise idle machine: every number depends on nothing else using the cores.
#
#   bench/run_all.sh                      # about 20-25 minutes on 2 cores
#   DATA=/path/to/ped2 THREADS=2 bench/run_all.sh
#
# Environment: DATA (Ped2 root), WEIGHTS (lite weights), OUT, BENCH_SECONDS (per model-only
# measurement), E2E_SECONDS (per end-to-end run), THREADS (0 = every core), LABEL, PY, PAPER=0
# (skip the paper configuration), and
# VAD_CACHE_DIR (artefact cache; default a fresh-per-machine folder so every int8 model of this
# run is calibrated on real Ped2 training clips; given to calibrate-backends and bench as --cache-dir).
#
# Steps (each one's failure is reported at the end; the others still run):
#   1. vad calibrate-backends   lite weights: speed + parity per backend/precision -> OUT/backends.json
#   2. vad bench (lite)         model only: torch fp32, onnxruntime fp32/int8, openvino fp32/int8 at
#                               batch 1 and 4; paper-pipeline baseline (c) of the lite network;
#                               end to end 1, 2, 4 streams with --backend auto (the fastest backend
#                               that passed parity; without lite weights: the fastest model-only row)
#   3. vad bench (paper)        paper configuration, random weights: model only, torch fp32 and
#                               openvino int8 at batch 1, plus the paper-pipeline baseline (c)
#   4. vad evaluate             per backend/precision on Ped2 test -> OUT/parity-BACKEND-PRECISION.json
#   5. bench/parity_table.py    OUT/parity.md: micro AUC per backend/precision and delta vs torch fp32
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data/ped2}
WEIGHTS=${WEIGHTS:-weights/ped2-lite.safetensors}
OUT=${OUT:-bench/results/final}
BENCH_SECONDS=${BENCH_SECONDS:-10}
E2E_SECONDS=${E2E_SECONDS:-20}
THREADS=${THREADS:-0}
LABEL=${LABEL:-final run, machine otherwise idle}
export VAD_CACHE_DIR=${VAD_CACHE_DIR:-$HOME/.cache/vad-final}
# vad calibrate-backends writes the record here (--output) and the server of step 2 reads it
# (the service's setting VAD_BACKEND_RECORD, for --backend auto).
export VAD_BACKEND_RECORD=$OUT/backends.json
PAIRS=(torch/fp32 onnxruntime/fp32 onnxruntime/int8 openvino/fp32 openvino/int8)
VAD=("$PY" -m service.cli)

mkdir -p "$OUT"
failed=()
step() {  # step NAME COMMAND...: run, time, and remember a failure
  local name=$1
  shift
  echo "== $name: $*"
  local began=$SECONDS
  if "$@"; then
    echo "== $name: done in $((SECONDS - began)) s"
  else
    echo "== $name: FAILED (exit $?)"
    failed+=("$name")
  fi
}

write_to() {  # write_to FILE COMMAND...: the command's stdout into FILE, only when it succeeds
  local target=$1
  shift
  if "$@" > "$target.tmp"; then
    mv "$target.tmp" "$target" && echo "wrote $target"
  else
    local code=$?
    rm -f "$target.tmp"
    return "$code"
  fi
}

read -r load1 _ < /proc/loadavg
echo "load average before the run: $(cat /proc/loadavg)"
if awk -v l="$load1" 'BEGIN { exit !(l > 0.5) }'; then
  echo "warning: 1-minute load $load1 > 0.5: something else is running; the numbers will be contended"
fi
if [ ! -d "$DATA/testing" ]; then
  echo "error: $DATA is not the Ped2 root (no testing/); set DATA" >&2
  exit 2
fi

if [ -f "$WEIGHTS" ]; then
  LITE=(--weights "$WEIGHTS")
  E2E_BACKEND=auto
  step calibrate-backends "${VAD[@]}" calibrate-backends --weights "$WEIGHTS" --data "$DATA" \
    --backends torch,onnxruntime,openvino --precisions fp32,int8 --threads "$THREADS" \
    --cache-dir "$VAD_CACHE_DIR" --output "$VAD_BACKEND_RECORD"
else
  echo "note: $WEIGHTS not found: lite rows use random weights, no parity and no calibrate-backends"
  LITE=(--config lite)
  E2E_BACKEND=fastest
fi

pairs_csv=$(IFS=,; echo "${PAIRS[*]}")
step bench-lite "${VAD[@]}" bench "${LITE[@]}" --data "$DATA" --pairs "$pairs_csv" --batch-sizes 1,4 \
  --seconds "$BENCH_SECONDS" --threads "$THREADS" --streams 1,2,4 --e2e-seconds "$E2E_SECONDS" \
  --e2e-backend "$E2E_BACKEND" --cache-dir "$VAD_CACHE_DIR" --label "lite: $LABEL" --output "$OUT/lite"

[ "${PAPER:-1}" = 0 ] || step bench-paper "${VAD[@]}" bench --config paper --data "$DATA" --pairs torch/fp32,openvino/int8 \
  --batch-sizes 1 --seconds "$BENCH_SECONDS" --threads "$THREADS" --no-end-to-end \
  --cache-dir "$VAD_CACHE_DIR" --label "paper: $LABEL" --output "$OUT/paper"

if [ -f "$WEIGHTS" ]; then
  for pair in "${PAIRS[@]}"; do
    backend=${pair%/*}
    precision=${pair#*/}
    target="$OUT/parity-$backend-$precision.json"
    step "evaluate-$backend-$precision" write_to "$target" "${VAD[@]}" evaluate --weights "$WEIGHTS" \
      --data "$DATA" --backend "$backend" --precision "$precision" --cache-dir "$VAD_CACHE_DIR" --json
  done
  step parity-table write_to "$OUT/parity.md" "$PY" bench/parity_table.py "$OUT"
  cat "$OUT/parity.md" 2>/dev/null
fi

echo "load average after the run: $(cat /proc/loadavg)"
echo "results in $OUT: lite/bench.md, paper/bench.md, backends.json, parity-*.json, parity.md"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed steps: ${failed[*]}"
  exit 1
fi
