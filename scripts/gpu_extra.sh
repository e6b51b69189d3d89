#!/usr/bin/env bash
# Extra GPU checks run after scripts/gpu_check.sh (same WORK folder, synthetic scenes already rendered):
#   1. fp16 with a GradScaler (forced; an H100 would otherwise pick bf16) under GradNorm and uncertainty weighting:
#      40 steps whose losses stay finite and whose GradNorm weights move;
#   2. one DDP run through torchrun on one GPU (NCCL), 2 epochs of 10 steps.
# Usage: scripts/gpu_extra.sh [OUT_DIR]
set -euo pipefail
DIR=${1:-${OUT:-gpu-check}}
WORK=${TMPDIR:-/tmp}/crosstask-gpu-check
mkdir -p "$DIR"
exec > >(tee "$DIR/extra-log.txt") 2>&1

echo "== fp16 + GradScaler"
python3 - "$WORK" <<'PY'
import csv, sys
from pathlib import Path
import torch
import crosstask_cli.engine.trainer as trainer
from crosstask_cli.engine.config import TrainConfig

work = Path(sys.argv[1])
for weighting in ("gradnorm", "uncertainty"):
    cfg = TrainConfig.for_dataset("synthetic", data=str(work / "raw"), height=128, width=256, enc_layers=34,
                                  batch_size=8, epochs=2, max_steps_per_epoch=20, max_val_batches=2, amp="fp16",
                                  device="cuda", weighting=weighting, workers=4)
    res = trainer.train(cfg, run_dir=work / f"fp16-{weighting}", force=True)
    rows = list(csv.DictReader((res.run_dir / "metrics.csv").open()))
    for r in rows:
        print(weighting, {k: round(float(v), 5) for k, v in r.items() if k.startswith(("train_total", "weight_", "val_miou"))})
    assert all(torch.isfinite(torch.tensor(float(r["train_total"]))) for r in rows), "non-finite loss under fp16"
    if weighting == "gradnorm":
        w = float(rows[-1]["weight_seg_task"])
        assert abs(w - 1.0) > 1e-4, f"GradNorm weights did not move under fp16 (seg weight {w})"
print("fp16 checks passed")
PY

echo "== torchrun DDP on one GPU"
torchrun --standalone --nproc-per-node 1 -m crosstask_cli train synthetic --data "$WORK/raw" \
    --run-dir "$WORK/ddp" --force --device cuda --amp auto --height 128 --width 256 --batch-size 8 --enc-layers 34 \
    --epochs 2 --max-steps-per-epoch 10 --max-val-batches 2 --workers 4
cp "$WORK/ddp/metrics.csv" "$DIR/ddp-metrics.csv"
echo "ddp run finished"
