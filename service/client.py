"""VaeClient: numpy in, numpy out over gRPC (grpcio and numpy only), and the `vae-client` CLI."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import numpy as np

from service.images import PngError, display_scale, grid, read_png, write_png
from service.tensors import to_array, to_tensor
from service.vae.v1 import vae_pb2, vae_pb2_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
LB_POLICIES = ("pick_first", "round_robin")


class VaeClient:
    """Blocking client. For several replicas use target dns:///HOST:PORT with round_robin."""

    def __init__(self, target: str = DEFAULT_TARGET, *, lb_policy: str | None = None,
                 timeout_s: float = 30.0, max_message_bytes: int = 64 * 1024 * 1024) -> None:
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if lb_policy:
            options.append(("grpc.lb_policy_name", lb_policy))
        self.channel = grpc.insecure_channel(target, options=options)
        self.stub = vae_pb2_grpc.VaeServiceStub(self.channel)
        self.timeout_s = timeout_s

    def info(self) -> vae_pb2.ModelInfo:
        info: vae_pb2.ModelInfo = self.stub.GetModelInfo(vae_pb2.GetModelInfoRequest(),
                                                         timeout=self.timeout_s)
        return info

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """images [N, C, H, W] in [0, 1] -> (mean, log_var) [N, latent]."""
        r = self.stub.Encode(vae_pb2.EncodeRequest(images=to_tensor(images)), timeout=self.timeout_s)
        return to_array(r.mean), to_array(r.log_var)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        r = self.stub.Decode(vae_pb2.DecodeRequest(latents=to_tensor(latents)),
                             timeout=self.timeout_s)
        return to_array(r.images)

    def sample(self, count: int, seed: int = 0, temperature: float = 1.0
               ) -> tuple[np.ndarray, np.ndarray, int]:
        """Returns (images, latents, seed); seed 0 lets the server pick and report one."""
        r = self.stub.Sample(vae_pb2.SampleRequest(count=count, seed=seed, temperature=temperature),
                             timeout=self.timeout_s)
        return to_array(r.images), to_array(r.latents), int(r.seed)

    def denoise(self, images: np.ndarray) -> np.ndarray:
        r = self.stub.Denoise(vae_pb2.DenoiseRequest(images=to_tensor(images)),
                              timeout=self.timeout_s)
        return to_array(r.images)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> VaeClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class InputError(ValueError):
    """A local input file the model cannot take."""


def _load_images(path: Path, image_shape: tuple[int, ...]) -> np.ndarray:
    """A PNG (one grayscale image) or .npy [N, C, H, W], checked against the model's shape."""
    array = np.load(path).astype(np.float32) if path.suffix == ".npy" else read_png(path)[None, None]
    if array.shape[1:] != tuple(image_shape):
        raise InputError(f"{path}: images of shape {list(array.shape[1:])}; the model takes "
                         f"{list(image_shape)} (C, H, W)")
    return array


def _save_images(path: Path, images: np.ndarray) -> None:
    if path.suffix == ".npy":
        np.save(path, images)
    else:
        picture = grid(images) if len(images) > 1 else images[0, 0]
        write_png(path, picture, scale=display_scale(images.shape[-1]))
    print(f"wrote {path} ({len(images)} images)")


def _info(client: VaeClient, args: argparse.Namespace) -> None:
    i = client.info()
    print(json.dumps({"name": i.name, "version": i.version, "image_shape": list(i.image_shape),
                      "latent_dim": i.latent_dim, "execution_provider": i.execution_provider,
                      "arch": i.arch, "dataset": i.dataset,
                      "max_batch_size": i.batching.max_batch_size,
                      "max_queue_delay_us": i.batching.max_queue_delay_us,
                      "max_sample_count": i.max_sample_count}, indent=2))


def _sample(client: VaeClient, args: argparse.Namespace) -> None:
    images, _, seed = client.sample(args.count, args.seed, args.temperature)
    print(f"seed {seed}")
    _save_images(args.out, images)


def _encode(client: VaeClient, args: argparse.Namespace) -> None:
    mean, log_var = client.encode(_load_images(args.input, tuple(client.info().image_shape)))
    np.savez(args.out, mean=mean, log_var=log_var)
    print(f"wrote {args.out} (mean and log_var, shape {list(mean.shape)})")


def _decode(client: VaeClient, args: argparse.Namespace) -> None:
    _save_images(args.out, client.decode(np.load(args.input).astype(np.float32)))


def _denoise(client: VaeClient, args: argparse.Namespace) -> None:
    images = _load_images(args.input, tuple(client.info().image_shape))
    _save_images(args.out, client.denoise(images))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vae-client", description="Call a vae-serve server.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--target", default=DEFAULT_TARGET,
                   help="server address; dns:///HOST:PORT resolves every replica")
    p.add_argument("--lb-policy", choices=LB_POLICIES,
                   help="client-side balancing (round_robin with a headless Service)")
    p.add_argument("--timeout", type=float, default=30.0, help="deadline per call, seconds")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print the served model's shapes, version and provider"
                   ).set_defaults(func=_info)
    s = sub.add_parser("sample", help="draw images from the prior",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--count", type=int, default=16, help="number of images")
    s.add_argument("--seed", type=int, default=0, help="0: the server picks (and prints) one")
    s.add_argument("--temperature", type=float, default=1.0, help="prior std multiplier")
    s.add_argument("--out", type=Path, default=Path("samples.png"), help=".png grid or .npy")
    s.set_defaults(func=_sample)
    e = sub.add_parser("encode", help="images (.png or .npy [N,C,H,W]) -> mean, log_var (.npz)")
    e.add_argument("--in", dest="input", type=Path, required=True)
    e.add_argument("--out", type=Path, default=Path("codes.npz"))
    e.set_defaults(func=_encode)
    d = sub.add_parser("decode", help="latents (.npy [N, latent]) -> images (.png or .npy)")
    d.add_argument("--in", dest="input", type=Path, required=True)
    d.add_argument("--out", type=Path, default=Path("decoded.png"))
    d.set_defaults(func=_decode)
    n = sub.add_parser("denoise", help="noisy image (.png or .npy) -> clean image")
    n.add_argument("--in", dest="input", type=Path, required=True)
    n.add_argument("--out", type=Path, default=Path("clean.png"))
    n.set_defaults(func=_denoise)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with VaeClient(args.target, lb_policy=args.lb_policy, timeout_s=args.timeout) as client:
            args.func(client, args)
    except grpc.RpcError as err:
        code = err.code()
        print(f"vae-client: error: {code.name}: {err.details()}", file=sys.stderr)
        return 2 if code == grpc.StatusCode.INVALID_ARGUMENT else 1
    except (InputError, PngError, OSError, ValueError) as err:
        print(f"vae-client: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
