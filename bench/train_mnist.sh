#!/usr/bin/env bash
# Training benchmark of docs/benchmarks.md: MNIST and Fashion-MNIST runs, then k=5000 likelihoods.
# First the default model (subpixel, as make train-mnist), its denoising and binarised
# twins and the binarised twin's k=5000 likelihood on all 10,000 test images; then the
# 32-channel subpixel and the conv and mlp runs the tables compare with.
# Usage: bash bench/train_mnist.sh [RUNS_DIR] DATA_DIR
#    or: DATA_DIR=FOLDER bash bench/train_mnist.sh [RUNS_DIR]
#   RUNS_DIR  where the run folders go (default runs/bench)
#   DATA_DIR  required: a folder holding mnist/ and fashion-mnist/, each with the standard
#             gzipped IDX files (docs/training.md, "Getting MNIST and Fashion-MNIST")
#   BINARY_EPOCHS (default 15), IWAE_IMAGES (default 500): the binarised conv run's epochs
#             and the number of test images of its k=5000 evaluation
# About 3.5 hours on 2 idle cores (a default-model epoch about 15 s, its k=5000 evaluation
# about 30 minutes, a 32-channel or conv epoch about a minute); needs .venv (make install).
# A run folder that already holds metrics.json is kept, so the script can be resumed.
# Then:  .venv/bin/python -m bench.training_report RUNS_DIR   (prints the markdown tables)
set -euo pipefail
runs=${1:-runs/bench}
data=${2:-${DATA_DIR:-}}
if [ -z "$data" ]; then
  echo "train_mnist.sh: no data folder; pass DATA_DIR (second argument or environment variable): a folder with mnist/ and fashion-mnist/ IDX files, see docs/training.md" >&2
  exit 2
fi
common=(--epochs 10 --batch-size 128 --lr 1e-3 --seed 1)
conv=(--arch conv --latent-dim 32 --hidden-dim 512)

train() {  # train OUT ARGS...: skip a run that finished before
  local out=$1; shift
  [ -f "$out/metrics.json" ] || .venv/bin/vae-train "$@" --out "$out"
}

subpixel=(--arch subpixel --latent-dim 32 --hidden-dim 512 --channels 16 --decoder-layers 1,3
          --lr 3e-3 --lr-schedule onecycle --batch-size 128 --seed 1)
train "$runs/mnist-subpixel" --dataset mnist --data-dir "$data/mnist" "${subpixel[@]}" --epochs 10
train "$runs/mnist-subpixel-denoise" --dataset mnist --data-dir "$data/mnist" "${subpixel[@]}" \
  --epochs 10 --noise gaussian:0.3
train "$runs/mnist-subpixel-binary" --dataset mnist --data-dir "$data/mnist" "${subpixel[@]}" \
  --epochs 50 --binarize
grep -q '"iwae_images": 10000' "$runs/mnist-subpixel-binary/metrics.json" ||
  .venv/bin/vae-train evaluate "$runs/mnist-subpixel-binary" --iwae-samples 5000 --eval-images 10000

# The 32-channel subpixel, twice the channels and one layer fewer: the trade-off table's row.
train "$runs/mnist-subpixel32" --dataset mnist --data-dir "$data/mnist" "${subpixel[@]}" \
  --epochs 10 --channels 32 --decoder-layers 0,1

train "$runs/mnist-conv" --dataset mnist --data-dir "$data/mnist" "${conv[@]}" "${common[@]}"
train "$runs/mnist-mlp" --dataset mnist --data-dir "$data/mnist" --arch mlp "${common[@]}"
train "$runs/mnist-conv-denoise" --dataset mnist --data-dir "$data/mnist" "${conv[@]}" \
  "${common[@]}" --noise gaussian:0.3
train "$runs/mnist-conv-binary" --dataset mnist --data-dir "$data/mnist" "${conv[@]}" --binarize \
  --epochs "${BINARY_EPOCHS:-15}" --seed 1
grep -q '"iwae_samples": 5000' "$runs/mnist-conv-binary/metrics.json" ||
  .venv/bin/vae-train evaluate "$runs/mnist-conv-binary" --iwae-samples 5000 \
    --eval-images "${IWAE_IMAGES:-500}"
# A denoising model with half the KL weight: sharper reconstructions, what Denoise wants.
train "$runs/mnist-conv-denoise-beta05" --dataset mnist --data-dir "$data/mnist" "${conv[@]}" \
  "${common[@]}" --noise gaussian:0.3 --beta 0.5
train "$runs/fashion-conv" --dataset fashion-mnist --data-dir "$data/fashion-mnist" "${conv[@]}" \
  "${common[@]}"
