"""Regenerate the Python modules and descriptor sets from proto/ (`make proto`).

Run as `python -m service.proto_gen [OUT_DIR]`; needs grpcio-tools (the dev extra). The
server never imports this module. Two packages are generated:

- vae.v1 (proto/vae/v1/vae.proto) into OUT_DIR/vae/v1/;
- inference (proto/inference/*.proto, the KServe v2 / Open Inference Protocol with Triton's
  field numbers) into OUT_DIR/inference/.

protoc writes `from vae.v1 import ...` and `from inference import ...`; we rewrite those to
`service.vae.v1` and `service.inference` so the generated code lives inside the service package.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO = Path("vae/v1/vae.proto")
INFERENCE_PROTOS = (Path("inference/grpc_service.proto"), Path("inference/model_config.proto"))
# Every generated file, relative to OUT_DIR (the staleness test compares each one).
GENERATED = (
    "vae/v1/vae_pb2.py", "vae/v1/vae_pb2.pyi", "vae/v1/vae_pb2_grpc.py", "vae/v1/vae.binpb",
    "inference/grpc_service_pb2.py", "inference/grpc_service_pb2.pyi",
    "inference/grpc_service_pb2_grpc.py", "inference/model_config_pb2.py",
    "inference/model_config_pb2.pyi", "inference/inference.binpb",
)


def _protoc(args: list[str]) -> None:
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    status = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", *args])
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}")


def _generate_vae(out: Path) -> None:
    folder = out / "vae" / "v1"
    folder.mkdir(parents=True, exist_ok=True)
    _protoc([
        f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", "--include_imports",
        f"--descriptor_set_out={folder / 'vae.binpb'}", str(ROOT / "proto" / PROTO),
    ])
    for name in ("vae_pb2_grpc.py",):
        path = folder / name
        path.write_text(path.read_text().replace("from vae.v1 import", "from service.vae.v1 import"))
    for package in (out / "vae", folder):
        (package / "__init__.py").touch()


def _generate_inference(out: Path) -> None:
    folder = out / "inference"
    folder.mkdir(parents=True, exist_ok=True)
    _protoc([
        f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", "--include_imports",
        f"--descriptor_set_out={folder / 'inference.binpb'}",
        *(str(ROOT / "proto" / proto) for proto in INFERENCE_PROTOS),
    ])
    # model_config.proto declares no service: its _grpc module would be an empty stub.
    (folder / "model_config_pb2_grpc.py").unlink()
    for path in (out / name for name in GENERATED if name.startswith("inference/")):
        if path.suffix in (".py", ".pyi"):
            text = re.sub(r"^from inference import ", "from service.inference import ",
                          path.read_text(), flags=re.MULTILINE)
            path.write_text(text)
    (folder / "__init__.py").touch()


def generate(out: Path) -> list[Path]:
    """Write the generated files under out/ (vae/v1/ and inference/) and return their paths."""
    _generate_vae(out)
    _generate_inference(out)
    return [out / name for name in GENERATED]


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "service"
    for path in generate(target):
        print(f"wrote {path}")
