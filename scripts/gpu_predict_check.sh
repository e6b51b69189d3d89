#!/usr/bin/env bash
# The predict part of the GPU check (speed issue, item 3, on a GPU machine), as one short script:
#   1. scripts/predict_throughput.sh on the GPU: end-to-end `crosstask predict` images/s on full-size JPEGs with
#      2 workers and with one per core, against the direct-only forward of `crosstask bench` in the same run;
#   2. steady state: the folder predicted twice in one process (the first pass warms kernels up), and once
#      more without fsync (how much of a pass waits on the disk);
#   3. the same checkpoint's predictions for 8 images on the GPU and on the CPU (fp32, no TF32): the GPU path
#      upsamples on the device, the CPU path in its workers; class ids and depth must agree.
# Usage: scripts/gpu_predict_check.sh [OUT_DIR]   (default: $OUT when set, else gpu-check)
# Environment: JPEGS (ready full-size JPEGs, else synthetic scenes are rendered), CHECK_DEVICE (default cuda).
set -euo pipefail
DIR=${1:-${OUT:-gpu-check}}
DEVICE=${CHECK_DEVICE:-cuda}
WORK=${TMPDIR:-/tmp}/crosstask-predict-check
mkdir -p "$DIR" "$WORK"
exec > >(tee "$DIR/predict-log.txt") 2>&1

python3 - <<'EOF'
import os, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "cpus", len(os.sched_getaffinity(0)))
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_properties(0).name)
EOF

DEVICE=$DEVICE WORKERS=${WORKERS:-"2 0"} JPEGS=${JPEGS:-} scripts/predict_throughput.sh "$WORK"
cp "$WORK/bench-model.json" "$DIR/predict-bench-model.json"

echo "== steady state: predict the folder twice in one process (the first pass warms the GPU's kernels up)"
python3 - "$WORK" "$DEVICE" <<'EOF'
import os, sys
from pathlib import Path
from crosstask_cli.predict import predict

work, device = Path(sys.argv[1]), sys.argv[2]
ckpt = work / "run/checkpoints/best.pt"
for label in ("first pass", "second pass", "second pass, files not fsynced (diagnostic)"):
    if "fsynced" in label:
        os.fsync = lambda fd: None
    r = predict([work / "jpeg"], ckpt, work / "preds-steady", device=device, amp="auto", force=True)
    print(f"{label}: {r.images_per_second:.2f} images/s ({len(r.written)} images)")
EOF

echo "== the same checkpoint on $DEVICE and on the CPU (fp32, no TF32), 8 images"
python3 - "$WORK" "$DEVICE" <<'EOF'
import shutil, sys
from pathlib import Path
import cv2
import numpy as np
import torch
from crosstask_cli.predict import predict

torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # compare fp32 with fp32
work, device = Path(sys.argv[1]), sys.argv[2]
(work / "eight").mkdir(exist_ok=True)
for f in sorted((work / "jpeg").glob("*.jpg"))[:8]:
    shutil.copy(f, work / "eight" / f.name)
ckpt = work / "run/checkpoints/best.pt"
for dev in (device, "cpu"):
    predict([work / "eight"], ckpt, work / f"preds-{dev}", amp="off", device=dev, force=True)
agree, gap = [], []
for f in sorted((work / "eight").glob("*.jpg")):
    a, b = (cv2.imread(str(work / f"preds-{d}" / f"{f.stem}_seg.png"), cv2.IMREAD_UNCHANGED) for d in (device, "cpu"))
    da, db = (np.load(work / f"preds-{d}" / f"{f.stem}_depth.npy") for d in (device, "cpu"))
    agree.append((a == b).mean())
    gap.append(np.abs(da - db).max() / max(np.abs(db).max(), 1e-12))
print(f"class ids agree on {min(agree):.5f}–{max(agree):.5f} of the pixels; depth max relative gap {max(gap):.2e}")
if min(agree) < 0.9995 or max(gap) > 1e-4:
    sys.exit("FAILED: GPU and CPU predictions differ by more than float rounding")
print("GPU and CPU predictions agree")
EOF
