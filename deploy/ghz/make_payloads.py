"""Write ghz payloads (binary protobuf messages) from real test images and their latents.

python deploy/ghz/make_payloads.py --repo models --model vae --out deploy/ghz/payloads

ghz wants bytes as base64 inside JSON; a binary message file (`"binary-file"`) is simpler
and exact. Each file holds one message behind its size as a varint (length-delimited): ghz
reads a binary file first as a sequence of such messages and only then as one bare message,
and a bare message can happen to read as a sequence of wrong ones (interpolate.bin did: every
call was refused for having no endpoints). The images are the model's own decodings of prior
draws (the model repository is all it needs), or with --data-dir the test images of the
model's dataset; the latents are their posterior means, computed with the exported encoder;
the noisy images add sigma 0.3.
Score sends the images with SCORE_SAMPLES importance samples each; Interpolate runs from the
first image to the second in ITEMS frames along the spherical path.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from google.protobuf.message import Message

from service.fronts.tensors import to_tensor
from service.plane.repository import ManifestError, read_manifest, resolve_version
from service.vae.v1 import vae_pb2
from training.errors import UsageError

ITEMS = 8
NOISE_SIGMA = 0.3
SCORE_SAMPLES = 4
"""Importance samples per image in score.bin: 32 scorer rows per call."""


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def payload_images(folder: Path, data_dir: str | None) -> np.ndarray:
    """ITEMS images of the model's size: test images from data_dir, else decoded prior draws."""
    manifest = read_manifest(folder)
    if data_dir is not None:
        from training.data import load_splits

        return load_splits(manifest.training["dataset"], Path(data_dir)).test[:ITEMS]
    z = np.random.default_rng(0).standard_normal((ITEMS, manifest.latent_dim)).astype(np.float32)
    images: np.ndarray = _session(folder / "decoder.onnx").run(["x_hat"], {"z": z})[0]
    return images


def delimited(message: Message) -> bytes:
    """The message behind its size as a base-128 varint: one message, however ghz reads it."""
    body: bytes = message.SerializeToString()
    size, prefix = len(body), bytearray()
    while True:
        low, size = size & 0x7F, size >> 7
        prefix.append(low | (0x80 if size else 0))
        if not size:
            return bytes(prefix) + body


def message_bytes(payload: bytes) -> bytes:
    """The serialized message of a payload file: its size varint read and checked."""
    size = shift = offset = 0
    while payload[offset] & 0x80:
        size |= (payload[offset] & 0x7F) << shift
        shift, offset = shift + 7, offset + 1
    size |= payload[offset] << shift
    if offset + 1 + size != len(payload):
        raise ValueError(f"a payload of {len(payload)} bytes says its message has {size}")
    return payload[offset + 1 :]


def write_payloads(repo: Path, model: str, out: Path, data_dir: str | None = None) -> list[Path]:
    folder = resolve_version(repo, model, 0)
    images = np.ascontiguousarray(payload_images(folder, data_dir))
    encoder = _session(folder / "encoder.onnx")
    latents = encoder.run(["mean"], {"x": images})[0]
    noisy = np.clip(images + NOISE_SIGMA * np.random.default_rng(0).standard_normal(images.shape),
                    0, 1).astype(np.float32)
    messages: dict[str, Message] = {
        "encode.bin": vae_pb2.EncodeRequest(images=to_tensor(images)),
        "decode.bin": vae_pb2.DecodeRequest(latents=to_tensor(latents)),
        "denoise.bin": vae_pb2.DenoiseRequest(images=to_tensor(noisy)),
        "score.bin": vae_pb2.ScoreRequest(images=to_tensor(images), samples=SCORE_SAMPLES, seed=7),
        "interpolate.bin": vae_pb2.InterpolateRequest(
            images=to_tensor(images[:2]), steps=ITEMS, path=vae_pb2.INTERPOLATION_PATH_SPHERICAL),
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, message in messages.items():
        (out / name).write_bytes(delimited(message))
    return [out / name for name in messages]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, default=Path("models"))
    p.add_argument("--model", default="vae")
    p.add_argument("--data-dir", help="IDX folder of the model's dataset, to send its test images "
                   "(default: the model's own decodings of prior draws; digits needs no folder)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "payloads")
    args = p.parse_args()
    try:
        for path in write_payloads(args.repo, args.model, args.out, args.data_dir):
            print(f"wrote {path}")
    except (ManifestError, UsageError, OSError) as err:
        print(f"make_payloads: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
