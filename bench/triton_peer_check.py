"""Checks the Triton peer against in-process ONNX Runtime: same rows in, same numbers out.

.venv-triton-server/bin/python bench/triton_peer_check.py --version-dir models/mnist/1 --name mnist

Starts bench/triton_peer.py on free ports and, for NAME.decoder and NAME.encoder, sends with
tritonclient (Triton's own gRPC client) one request of 5 rows, then 32 one-row requests at once,
so that Triton's dynamic batcher merges them into shared executes. Each answer is compared with
ONNX Runtime's output for the same rows, run here alone (1 intra-op thread, as the peer).
Prints one line per graph with the largest difference and the mean rows per execute (Triton's
nv_inference_count / nv_inference_exec_count); exits 1 when an answer differs. About 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

GRAPHS = {"decoder": "decoder.onnx", "encoder": "encoder.onnx"}
CONCURRENT_REQUESTS = 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _input(name: str, rows: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput(name, list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    return tensor


async def _answers(port: int, model: str, name: str, requests: list[np.ndarray]
                   ) -> list[dict[str, np.ndarray]]:
    """Every request in flight at once; each answer's outputs by name."""
    async with triton_aio.InferenceServerClient(f"127.0.0.1:{port}") as client:
        outputs = [o["name"] for o in (await client.get_model_metadata(model, as_json=True))
                   ["outputs"]]
        results = await asyncio.gather(*(client.infer(model, [_input(name, rows)])
                                         for rows in requests))
    return [{o: r.as_numpy(o) for o in outputs} for r in results]


def _batch_rows(metrics_port: int, model: str) -> float:
    """Rows per execute so far: nv_inference_count / nv_inference_exec_count."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    value = {m[0]: float(m[1]) for m in re.findall(
        rf'^(nv_inference_(?:exec_)?count){{model="{re.escape(model)}",.*}} (\S+)$', text, re.M)}
    return value["nv_inference_count"] / value["nv_inference_exec_count"]


def _wait_ready(peer: subprocess.Popen[bytes], port: int, timeout_s: float = 120) -> bool:
    """True once Triton says it is ready; False when the peer exits or the time is up."""
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    deadline = time.monotonic() + timeout_s
    while peer.poll() is None and time.monotonic() < deadline:
        try:
            if client.is_server_ready(client_timeout=2):
                return True
        except InferenceServerException:
            pass
        time.sleep(0.2)
    return False


def check(port: int, metrics_port: int, version_dir: Path, name: str) -> bool:
    """One line per graph; True when every answer equals ONNX Runtime's for the same rows."""
    ok = True
    for graph, file in GRAPHS.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(version_dir / file), options,
                                       providers=["CPUExecutionProvider"])
        node = session.get_inputs()[0]
        rng = np.random.default_rng(0)
        rows = [rng.random((n, *node.shape[1:]), dtype=np.float32)
                for n in (5, *[1] * CONCURRENT_REQUESTS)]
        answers = asyncio.run(_answers(port, f"{name}.{graph}", node.name, rows[:1]))
        answers += asyncio.run(_answers(port, f"{name}.{graph}", node.name, rows[1:]))
        worst = 0.0
        for sent, answer in zip(rows, answers, strict=True):
            expected = dict(zip(answer, session.run(list(answer), {node.name: sent}), strict=True))
            worst = max(worst, *(float(np.abs(answer[o] - expected[o]).max()) for o in answer))
        equal = worst == 0.0
        ok &= equal
        print(f"{name}.{graph}: {len(rows)} requests, largest difference from ONNX Runtime "
              f"{worst:.3g} ({'equal' if equal else 'DIFFERENT'}), "
              f"{_batch_rows(metrics_port, f'{name}.{graph}'):.2f} rows per execute")
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/triton_peer_check.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version-dir", type=Path, required=True,
                   help="a version folder of the model repository (decoder.onnx, encoder.onnx)")
    p.add_argument("--name", default="vae", help="models are served as NAME.decoder, NAME.encoder")
    args = p.parse_args(argv)
    port, metrics_port = free_port(), free_port()
    with tempfile.TemporaryFile("w+") as log:
        peer = subprocess.Popen([sys.executable, str(Path(__file__).with_name("triton_peer.py")),
                                 "--version-dir", str(args.version_dir), "--name", args.name,
                                 "--port", str(port), "--metrics-port", str(metrics_port)],
                                stdout=log, stderr=log)
        try:
            if not _wait_ready(peer, port):
                log.seek(0)
                p.exit(1, f"{p.prog}: the peer did not start; its log ends:\n"
                          + "".join(log.readlines()[-5:]))
            ok = check(port, metrics_port, args.version_dir, args.name)
        finally:
            peer.terminate()
            peer.wait(timeout=30)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
