"""NVIDIA Triton Inference Server serving one version's decoder and encoder: a peer.

.venv-triton-server/bin/python bench/triton_peer.py --version-dir models/mnist/1 --name mnist --port P

Runs in its own throwaway venv, never in ours: `bash bench/triton_venv.sh` makes
.venv-triton-server (PyPI nvidia-pytriton, for the tritonserver 2.51.0 binary and Python backend
it bundles, with onnxruntime and numpy). This script writes a Triton model repository into a
temporary folder: NAME.decoder and NAME.encoder, each a Python-backend model
(bench/triton_model.py) around one ONNX Runtime InferenceSession of the same graph file, with
Triton's dynamic batcher on (max_queue_delay 0, as ours) and --instances CPU instances. Then it runs
tritonserver itself on that repository (PyTriton's own API is not used: its proxy backend adds two
process hops), gRPC on 127.0.0.1:PORT, HTTP off; it says on stderr when the server is ready, and
on SIGTERM or SIGINT stops it and removes the folder. bench/load.py --protocol v2 drives it as it
drives our v2 front.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import NoReturn

import onnxruntime as ort

GRAPHS = {"decoder": "decoder.onnx", "encoder": "encoder.onnx"}
MODEL_FILE = Path(__file__).with_name("triton_model.py")
READY_TIMEOUT_S = 120.0
PROG = "bench/triton_peer.py"


def _fail(message: str) -> NoReturn:
    """One line on stderr and exit 2: what a person has to change."""
    print(f"{PROG}: {message}", file=sys.stderr)
    raise SystemExit(2)


def _distribution() -> Path:
    """The tritonserver folder inside the installed nvidia-pytriton wheel."""
    try:
        import pytriton
    except ImportError:
        _fail(f"no nvidia-pytriton in {sys.prefix}: run it with "
                 ".venv-triton-server/bin/python (bash bench/triton_venv.sh makes it)")
    return Path(pytriton.__file__).parent / "tritonserver"


def _dims(values: list[ort.NodeArg]) -> list[tuple[str, list[int]]]:
    """(name, shape without the batch dimension) of each graph input or output."""
    return [(v.name, [int(d) for d in v.shape[1:]]) for v in values]


def _tensors(kind: str, specs: list[tuple[str, list[int]]]) -> str:
    items = [f'{{ name: "{name}" data_type: TYPE_FP32 dims: [ {", ".join(map(str, dims))} ] }}'
             for name, dims in specs]
    return f"{kind} [\n  " + ",\n  ".join(items) + "\n]\n"


def model_config(name: str, graph: Path, max_batch_size: int, instances: int,
                 threads: int) -> str:
    """config.pbtxt of one Python-backend model serving one graph, written out in full."""
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    return (f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch_size}\n'
            + _tensors("input", _dims(session.get_inputs()))
            + _tensors("output", _dims(session.get_outputs()))
            + "dynamic_batching { }\n"
            + f"instance_group [ {{ kind: KIND_CPU count: {instances} }} ]\n"
            + f'parameters {{ key: "graph" value {{ string_value: "{graph.name}" }} }}\n'
            + f'parameters {{ key: "intra_op_threads" value {{ string_value: "{threads}" }} }}\n')


def write_repository(root: Path, version_dir: Path, name: str, max_batch_size: int,
                     instances: int, threads: int) -> Path:
    """ROOT/models/NAME.GRAPH/{config.pbtxt,1/model.py,1/GRAPH.onnx}; returns ROOT/models."""
    models = root / "models"
    for graph, file in GRAPHS.items():
        version = models / f"{name}.{graph}" / "1"
        version.mkdir(parents=True)
        shutil.copyfile(version_dir / file, version / file)
        shutil.copyfile(MODEL_FILE, version / "model.py")
        (version.parent / "config.pbtxt").write_text(
            model_config(f"{name}.{graph}", version / file, max_batch_size, instances, threads))
    return models


def write_backends(root: Path, dist: Path) -> Path:
    """ROOT/backends/python: the wheel's Python backend and the stub built for this Python."""
    backends = root / "backends"
    shutil.copytree(dist / "backends", backends,
                    ignore=shutil.ignore_patterns("__pycache__"))
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        _fail(f"nvidia-pytriton has no Python backend stub for Python {version}: make "
              ".venv-triton-server with Python 3.8-3.13")
    shutil.copy(stub, backends / "python")
    return backends


