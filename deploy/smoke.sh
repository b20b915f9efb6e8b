#!/usr/bin/env bash
# Smoke test of the serving image, by hand (the test suite does not run it):
#   deploy/smoke.sh [MODEL_REPO]        MODEL_REPO defaults to models (models/vae/<N>/...)
#
# 1. Builds the CPU image (deploy/docker/Dockerfile, target cpu) and the model image
#    (deploy/docker/Dockerfile.model) with podman, the way docs/deploy.md describes for a
#    sandbox with no Docker engine: vfs storage, chroot isolation, runc, host network, low
#    ulimits, the host's CA bundle mounted for pip. When the pinned python base image cannot
#    be pulled, it makes one: debootstrap (Debian bookworm, python3) + podman import.
# 2. Checks the image: runtime imports, no torch, numeric non-root user, `vae-serve --help`.
# 3. Runs it as Kubernetes would: the model image copies the repository into an empty
#    directory (the init container), the server mounts it read-only at /models, read-only
#    root file system with a tmpfs at /tmp; waits for gRPC health SERVING, reads /metrics,
#    makes one Sample call with vae-client, then stops it with SIGTERM and checks that it
#    exits 0 within VAE_SERVE_GRACE_S.
#
# Needs root (or rootless podman set up by hand), podman, runc and debootstrap (installed
# with apt-get when missing and root), and the project's .venv (for the health check and
# the client). Environment: VAE_SMOKE_DIR (work folder, default /var/tmp/vae-smoke),
# VAE_SMOKE_LOCAL_BASE=1 (skip the pull, use the debootstrap base), VAE_SMOKE_KEEP=1 (keep
# the container after a failure), VAE_SMOKE_BASE=IMAGE (build on IMAGE instead of the pinned
# python base, e.g. a mirror's copy of it or a local image; no debootstrap fallback).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL_REPO="${1:-models}"
WORK="${VAE_SMOKE_DIR:-/var/tmp/vae-smoke}"
PY="$ROOT/.venv/bin/python"
TAG="0.1.0-cpu"
IMAGE="localhost/vae-serve:$TAG"
MODEL_IMAGE="localhost/vae-serve-model:smoke"
LOCAL_BASE="localhost/vae-serve-base:bookworm"
PYTHON_IMAGE="$(sed -n 's/^ARG PYTHON_IMAGE=//p' deploy/docker/Dockerfile)"
CONTAINER="vae-serve-smoke"
GRACE_S=10

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'SMOKE FAILED: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- tools and configuration
step "tools"
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
  [ "$(id -u)" = 0 ] || fail "podman, runc and debootstrap are needed (apt-get install podman runc debootstrap)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap uidmap >/dev/null
fi
[ -x "$PY" ] || fail "$PY missing: run make install first"
podman --version

mkdir -p "$WORK/conf"
cat > "$WORK/conf/storage.conf" <<EOF
[storage]
driver = "vfs"
runroot = "$WORK/run"
graphroot = "$WORK/storage"
EOF
# No systemd, cgroup v1 via cgroupfs, host network (no bridge or netavark in a sandbox), and
# ulimits below the sandbox's hard limits (podman's defaults are higher, and runc then fails
# with "error setting rlimits").
cat > "$WORK/conf/containers.conf" <<'EOF'
[containers]
netns = "host"
pids_limit = 0
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
log_driver = "k8s-file"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
EOF
export CONTAINERS_STORAGE_CONF="$WORK/conf/storage.conf" CONTAINERS_CONF="$WORK/conf/containers.conf"
export BUILDAH_ISOLATION=chroot
BUILD=(podman build --format docker --isolation chroot --network host
       --ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
# pip inside the build trusts what the host trusts (a proxy's CA, where there is one).
[ -f /etc/ssl/certs/ca-certificates.crt ] &&
  BUILD+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)

# ---------------------------------------------------------------- base image
step "base image"
BASE="${VAE_SMOKE_BASE:-$PYTHON_IMAGE}"
use_local=0
if [ "${VAE_SMOKE_LOCAL_BASE:-0}" = 1 ]; then
  use_local=1
elif ! podman image exists "$BASE" && ! timeout 60 podman pull -q "$BASE" >/dev/null 2>&1; then
  [ -z "${VAE_SMOKE_BASE:-}" ] || fail "cannot pull VAE_SMOKE_BASE=$BASE"
  echo "cannot pull $BASE"
  use_local=1
fi
if [ "$use_local" = 1 ]; then
  BASE="$LOCAL_BASE"
  if ! podman image exists "$BASE"; then
    echo "making $BASE with debootstrap"
    rm -rf "$WORK/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$WORK/rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 ||
      fail "debootstrap (log: $WORK/debootstrap.log)"
    rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
    tar -C "$WORK/rootfs" -c . | podman import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
    rm -rf "$WORK/rootfs"
  fi
fi
echo "base: $BASE"

# ---------------------------------------------------------------- build
step "build $IMAGE"
start=$(date +%s)
"${BUILD[@]}" --ignorefile deploy/docker/Dockerfile.dockerignore --build-arg "PYTHON_IMAGE=$BASE" \
  -f deploy/docker/Dockerfile --target cpu -t "$IMAGE" . >"$WORK/build.log" 2>&1 ||
  { tail -30 "$WORK/build.log"; fail "image build (log: $WORK/build.log)"; }
echo "built in $(( $(date +%s) - start )) s"
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$IMAGE"

step "image checks"
podman run --rm --read-only --tmpfs /tmp --no-healthcheck --entrypoint python "$IMAGE" -c '
import importlib.util, os, sys
import grpc, numpy, onnxruntime, prometheus_client
from grpc_health.v1 import health_pb2
assert importlib.util.find_spec("torch") is None, "torch in the serving image"
for tool in ("pip", "setuptools", "wheel", "ensurepip"):
    assert importlib.util.find_spec(tool) is None, f"{tool} in the serving image"
