#!/usr/bin/env bash
# The GPU check of the task-weighting methods (issue #13), as one short script:
#   1. `crosstask bench --weighting all` on cuda, ResNet-34, 7 classes, bf16 autocast: every method's training
#      step against fixed (interleaved rounds) and its peak CUDA memory, at 128×256 batch 8 and 288×384 batch 6;
#   2. short fp16 trainings (GradScaler) with a gradient method (nash-mtl) and a loss-based one (famo) on
#      synthetic scenes, whose losses must stay finite and fall.
# Figures land in OUT_DIR (JSON, metrics.csv, log.txt).
#
# Usage: scripts/gpu_weighting_check.sh [OUT_DIR]      (default: $OUT when set, else gpu-weighting-check)
# Rehearsal on a CPU at toy sizes: CHECK_DEVICE=cpu CHECK_QUICK=1 scripts/gpu_weighting_check.sh /tmp/gwc
set -euo pipefail
DIR=${1:-${OUT:-gpu-weighting-check}}
DEVICE=${CHECK_DEVICE:-cuda}
WORK=${TMPDIR:-/tmp}/crosstask-gpu-weighting
CT=(python3 -m crosstask_cli)
mkdir -p "$DIR" "$WORK"
exec > >(tee "$DIR/log.txt") 2>&1

python3 - <<'EOF'
import torch, torchjd
print("torch", torch.__version__, "cuda", torch.version.cuda)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.0f} GiB", "bf16", torch.cuda.is_bf16_supported())
EOF

if [ -n "${CHECK_QUICK:-}" ]; then
    SIZES=("32 64 2"); ENC=18; BENCH=(--runs 2 --warmup 1); METHODS=fixed,famo,upgrad,nash-mtl
    SCENES=8; RENDER=(32 64); TRAIN=(--height 32 --width 64 --batch-size 4 --enc-layers 18 --epochs 2)
    AMP=(--amp off)
else
    SIZES=("128 256 8" "288 384 6"); ENC=34; BENCH=(--runs 10 --warmup 3); METHODS=all
    SCENES=64; RENDER=(128 256); TRAIN=(--height 128 --width 256 --batch-size 8 --enc-layers 34 --epochs 3)
    AMP=(--amp fp16)
fi

for size in "${SIZES[@]}"; do
    read -r H W B <<<"$size"
    echo "== bench --weighting $METHODS ${H}x${W} batch $B"
    "${CT[@]}" bench --device "$DEVICE" --enc-layers "$ENC" --height "$H" --width "$W" --batch-size "$B" \
        --amp auto "${BENCH[@]}" --quiet-wait 0 --weighting "$METHODS" --json "$DIR/weighting-${H}x${W}-b${B}.json"
done

echo "== fp16 (GradScaler) training with nash-mtl and famo"
[ -d "$WORK/raw" ] || "${CT[@]}" prepare synthetic --out "$WORK/raw" --train "$SCENES" --val 8 \
    --height "${RENDER[0]}" --width "${RENDER[1]}" --seed 0
for method in nash-mtl famo; do
    "${CT[@]}" train synthetic --data "$WORK/raw" --run-dir "$WORK/run-$method" --force --device "$DEVICE" \
        "${AMP[@]}" "${TRAIN[@]}" --weighting "$method" --max-val-batches 1 --workers 2 --seed 0
    cp "$WORK/run-$method/metrics.csv" "$DIR/train-$method-metrics.csv"
done

python3 - "$DIR" <<'EOF'
import csv, json, sys
from pathlib import Path

out = Path(sys.argv[1])
for f in sorted(out.glob("weighting-*.json")):
    r = json.loads(f.read_text())
    w = r["figures"]["weightings"]
    print(f"\n{f.stem}: {r['device']} {w['precision']}, {w['rounds_kept']} rounds kept")
    print(f"{'method':<13}{'kind':<10}{'step ms':>9}{'×fixed':>8}{'mem GB':>8}{'×fixed':>8}")
    for name, m in w["methods"].items():
        print(f"{name:<13}{m['kind']:<10}{m['median_s'] * 1e3:>9.1f}{m['ratio_vs_fixed']:>8.3f}"
              f"{m['peak_memory_gb']:>8.2f}{m['memory_vs_fixed']:>8.3f}")
for f in sorted(out.glob("train-*-metrics.csv")):
    rows = list(csv.DictReader(f.open()))
    losses = [float(r["train_total"]) for r in rows]
    print(f"{f.stem}: train_total per epoch {['%.4f' % v for v in losses]}, falls: {losses[-1] < losses[0]}")
EOF
