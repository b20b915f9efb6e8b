"""Write ghz payloads (binary protobuf messages) from real test images and their latents.

python deploy/ghz/make_payloads.py --repo models --model vae --out deploy/ghz/payloads

ghz wants bytes as base64 inside JSON; a binary message file (`"binary-file"`) is simpler
and exact. The images are the model's own dataset's test images; the latents are their
posterior means, computed with the exported encoder; the noisy images add sigma 0.3.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort
from google.protobuf.message import Message

from service.repository import read_manifest, resolve_version
from service.tensors import to_tensor
from service.vae.v1 import vae_pb2

ITEMS = 8
NOISE_SIGMA = 0.3


def test_images(dataset: str, data_dir: str | None, count: int) -> np.ndarray:
    from training.data import load_splits

    return load_splits(dataset, Path(data_dir) if data_dir else None).test[:count]


def write_payloads(repo: Path, model: str, out: Path, data_dir: str | None = None) -> list[Path]:
    folder = resolve_version(repo, model, 0)
    manifest = read_manifest(folder)
    images = np.ascontiguousarray(test_images(manifest.training["dataset"], data_dir, ITEMS))
    encoder = ort.InferenceSession(str(folder / "encoder.onnx"), providers=["CPUExecutionProvider"])
    latents = encoder.run(["mean"], {"x": images})[0]
    noisy = np.clip(images + NOISE_SIGMA * np.random.default_rng(0).standard_normal(images.shape),
                    0, 1).astype(np.float32)
    messages: dict[str, Message] = {
        "encode.bin": vae_pb2.EncodeRequest(images=to_tensor(images)),
        "decode.bin": vae_pb2.DecodeRequest(latents=to_tensor(latents)),
        "denoise.bin": vae_pb2.DenoiseRequest(images=to_tensor(noisy)),
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, message in messages.items():
        (out / name).write_bytes(message.SerializeToString())
    return [out / name for name in messages]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, default=Path("models"))
    p.add_argument("--model", default="vae")
    p.add_argument("--data-dir", help="IDX folder for mnist-like models (default: the run's)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "payloads")
    args = p.parse_args()
    for path in write_payloads(args.repo, args.model, args.out, args.data_dir):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
