#!/usr/bin/env bash
# Make .venv-triton-server: NVIDIA Triton Inference Server 2.51.0 (the binary and Python backend
# that PyPI's nvidia-pytriton 0.7.0 bundles) and ONNX Runtime, the peer of bench/triton_peer.py.
# Usage: bash bench/triton_venv.sh [PYTHON]   (about 40 s and 450 MB; needs PyPI; x86-64 Linux
# with glibc >= 2.35, PYTHON 3.8-3.13 built with --enable-shared, as pyenv's and Debian's are)
# A throwaway venv apart from .venv: PyTriton needs numpy < 2, ours is 2.x. Only the tritonserver
# binary is used, never PyTriton's Python API (its proxy backend adds two process hops).
set -euo pipefail
python=${1:-python3}
venv=.venv-triton-server
# onnxruntime and tritonclient as in constraints.txt: the peer runs the graph with the same
# kernels as ours. numpy 1.26.4: the newest that nvidia-pytriton allows.
pins="nvidia-pytriton==0.7.0 onnxruntime==1.32.0 tritonclient==2.66.0 numpy==1.26.4"
installed() {
  local freeze pin
  freeze=$("$venv/bin/python" -m pip freeze 2>/dev/null) || return 1
  for pin in $pins; do grep -qix "$pin" <<< "$freeze" || return 1; done
}
if ! installed; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
  echo "installing $pins into $venv (log: $venv/install.log)"
  # shellcheck disable=SC2086  # one word per pin
  "$venv/bin/pip" install --progress-bar off $pins > "$venv/install.log" 2>&1 ||
    { tail -5 "$venv/install.log"; echo "triton_venv.sh: pip failed; see $venv/install.log" >&2; exit 1; }
fi
"$venv/bin/python" -c 'import pathlib, pytriton
print(pathlib.Path(pytriton.__file__).parent / "tritonserver/bin/tritonserver")'
