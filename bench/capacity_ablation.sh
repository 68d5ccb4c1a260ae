#!/usr/bin/env bash
# Capacity and erasure ablations of the lite model on Ped2: short runs with one schedule each, so
# they compare with each other (not with the shipped 12-epoch weights). About 1.5 hours on 2 idle cores.
#
#   bench/capacity_ablation.sh                # DATA=../shared/data/ped2 OUT=runs/abl
#
# Runs (3 epochs each, cosine schedule over those 3 epochs, the lite preset otherwise):
#   base     128 px, width 16            (the lite preset)
#   r192     192 px, width 16            (score window scaled with the size: 24x24 / 6)
#   w24      128 px, width 24
#   noerase  128 px, width 16, --no-erasure
#   noerase-e6  noerase resumed to 6 epochs (a warm restart of the cosine)
# Each is evaluated with `vad evaluate --localization --json` into OUT/NAME-eval.json; the summary
# table is printed by bench/capacity_table.py OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/ped2}
OUT=${OUT:-runs/abl}
VAD=${VAD:-.venv/bin/vad}
mkdir -p "$OUT"

train() {  # train NAME EPOCHS [extra vad train flags...]; resumes an interrupted run
  local name=$1 epochs=$2
  shift 2
  local resume=()
  [ -f "$OUT/$name.ckpt/last.pt" ] && resume=(--resume)
  "$VAD" train --config lite "$@" --data "$DATA" --output "$OUT/$name.safetensors" \
    --checkpoint-dir "$OUT/$name.ckpt" --epochs "$epochs" --threads 2 "${resume[@]}"
}

evaluate() {  # evaluate NAME
  "$VAD" evaluate --weights "$OUT/$1.safetensors" --data "$DATA" --localization --json > "$OUT/$1-eval.json"
}

for spec in "base|" "r192|--image-size 192" "w24|--width 24" "noerase|--no-erasure"; do
  name=${spec%%|*}
  read -r -a extra <<< "${spec#*|}"
  [ -f "$OUT/$name.safetensors" ] || train "$name" 3 "${extra[@]}"
  [ -f "$OUT/$name-eval.json" ] || evaluate "$name"
done
# The no-erasure run, continued from its epoch-3 checkpoint to 6 epochs.
[ -f "$OUT/noerase-e6.safetensors" ] || "$VAD" train --config lite --no-erasure --data "$DATA" \
  --output "$OUT/noerase-e6.safetensors" --checkpoint-dir "$OUT/noerase.ckpt" --epochs 6 --threads 2 --resume
[ -f "$OUT/noerase-e6-eval.json" ] || evaluate noerase-e6
.venv/bin/python bench/capacity_table.py "$OUT"
