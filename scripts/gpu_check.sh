#!/usr/bin/env bash
# The GPU check asked for by issue #6, as one short script (sized for a few minutes on one data-centre GPU):
#   1. `crosstask bench` on cuda, ResNet-34, 7 classes: fp32 and --amp, at 128×256 batch 8 and 288×384 batch 6
#      (training step, forward, direct-only predict, FLOPs, GFLOP/s against a matmul, peak memory, metric update
#      against the per-image loop, and whether the prepared loader outpaces the training step);
#   2. 100 AMP training steps on synthetic street scenes (4 epochs × 25 steps) whose training loss must fall.
# Every figure lands in OUT_DIR (JSON, metrics.csv, log.txt); the last lines print a summary table.
#
# Usage: scripts/gpu_check.sh [OUT_DIR]        (default: $OUT when set, else gpu-check)
# Rehearsal on a CPU at toy sizes (checks the script itself, not the GPU):
#        CHECK_DEVICE=cpu CHECK_QUICK=1 scripts/gpu_check.sh /tmp/gpu-check-rehearsal
set -euo pipefail
DIR=${1:-${OUT:-gpu-check}}
DEVICE=${CHECK_DEVICE:-cuda}
WORK=${TMPDIR:-/tmp}/crosstask-gpu-check  # scenes and runs stay out of DIR, which only gets figures
mkdir -p "$DIR" "$WORK"
exec > >(tee "$DIR/log.txt") 2>&1

python - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.0f} GiB", "bf16", torch.cuda.is_bf16_supported())
EOF

if [ -n "${CHECK_QUICK:-}" ]; then
    SIZES=("32 64 2"); ENC=18; BENCH=(--runs 1 --warmup 0 --matmul-size 256); TRAIN_SCENES=16; RENDER=(32 64)
    TRAIN=(--height 32 --width 64 --batch-size 4 --enc-layers 18 --epochs 2)
else
    SIZES=("128 256 8" "288 384 6"); ENC=34; BENCH=(--runs 10 --warmup 5); TRAIN_SCENES=200; RENDER=(128 256)
    TRAIN=(--height 128 --width 256 --batch-size 8 --enc-layers 34 --epochs 4)
fi

for size in "${SIZES[@]}"; do
    read -r H W B <<<"$size"
    for prec in fp32 amp; do
        amp=(--amp off); [ "$prec" = amp ] && amp=(--amp auto)
        echo "== bench ${H}x${W} batch $B $prec"
        crosstask bench --device "$DEVICE" --enc-layers "$ENC" --height "$H" --width "$W" --batch-size "$B" \
            "${amp[@]}" "${BENCH[@]}" --raw-samples 0 --json "$DIR/bench-${H}x${W}-b${B}-${prec}.json"
    done
done

echo "== 100-step AMP training on synthetic scenes"
[ -d "$WORK/raw" ] || crosstask prepare synthetic --out "$WORK/raw" --train "$TRAIN_SCENES" --val 16 \
    --height "${RENDER[0]}" --width "${RENDER[1]}" --seed 0
crosstask train synthetic --data "$WORK/raw" --run-dir "$WORK/run" --force --device "$DEVICE" --amp auto \
    "${TRAIN[@]}" --max-val-batches 2 --workers 4 --seed 0
cp "$WORK/run/metrics.csv" "$DIR/train-metrics.csv"

python - "$DIR" <<'EOF'
import csv, json, sys
from pathlib import Path

out = Path(sys.argv[1])
print(f"\n{'run':<24}{'step ms':>9}{'img/s':>8}{'GFLOP/s':>9}{'×matmul':>9}{'direct×':>9}{'metrics×':>10}"
      f"{'loader×':>9}{'mem GB':>8}")
for f in sorted(out.glob("bench-*.json")):
    r = json.loads(f.read_text())
    fig, rat = r["figures"], r["ratios"]
    mem = fig.get("peak_cuda_memory_gb", fig.get("peak_rss_gb", float("nan")))
    print(f"{f.stem[6:]:<24}{fig['train_step']['median_s'] * 1000:>9.1f}{fig['images_per_s']['train']:>8.1f}"
          f"{fig['gflops']['train_step']:>9.0f}{rat['train_vs_matmul']:>9.2f}{rat['direct_vs_full_forward']:>9.2f}"
          f"{rat['metrics_vs_loop']:>10.1f}{rat.get('loader_vs_train_step', float('nan')):>9.1f}{mem:>8.2f}")
rows = list(csv.DictReader((out / "train-metrics.csv").open()))
losses = [float(r["train_total"]) for r in rows]
steps = rows[-1]["step"]
print(f"\nAMP training: {steps} steps, train loss per epoch {', '.join(f'{x:.4f}' for x in losses)}")
if not losses[-1] < losses[0]:
    sys.exit("FAILED: the training loss did not decrease")
print("training loss decreased")
EOF
