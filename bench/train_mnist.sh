#!/usr/bin/env bash
# Training benchmark of issue 3: MNIST and Fashion-MNIST runs, then k=5000 likelihoods.
# Usage: bash bench/train_mnist.sh [RUNS_DIR]   (tens of minutes on 2 cores)
# Then:  .venv/bin/python bench/training_report.py RUNS_DIR >> docs/benchmarks.md
set -euo pipefail
runs=${1:-runs/bench}
data=${DATA_DIR:-../shared/data}
train=".venv/bin/vae-train"
common=(--epochs 10 --batch-size 128 --lr 1e-3 --seed 1)

$train --dataset mnist --data-dir "$data/mnist" --arch conv --latent-dim 32 --hidden-dim 512 \
  "${common[@]}" --out "$runs/mnist-conv"
$train --dataset mnist --data-dir "$data/mnist" --arch mlp "${common[@]}" --out "$runs/mnist-mlp"
$train --dataset mnist --data-dir "$data/mnist" --arch conv --latent-dim 32 --hidden-dim 512 \
  "${common[@]}" --noise gaussian:0.3 --out "$runs/mnist-conv-denoise"
$train --dataset fashion-mnist --data-dir "$data/fashion-mnist" --arch conv --latent-dim 32 \
  --hidden-dim 512 "${common[@]}" --out "$runs/fashion-conv"
$train --dataset mnist --data-dir "$data/mnist" --arch conv --latent-dim 32 --hidden-dim 512 \
  --binarize --epochs "${BINARY_EPOCHS:-30}" --seed 1 --out "$runs/mnist-conv-binary"
$train evaluate "$runs/mnist-conv-binary" --iwae-samples 5000 --eval-images "${IWAE_IMAGES:-1000}"
