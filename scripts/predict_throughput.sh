#!/usr/bin/env bash
# End-to-end `crosstask predict` throughput on full-size (2048×1024) JPEGs against the model's direct-only
# forward throughput from `crosstask bench`, both in this run on this machine (the speed issue's item 3).
# Usage: scripts/predict_throughput.sh WORKDIR [N_IMAGES]    (ResNet-34, 7 classes, 128×256, batch 8, --amp auto)
# Environment: DEVICE (default auto), WORKERS (predict's --workers values to try, default "0" = one per core),
# JPEGS (a folder of ready JPEGs to use instead of rendering synthetic scenes).
set -euo pipefail
WORK=${1:?work folder}
N=${2:-64}
DEVICE=${DEVICE:-auto}
mkdir -p "$WORK"
if [ -n "${JPEGS:-}" ]; then
    rm -rf "$WORK/jpeg" && cp -r "$JPEGS" "$WORK/jpeg"
elif [ ! -d "$WORK/jpeg" ]; then
    crosstask prepare synthetic --out "$WORK/full" --train 1 --val "$N" --height 1024 --width 2048 --seed 3
    python - "$WORK" <<'PY'
import sys
from pathlib import Path
import cv2
work = Path(sys.argv[1])
(work / "jpeg").mkdir()
for i, png in enumerate(sorted((work / "full/leftImg8bit/val").rglob("*.png"))):
    cv2.imwrite(str(work / "jpeg" / f"{i:03d}.jpg"), cv2.imread(str(png)), [cv2.IMWRITE_JPEG_QUALITY, 90])
PY
fi
N=$(find "$WORK/jpeg" -name '*.jpg' | wc -l)
if [ ! -f "$WORK/run/checkpoints/best.pt" ]; then  # a paper-sized model; its weights do not matter for speed
    crosstask prepare synthetic --out "$WORK/small" --train 8 --val 8 --height 128 --width 256 --seed 0
    crosstask train synthetic --data "$WORK/small" --run-dir "$WORK/run" --force --enc-layers 34 --height 128 \
        --width 256 --batch-size 8 --epochs 1 --max-steps-per-epoch 1 --max-val-batches 1 --workers 0 \
        --device "$DEVICE"
fi
crosstask bench --part model --enc-layers 34 --height 128 --width 256 --batch-size 8 --runs 5 --warmup 2 \
    --device "$DEVICE" --json "$WORK/bench-model.json" | grep -i "direct"
for workers in ${WORKERS:-0}; do
    rm -rf "$WORK/preds"
    crosstask predict "$WORK/jpeg" --ckpt "$WORK/run/checkpoints/best.pt" --out "$WORK/preds" --batch-size 8 \
        --device "$DEVICE" --workers "$workers" | tee "$WORK/predict.log"
    python - "$WORK" "$workers" "$N" <<'PY'
import json, re, sys
from pathlib import Path
work, workers, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
direct = json.loads((work / "bench-model.json").read_text())["figures"]["images_per_s"]["predict_direct"]
line = (work / "predict.log").read_text()
ips = float(re.search(r"\(([\d.]+) images/s\)", line).group(1))
print(f"predict --workers {workers}: {ips:.2f} images/s over {n} full-size JPEGs; bench direct-only "
      f"{direct:.2f} images/s; ratio {ips / direct:.3f}")
PY
done