def stub_environment(dist: Path) -> dict[str, str]:
    """The environment tritonserver passes on to each backend stub it starts.

    The stub links libpython3.X.so.1.0 by name, so this interpreter's own comes first (the
    loader's default path holds at most the system's, of another patch release or none), then
    the wheel's bundled libraries (libcudart), which the copied stub no longer finds by its
    RPATH. The stub starts an isolated interpreter (PYTHONPATH is ignored) that finds its
    executable on PATH: with this venv's bin/ first, that is this venv, so model.py imports
    this venv's numpy and onnxruntime and never the base interpreter's site-packages."""
    libdir = sysconfig.get_config_var("LIBDIR")
    libpython = Path(libdir) / sysconfig.get_config_var("INSTSONAME")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not libpython.exists():
        _fail(f"{sys.executable} has no shared libpython ({libpython}), which Triton's Python "
              "backend stub needs: make the venv with a Python built with --enable-shared")
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(
        p for p in (libdir, str(dist.parent.parent / "nvidia_pytriton.libs"),
                    env.get("LD_LIBRARY_PATH")) if p)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def _ready(port: int) -> bool:
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    try:
        with triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
            return bool(client.is_server_ready(client_timeout=2))
    except InferenceServerException:
        return False


def serve(args: argparse.Namespace) -> int:
    dist = _distribution()
    missing = [f for f in GRAPHS.values() if not (args.version_dir / f).is_file()]
    if missing:
        _fail(f"{args.version_dir} has no {', '.join(missing)}: pass a version folder "
                 "of the model repository, e.g. models/vae/1")
    env = stub_environment(dist)
    with tempfile.TemporaryDirectory(prefix="triton-peer-") as tmp:
        root = Path(tmp)
        models = write_repository(root, args.version_dir, args.name, args.max_batch_size,
                                  args.instances, args.threads)
        metrics = (["--allow-metrics=true", "--allow-gpu-metrics=false",
                    "--metrics-address=127.0.0.1", f"--metrics-port={args.metrics_port}"]
                   if args.metrics_port else ["--allow-metrics=false"])
        argv = [str(dist / "bin" / "tritonserver"), f"--model-repository={models}",
                f"--backend-directory={write_backends(root, dist)}",
                "--disable-auto-complete-config", "--allow-http=false",
                "--grpc-address=127.0.0.1", f"--grpc-port={args.port}", *metrics,
                # one prefix per server, so two peers never share the stubs' shared memory
                f"--backend-config=python,shm-region-prefix-name=triton_peer_{os.getpid()}_",
                "--exit-timeout-secs=10", f"--log-verbose={args.log_verbose}"]
        proc = subprocess.Popen(argv, env=env)

        def stop(signum: int, frame: FrameType | None) -> None:
            proc.terminate()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while proc.poll() is None and not _ready(args.port):
            if time.monotonic() > deadline:
                proc.terminate()
                print(f"{PROG}: not ready after {READY_TIMEOUT_S:.0f} s; stopped", file=sys.stderr)
                break
            time.sleep(0.2)
        if proc.poll() is None:
            print(f"{PROG}: ready: {args.name}.decoder and {args.name}.encoder on "
                  f"127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        else:
            print(f"{PROG}: tritonserver exited with code {proc.returncode} before it was ready "
                  "(its log is above)", file=sys.stderr)
        code = proc.wait()
    return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version-dir", type=Path, required=True,
                   help="a version folder of the model repository (decoder.onnx, encoder.onnx)")
    p.add_argument("--name", required=True, help="models are served as NAME.decoder, NAME.encoder")
    p.add_argument("--port", type=int, required=True, help="gRPC port on 127.0.0.1")
    p.add_argument("--metrics-port", type=int, default=0,
                   help="Triton's Prometheus metrics on 127.0.0.1 (default 0: off)")
    p.add_argument("--max-batch-size", type=int, default=64,
                   help="rows in one batch, as ours (default 64)")
    p.add_argument("--instances", type=int, default=1,
                   help="instance_group count: stub processes per graph (default 1)")
    p.add_argument("--threads", type=int, default=1,
                   help="ONNX Runtime intra-op threads per instance (default 1)")
    p.add_argument("--log-verbose", type=int, default=0, help="tritonserver's --log-verbose")
    return serve(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
