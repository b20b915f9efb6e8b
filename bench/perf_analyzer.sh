#!/usr/bin/env bash
# Triton's perf_analyzer against a running vae-serve's KServe v2 front: an outside client
# checks that the v2 front speaks the protocol as Triton's own tools expect, and how fast.
#
#   bash bench/perf_analyzer.sh [DIR [ADDR]]     DIR: /tmp/perf-analyzer, ADDR: 127.0.0.1:50051
#
# Installs into DIR only, never into the project's .venv: the perf_analyzer binary from the
# tritonclient 2.50.0 wheel (the last line of wheels that bundles it), libcudart.so.12 from the
# nvidia-cuda-runtime-cu12 wheel (the binary links it even for remote servers), and Debian's
# libb64-0d (apt-get, as root). Then vae.decoder and vae.encoder at batch 1 and 64 and
# concurrency 1, 8 and 64: 12 runs of 1 s windows, each at most MAX_TRIALS windows before
# perf_analyzer gives up on stability: about 1 minute on 2 cores, under 5 in the worst case.
# A window counts as stable within STABILITY % (perf_analyzer's default, 10, is rarely met on
# 2 shared cores). Inputs are zeros (--input-data zero): perf_analyzer's default random data
# is random bits, NaN, Inf and values like -1e35 among them, which the server refuses (images
# must lie in [0, 1], latents be finite); an MLP's cost does not depend on the values.
# Prints one markdown table; perf_analyzer's own output per run is in DIR/out/*.log and *.csv.
# MODEL=vae names the model prefix; PYTHON=python3 runs pip.
set -euo pipefail

DIR=${1:-/tmp/perf-analyzer}
ADDR=${2:-127.0.0.1:50051}
MODEL=${MODEL:-vae}
PYTHON=${PYTHON:-python3}
TRITONCLIENT=2.50.0
CUDA_RUNTIME=12.6.77  # CUDA 12.6, as Triton 24.09 (tritonclient 2.50.0) was built with
INTERVAL_MS=1000
MAX_TRIALS=10
STABILITY=25
case "$ADDR" in
  127.*|localhost:*|\[::1\]:*) ;;
  *) echo "error: ADDR must be a loopback address (got $ADDR)" >&2; exit 2 ;;
esac
case "$(realpath -m "$DIR")" in
  "$(realpath -m "$(dirname "$0")/..")"*) echo "error: DIR must be outside the project" >&2; exit 2 ;;
esac
mkdir -p "$DIR/out"
DIR=$(realpath "$DIR")

# pip must not read this machine's local configuration (find-links, indexes) for these.
pip_fetch() { env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "$PYTHON" -m pip "$@" \
                --disable-pip-version-check --root-user-action=ignore --progress-bar off \
                --quiet; }

PA="$DIR/bin/perf_analyzer"
if [ ! -x "$PA" ]; then
  echo "fetching the tritonclient $TRITONCLIENT wheel (for its perf_analyzer) into $DIR" >&2
  pip_fetch download "tritonclient==$TRITONCLIENT" --no-deps --only-binary=:all: \
    --platform manylinux1_x86_64 --dest "$DIR/wheels"
  wheel=$(ls "$DIR"/wheels/tritonclient-"$TRITONCLIENT"-*.whl)
  member=$(unzip -Z1 "$wheel" | grep -E '(^|/)bin/perf_analyzer$' | head -n 1)
  [ -n "$member" ] || { echo "error: no bin/perf_analyzer in $wheel" >&2; exit 1; }
  unzip -oqj "$wheel" "$member" -d "$DIR/bin"
  chmod +x "$PA"
fi
CUDART_DIR="$DIR/cuda/nvidia/cuda_runtime/lib"
if [ ! -e "$CUDART_DIR/libcudart.so.12" ]; then
  echo "installing nvidia-cuda-runtime-cu12==$CUDA_RUNTIME (libcudart.so.12) into $DIR/cuda" >&2
  pip_fetch install "nvidia-cuda-runtime-cu12==$CUDA_RUNTIME" --no-deps --only-binary=:all: \
    --target "$DIR/cuda"
fi
if ! ldconfig -p | grep -q 'libb64\.so\.0d'; then
  echo "installing Debian's libb64-0d with apt-get" >&2
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "error: libb64.so.0d is missing and apt-get is not usable here (needs root on Debian or" \
         "Ubuntu): install libb64-0d, then run this again" >&2
    exit 1
  fi
  if ! { apt-get update -qq && apt-get install -y -qq libb64-0d; } > "$DIR/out/apt.log" 2>&1; then
    tail -n 5 "$DIR/out/apt.log" >&2
    echo "error: apt-get could not install libb64-0d (log: $DIR/out/apt.log)" >&2
    exit 1
  fi
fi
export LD_LIBRARY_PATH="$CUDART_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ldd "$PA" | grep 'not found' >&2; then
  echo "error: perf_analyzer still misses the libraries above" >&2
  exit 1
fi

failed=0
rows=()
started=$SECONDS
for model in "$MODEL.decoder" "$MODEL.encoder"; do
  for batch in 1 64; do
    for concurrency in 1 8 64; do
      name="$model-b$batch-c$concurrency"
      echo "perf_analyzer $name" >&2
      if timeout 120 "$PA" -i grpc -u "$ADDR" -m "$model" -b "$batch" \
           --concurrency-range "$concurrency:$concurrency" --measurement-interval "$INTERVAL_MS" \
           --max-trials "$MAX_TRIALS" --stability-percentage "$STABILITY" --input-data zero \
           -f "$DIR/out/$name.csv" > "$DIR/out/$name.log" 2>&1; then
        # CSV columns by header name; latencies are in microseconds. perf_analyzer's
        # Inferences/Second counts rows (requests x batch), as items/s does here.
        rows+=("$(awk -F, -v m="$model" -v b="$batch" -v c="$concurrency" '
          NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
          NR == 2 { ips = $col["Inferences/Second"]
                    printf "| %s | %d | %d | %.0f | %.0f | %.2f | %.2f |", m, b, c, ips / b, ips,
                           $col["p50 latency"] / 1000, $col["p99 latency"] / 1000 }' \
          "$DIR/out/$name.csv")")
      else
        failed=$((failed + 1))
        # perf_analyzer's first complaint, and the server's answer when it names one
        why=$(grep -iE 'error|fail|unable' "$DIR/out/$name.log" | head -n 2 | tr '|\n' '/ ' \
              | cut -c 1-300)
        rows+=("| $model | $batch | $concurrency | failed: $why | | | |")
      fi
    done
  done
done

echo "Command: \`bash bench/perf_analyzer.sh $DIR $ADDR\` (perf_analyzer from tritonclient" \
     "$TRITONCLIENT, -i grpc, --measurement-interval $INTERVAL_MS, --max-trials $MAX_TRIALS," \
     "--stability-percentage $STABILITY, --input-data zero; $((SECONDS - started)) s)"
echo
echo "| model | batch | concurrency | requests/s | items/s (infer/s) | p50 ms | p99 ms |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
if [ "$failed" -gt 0 ]; then
  echo
  echo "$failed run(s) failed; perf_analyzer's messages are in $DIR/out/*.log"
  exit 1
fi
