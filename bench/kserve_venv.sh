#!/usr/bin/env bash
# Make .venv-kserve: KServe's Python ModelServer and ONNX Runtime, the peer of bench/serve_bench.
# Usage: bash bench/kserve_venv.sh [PYTHON]   (about 1 minute and 400 MB; needs PyPI)
# A throwaway venv apart from .venv, so KServe's pins never touch ours.
set -euo pipefail
python=${1:-python3}
venv=.venv-kserve
[ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import kserve, onnxruntime" 2>/dev/null && exit 0
rm -rf "$venv"
"$python" -m venv "$venv"
echo "installing kserve==0.21.0 and onnxruntime into $venv (log: $venv/install.log)"
"$venv/bin/pip" install --progress-bar off kserve==0.21.0 onnxruntime > "$venv/install.log" 2>&1 ||
  { tail -5 "$venv/install.log"; echo "kserve_venv.sh: pip failed; see $venv/install.log" >&2; exit 1; }
