#!/usr/bin/env bash
# Prove the CUDA path on a machine with an NVIDIA GPU, in one go (about 5 minutes):
#   bash bench/gpu_check.sh [OUT.md]        (from the repository root; OUT defaults to bench/out/gpu.md)
# 1. a venv of its own (.venv-gpu) with the gpu extra (onnxruntime-gpu, never beside the CPU
#    onnxruntime) plus torch and onnx for the test fixtures; ORT_GPU_VERSION picks the
#    onnxruntime-gpu release (default: the onnxruntime version of constraints.txt);
# 2. the CUDA tests and the I/O-binding equality test;
# 3. raw ONNX Runtime on CUDA, batch 1 and 64, with and without I/O binding;
# 4. the serving benchmark of the two fronts with the server on CUDA (VAE_SERVE_DEVICE=cuda).
# Writes one markdown file. Never part of CI: CI has no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/out/gpu.md}
command -v nvidia-smi >/dev/null && nvidia-smi -L || { echo "gpu_check: no NVIDIA GPU here (nvidia-smi)" >&2; exit 2; }
ort=${ORT_GPU_VERSION:-$(sed -n 's/^onnxruntime==//p' constraints.txt)}
venv=.venv-gpu
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
grep -v '^onnxruntime==' constraints.txt > "$venv/constraints-gpu.txt"
"$venv/bin/python" -m pip install --quiet --constraint "$venv/constraints-gpu.txt" --editable '.[gpu,dev]' \
  "onnxruntime-gpu==$ort" torch==2.13.0 onnx onnxscript scikit-learn scipy tqdm
"$venv/bin/python" -c 'import onnxruntime as o; assert "CUDAExecutionProvider" in o.get_available_providers(), o.get_available_providers()'
[ -d models/vae ] || { "$venv/bin/vae-train" --dataset digits --arch mlp --latent-dim 16 --hidden-dim 256 \
  --beta 0.1 --epochs 150 --noise gaussian:0.2 --out runs/digits-mlp && "$venv/bin/vae-export" runs/digits-mlp; }
mkdir -p "$(dirname "$out")"
{
  echo "# GPU check, $(date -u +%F) on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
  echo
  echo "Command: \`bash bench/gpu_check.sh\` (onnxruntime-gpu $ort)"
  echo
  echo '```'
  "$venv/bin/pytest" -q tests/service/test_operations.py tests/service/test_runtime.py -k "cuda or io_binding" 2>&1 | tail -3
  echo '```'
  echo
  "$venv/bin/python" -m bench.raw_runtime --device cuda --seconds 3
  echo
  VAE_SERVE_DEVICE=cuda "$venv/bin/python" -m bench.fronts_bench --repo models --model vae --seconds 5
} | tee "$out"
echo "wrote $out"