assert os.getuid() == 10001 and os.getgid() == 10001, (os.getuid(), os.getgid())
print("runtime ok: grpc", grpc.__version__, "| onnxruntime", onnxruntime.__version__,
      onnxruntime.get_available_providers(), "| numpy", numpy.__version__,
      "| python", sys.version.split()[0], "| uid", os.getuid())'
if podman run --rm --read-only --tmpfs /tmp --no-healthcheck "$IMAGE" --help >"$WORK/help.txt" 2>&1; then
  echo "vae-serve --help: ok ($(wc -l <"$WORK/help.txt") lines)"
else
  cat "$WORK/help.txt"
  [ -f service/cli.py ] && fail "vae-serve --help"
  echo "vae-serve --help: service/cli.py is not written yet"
fi

# ---------------------------------------------------------------- run
step "model repository $MODEL_REPO"
ls "$MODEL_REPO"/*/*/manifest.json >/dev/null 2>&1 ||
  fail "no model repository at $MODEL_REPO (want $MODEL_REPO/<name>/<version>/manifest.json; vae-export writes one)"
MODEL_ABS="$(cd "$MODEL_REPO" && pwd)"
case "$MODEL_ABS/" in
  "$ROOT"/*) CONTEXT="$ROOT"; REL="${MODEL_ABS#"$ROOT"/}" ;;
  *) CONTEXT="$WORK/model-context"; rm -rf "$CONTEXT"; mkdir -p "$CONTEXT"
     cp -R "$MODEL_ABS" "$CONTEXT/models"; REL=models ;;
esac
"${BUILD[@]}" --ignorefile deploy/docker/Dockerfile.model.dockerignore --build-arg "BASE_IMAGE=$BASE" \
  --build-arg "MODEL_REPO=$REL" -f deploy/docker/Dockerfile.model -t "$MODEL_IMAGE" "$CONTEXT" \
  >"$WORK/build-model.log" 2>&1 || { tail -30 "$WORK/build-model.log"; fail "model image build"; }

# The emptyDir: an empty folder that the pod's user may write (Kubernetes: fsGroup).
VOLUME="$WORK/models-volume"
rm -rf "$VOLUME"; mkdir -p "$VOLUME"; chown 10001:10001 "$VOLUME"
podman run --rm --read-only -v "$VOLUME:/models" "$MODEL_IMAGE" >"$WORK/init.log" 2>&1 ||
  { cat "$WORK/init.log"; fail "init container (model copy)"; }
echo "init container copied $(find "$VOLUME" -type f | wc -l) files"

read -r PORT METRICS_PORT < <("$PY" -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
cleanup() {
  if [ "${VAE_SMOKE_KEEP:-0}" != 1 ]; then podman rm -f "$CONTAINER" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
podman rm -f "$CONTAINER" >/dev/null 2>&1 || true

step "run $IMAGE (gRPC :$PORT, metrics :$METRICS_PORT)"
podman run -d --name "$CONTAINER" --read-only --tmpfs /tmp --no-healthcheck \
  -v "$VOLUME:/models:ro" -e VAE_SERVE_PORT="$PORT" -e VAE_SERVE_METRICS_PORT="$METRICS_PORT" \
  -e VAE_SERVE_DEVICE=cpu -e VAE_SERVE_GRACE_S="$GRACE_S" -e VAE_SERVE_INTRA_OP_THREADS=1 \
  "$IMAGE" >/dev/null
serving=0
for _ in $(seq 60); do
  if [ "$(podman inspect -f '{{.State.Running}}' "$CONTAINER")" != true ]; then
    podman logs "$CONTAINER"; fail "the server exited before it was SERVING"
  fi
  if "$PY" deploy/docker/healthcheck.py --target "127.0.0.1:$PORT" >/dev/null 2>&1; then serving=1; break; fi
  sleep 1
done
[ "$serving" = 1 ] || { podman logs "$CONTAINER"; fail "no SERVING health within 60 s"; }
"$PY" deploy/docker/healthcheck.py --target "127.0.0.1:$PORT"
"$PY" deploy/docker/healthcheck.py --target "127.0.0.1:$PORT" --service ""

"$PY" - "$METRICS_PORT" <<'EOF'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
names = sorted({line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("vae_")})
assert names, "no vae_* series on /metrics"
print("metrics:", ", ".join(names))
EOF

# ---- Sample call through the project's client (service/client/, console script vae-client).
if [ -x "$ROOT/.venv/bin/vae-client" ]; then
  "$ROOT/.venv/bin/vae-client" --target "127.0.0.1:$PORT" sample --count 4 --seed 7 --out /tmp/smoke.png
  echo "sample: /tmp/smoke.png"
else
  echo "sample: SKIPPED (.venv/bin/vae-client not installed yet; health check above is the gRPC check)"
fi

step "SIGTERM (podman stop, grace ${GRACE_S} s)"
start=$(date +%s.%N)
podman stop --time $((GRACE_S + 5)) "$CONTAINER" >/dev/null
elapsed=$("$PY" -c "import sys; print(round($(date +%s.%N) - $start, 2))")
code=$(podman inspect -f '{{.State.ExitCode}}' "$CONTAINER")
podman logs "$CONTAINER" 2>&1 | tail -5
echo "exit code $code after $elapsed s"
[ "$code" = 0 ] || fail "exit code $code after SIGTERM (want 0)"
"$PY" -c "import sys; sys.exit(not $elapsed <= $GRACE_S + 1)" || fail "stop took $elapsed s > grace $GRACE_S s"
echo
echo "SMOKE OK"
