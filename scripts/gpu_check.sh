#!/usr/bin/env bash
# GPU check of the training stack, sized for a few minutes on one GPU (at most 8): the LlamaGen VQ-16 recipe at
# 256 px (configs/tokenizer/llamagen_vq16_imagenet256.yaml: L2 + LPIPS + VQ, PatchGAN hinge GAN, EMA) on an
# ImageNet-layout folder, with CUDA, bf16 autocast and DDP on 1 GPU (torchrun --nproc_per_node 1). The GAN starts
# half-way, so the run times both phases; the JSON gets images/s of each phase (median over log windows, a phase's
# first window left out as warm-up), peak GPU memory, the step losses and the final held-out PSNR/SSIM.
#
#   scripts/gpu_check.sh --data /path/to/imagenet-sample [--steps 300] [--batch 32] [--out runs/gpu_check.json]
#   scripts/gpu_check.sh --cpu-smoke      # the same pipeline on the CPU in seconds (a tiny net, 64 px shape images)
#
# LPIPS needs torchvision's VGG16 weights: --lpips-weights PATH (or in torchvision's cache); without them the
# trunk is random (the same cost per step, which is what this measures) and the JSON says so.
# Environment: PYTHON (default: python), NPROC (default 1: DDP on one GPU).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
NPROC=${NPROC:-1}
DATA=""
STEPS=""
BATCH=""
OUT=runs/gpu_check.json
LPIPS_WEIGHTS=""
SMOKE=0
TIME_LIMIT=450  # seconds for the training command; the whole script stays under 8 minutes
while [ $# -gt 0 ]; do
  case "$1" in
    --data) DATA=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --lpips-weights) LPIPS_WEIGHTS=$2; shift 2 ;;
    --time-limit) TIME_LIMIT=$2; shift 2 ;;
    --cpu-smoke) SMOKE=1; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ "$SMOKE" = 1 ]; then STEPS=${STEPS:-4}; BATCH=${BATCH:-4}; else STEPS=${STEPS:-300}; BATCH=${BATCH:-32}; fi
RUN_DIR="${OUT%.json}_run"
CONFIG=configs/tokenizer/llamagen_vq16_imagenet256.yaml
COMMON=(run_dir="$RUN_DIR" train.steps="$STEPS" train.batch_size="$BATCH" train.batch_scope=global
        train.precision=bf16 train.log_every=10 train.image_every=0 train.ckpt_every="$STEPS"
        loss.gan.start=$((STEPS / 2)) eval.every=0 eval.num_images=64)
if [ -n "$LPIPS_WEIGHTS" ]; then
  COMMON+=(loss.perceptual.weights="$LPIPS_WEIGHTS" loss.perceptual.download=false)
  TRUNK=pretrained
elif [ "$SMOKE" = 1 ]; then
  TRUNK=random
  COMMON+=(loss.perceptual.backbone=random)
else
  TRUNK=$("$PYTHON" - <<'EOF'
from torchvision.models import VGG16_Weights

from vistok.losses.perceptual import torchvision_weights_file

print("pretrained" if torchvision_weights_file(VGG16_Weights.IMAGENET1K_V1)[0].is_file() else "random")
EOF
)
  COMMON+=(loss.perceptual.backbone="$TRUNK" loss.perceptual.download=false)
fi

if [ "$SMOKE" = 1 ]; then
  # CPU, gloo, the recipe's losses and schedule on a tiny net and the built-in shapes at 64 px
  DEVICE=cpu
  DATA="${OUT%.json}_images"  # a small ImageNet-layout folder of the built-in shapes, so the same data path runs
  "$PYTHON" - "$DATA" <<'EOF'
import sys
from pathlib import Path

from vistok.data import ShapesDataset, save_image

root = Path(sys.argv[1])
for i, item in enumerate(ShapesDataset(resolution=80, size=32, seed=0)):
    folder = root / f"class_{i % 2}"
    folder.mkdir(parents=True, exist_ok=True)
    save_image(item["image"], folder / f"{i:03d}.png")
EOF
  COMMON+=(train.log_every=1 train.num_workers=0 train.threads=1
           data.root="$DATA" data.resolution=64 eval.data.root="$DATA" eval.data.resolution=64 eval.num_images=8
           model.channels=8 model.channel_mult=[1,2,2] model.num_res_blocks=1 model.z_channels=16
           model.quantizer.codebook_size=64 loss.perceptual.net=squeeze
           loss.gan.discriminator.channels=8 loss.gan.discriminator.num_layers=2)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
  DEVICE=cuda
  if [ -z "$DATA" ] || [ ! -d "$DATA" ]; then
    echo "gpu_check.sh: --data must be an ImageNet-layout folder (root/<class>/*.JPEG), got '${DATA}'" >&2
    exit 2
  fi
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "gpu_check.sh: no CUDA device visible to $PYTHON; use --cpu-smoke to check the pipeline on the CPU" >&2
    exit 2
  }
  COMMON+=(data.root="$DATA" data.validate=false eval.data.root="$DATA" eval.data.validate=false)
fi
COMMON+=(train.device="$DEVICE")

mkdir -p "$(dirname "$OUT")"
rm -rf "$RUN_DIR"
CMD=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" train.py --no-progress
     --config "$CONFIG" "${COMMON[@]}")
echo "+ ${CMD[*]}" >&2
START=$(date +%s)
timeout "$TIME_LIMIT" "${CMD[@]}" > "$RUN_DIR.log" 2>&1 || {
  rc=$?
  tail -n 30 "$RUN_DIR.log" >&2
  echo "gpu_check.sh: training failed (exit $rc; 124 = over --time-limit $TIME_LIMIT s); log: $RUN_DIR.log" >&2
  exit 1
}
WALL=$(( $(date +%s) - START ))

"$PYTHON" - "$RUN_DIR" "$OUT" "$WALL" "$STEPS" "$BATCH" "$NPROC" "$TRUNK" "$DEVICE" "${CMD[*]}" <<'EOF'
import json
import statistics
import sys
from pathlib import Path

import torch

run_dir, out, wall, steps, batch, nproc, trunk, device, command = sys.argv[1:]
records = [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]
train = [r for r in records if "loss" in r]
evals = [r["eval"] for r in records if "eval" in r]
gan_start = int(steps) // 2


def ips(rows):
    rows = rows[1:] if len(rows) > 1 else rows  # a phase's first window holds start-up (data, allocator, cuDNN)
    return statistics.median(r["items_per_s"] for r in rows) if rows else None


# the GAN is on from step index gan_start, i.e. in the logged steps (completed steps) after gan_start
before = [r for r in train if r["step"] <= gan_start]
after = [r for r in train if r["step"] > gan_start]
result = {
    "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke test)",
    "torch": torch.__version__,
    "world_size": int(nproc),
    "precision": "bf16",
    "global_batch": int(batch),
    "steps": int(steps),
    "gan_start": gan_start,
    "lpips_trunk": trunk,
    "img_per_s_vq_lpips": ips(before),
    "img_per_s_vq_lpips_gan": ips(after),
    "peak_mem_gib": max((r.get("peak_mem_gib", 0.0) for r in train), default=0.0),
    "first_loss": train[0]["loss"] if train else None,
    "last_loss": train[-1]["loss"] if train else None,
    "heldout": evals[-1] if evals else None,
    "wall_s": int(wall),
    "command": command,
}
if not train or result["img_per_s_vq_lpips_gan"] is None:
    sys.exit(f"gpu_check.sh: {run_dir}/log.jsonl has no GAN-phase records; raise --steps")
Path(out).write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result, indent=2))
EOF
