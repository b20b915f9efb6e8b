"""Regenerate the Python modules and descriptor set from proto/ (`make proto`).

Run as `python -m service.proto_gen [OUT_DIR]`; needs grpcio-tools (the dev extra). The
server never imports this module. protoc writes `from vae.v1 import ...`; we rewrite that
to `service.vae.v1` so the generated code lives inside the service package.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO = Path("vae/v1/vae.proto")
GENERATED = ("vae_pb2.py", "vae_pb2.pyi", "vae_pb2_grpc.py", "vae.binpb")


def generate(out: Path) -> list[Path]:
    """Write the generated files into out/vae/v1/ and return their paths."""
    import grpc_tools
    from grpc_tools import protoc

    folder = out / "vae" / "v1"
    folder.mkdir(parents=True, exist_ok=True)
    include = Path(grpc_tools.__file__).parent / "_proto"
    status = protoc.main([
        "protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={out}",
        f"--pyi_out={out}", f"--grpc_python_out={out}", "--include_imports",
        f"--descriptor_set_out={folder / 'vae.binpb'}", str(ROOT / "proto" / PROTO),
    ])
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}")
    for name in ("vae_pb2_grpc.py",):
        path = folder / name
        path.write_text(path.read_text().replace("from vae.v1 import", "from service.vae.v1 import"))
    for package in (out / "vae", folder):
        (package / "__init__.py").touch()
    return [folder / name for name in GENERATED]


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "service"
    for path in generate(target):
        print(f"wrote {path}")
