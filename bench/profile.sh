#!/usr/bin/env bash
# py-spy profile of the server's event loop under load (docs/benchmarks.md, "Where the time goes").
# Usage: bash bench/profile.sh REPO MODEL OUT [SRC]
#   METHOD, ITEMS, CONCURRENCY (default Decode, 1, 64) shape the load.
#   Serves REPO/MODEL from the checkout SRC (default: this one; a `git worktree` of another
#   commit profiles that code), drives it with bench/load.py (
#   8 connections, 12 s) and records 8 s of the GIL-holding thread with py-spy into OUT
#   (raw collapsed stacks). Then: .venv/bin/python -m bench.profile_summary OUT
# Needs py-spy (.venv/bin/pip install py-spy) and ptrace rights (root, or
# kernel.yama.ptrace_scope=0). About 25 s.
set -euo pipefail
repo=$(realpath "$1") model=$2 out=$(realpath -m "$3") src=$(realpath "${4:-.}")
here=$(pwd)
port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
(cd "$src" && exec "$here/.venv/bin/python" -m service.cli --model-repo "$repo" --model-name "$model" \
  --port "$port" --metrics-port -1 --log-level WARNING) &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
.venv/bin/python -c "import grpc; grpc.channel_ready_future(grpc.insecure_channel('127.0.0.1:$port')).result(timeout=60)"
.venv/bin/python -m bench.load --target "127.0.0.1:$port" --method "${METHOD:-Decode}" --items "${ITEMS:-1}" --concurrency "${CONCURRENCY:-64}" --seconds 12 &
load=$!
sleep 2
.venv/bin/py-spy record --gil --rate 500 --duration 8 --format raw --output "$out" --pid "$server" >/dev/null
wait $load
