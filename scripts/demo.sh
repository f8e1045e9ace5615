#!/usr/bin/env bash
# `make demo`: set up, then run a small end-to-end train + eval with the CLI (no service).
# Usage: scripts/demo.sh [DATA_DIR]   (default: ../shared/datasets/raccoon, else samples/raccoon-mini)
# Env: MODEL (retinanet_resnet18_fpn), EPOCHS (3), IMAGE_SIZE (320), DEVICE (auto), OUT (runs/demo-<time>)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DATA=${1:-}
if [ -z "$DATA" ]; then
  if [ -d ../shared/datasets/raccoon ]; then DATA=../shared/datasets/raccoon; else DATA=samples/raccoon-mini; fi
fi
MODEL=${MODEL:-retinanet_resnet18_fpn}
OUT=${OUT:-runs/demo-$(date +%Y%m%d-%H%M%S)}
BMGKD=.venv/bin/bmgkd
echo "== bmgkd validate --data $DATA"
"$BMGKD" validate --data "$DATA" | tail -n 5
echo "== bmgkd train --data $DATA --model $MODEL --out $OUT"
"$BMGKD" train --data "$DATA" --model "$MODEL" --out "$OUT" --image-size "${IMAGE_SIZE:-320}" \
  --epochs "${EPOCHS:-3}" --batch-size 4 --optimizer adamw --lr 1e-3 --warmup-steps 50 \
  --scheduler cosine --device "${DEVICE:-auto}" --eval-every 0
echo "== bmgkd eval --checkpoint $OUT/model.pt"
"$BMGKD" eval --data "$DATA" --checkpoint "$OUT/model.pt" --out "$OUT/eval_val.json"
echo "run folder: $OUT"
