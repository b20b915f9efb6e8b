"""VaeClient: numpy in, numpy out over gRPC (grpcio and numpy only), and the `vae-client` CLI."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import numpy as np
from numpy.lib.npyio import NpzFile

from service.fronts.tensors import to_array, to_tensor
from service.help_format import DefaultsHelpFormatter
from service.pictures.figures import write_comparison
from service.pictures.png import PngError, read_images, write_images
from service.vae.v1 import vae_pb2, vae_pb2_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
LB_POLICIES = ("pick_first", "round_robin")
RETRY_POLICY = {"maxAttempts": 4, "initialBackoff": "0.05s", "maxBackoff": "1s",
                "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]}
"""gRPC retries every VaeService call (all idempotent) on a draining pod or a full queue."""
SERVICE_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": vae_pb2.DESCRIPTOR.services_by_name["VaeService"].full_name}],
    "retryPolicy": RETRY_POLICY}],
    # With round_robin: leave a replica as soon as its health says NOT_SERVING (a stopping one).
    "healthCheckConfig": {"serviceName": vae_pb2.DESCRIPTOR.services_by_name["VaeService"].full_name}})


def channel_credentials(ca_file: Path | None, cert_file: Path | None = None,
                        key_file: Path | None = None) -> grpc.ChannelCredentials | None:
    """TLS trusting ca_file, with a client certificate for mutual TLS; None = plaintext."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("--tls-cert-file and --tls-key-file go together: set both or neither")
    if ca_file is None:
        if cert_file is not None:
            raise ValueError("a client certificate needs --tls-ca-file (the server's CA)")
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=ca_file.read_bytes(),
        private_key=None if key_file is None else key_file.read_bytes(),
        certificate_chain=None if cert_file is None else cert_file.read_bytes())


class VaeClient:
    """Blocking client. For several replicas use target dns:///HOST:PORT with round_robin."""

    def __init__(self, target: str = DEFAULT_TARGET, *, lb_policy: str | None = None,
                 timeout_s: float = 30.0, max_message_bytes: int = 64 * 1024 * 1024,
                 tls_ca_file: Path | None = None, tls_cert_file: Path | None = None,
                 tls_key_file: Path | None = None) -> None:
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", SERVICE_CONFIG),
        ]
        if lb_policy:
            options.append(("grpc.lb_policy_name", lb_policy))
        credentials = channel_credentials(tls_ca_file, tls_cert_file, tls_key_file)
        if credentials is None:
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            self.channel = grpc.secure_channel(target, credentials, options=options)
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
    """A local file or flag the command cannot take; the message names the flag where it can."""


TARGET_ENV = "VAE_CLIENT_TARGET"
MAX_TIMEOUT_S = 1e8
"""About three years; grpc reads a deadline much further off (1e10 s) as already passed."""
EXIT_CODES = """exit codes: 0 success; 1 the call failed on the server or the network (UNAVAILABLE,
DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ...); 2 bad input (a flag, a local file, or
INVALID_ARGUMENT from the server). Errors are one line on stderr.

pictures: a .png output is a grid of the images, each pixel enlarged to about 112 px per
image, with a layout note that lets every subcommand read it back as the original images.
A .png input is such a grid, or one plain grayscale picture of the model's size. .npy files
hold float32 [N, C, H, W] arrays in [0, 1]. Each file flag takes the extensions its help
names; an output never replaces an input or another output of the same call."""


@dataclass(frozen=True)
class FileFlag:
    """A file flag of a subcommand: the extensions it takes, and whether the command writes it."""

    flag: str
    dest: str
    suffixes: tuple[str, ...]
    writes: bool


IMAGE_FILES = (".png", ".npy")
IN_IMAGES = FileFlag("--in", "input", IMAGE_FILES, writes=False)
IN_LATENTS = FileFlag("--in", "input", (".npy", ".npz"), writes=False)
OUT_IMAGES = FileFlag("--out", "out", IMAGE_FILES, writes=True)
OUT_CODES = FileFlag("--out", "out", (".npz",), writes=True)
OUT_COMPARISON = FileFlag("--compare", "compare", (".png",), writes=True)


def check_files(args: argparse.Namespace) -> None:
    """Before any call: every file of a kind its command handles, no output over an input or
    over another output, and a folder for each output."""
    claimed: dict[Path, str] = {}
    for spec in sorted(getattr(args, "files", ()), key=lambda spec: spec.writes):
        path: Path | None = getattr(args, spec.dest)
        if path is None:
            continue
        if path.suffix.lower() not in spec.suffixes:
            verb = "writes" if spec.writes else "reads"
            raise InputError(f"{spec.flag} {path}: {args.command} {verb} "
                             f"{' or '.join(spec.suffixes)} files")
        if spec.writes and not path.parent.is_dir():
            raise InputError(f"{spec.flag} {path}: no folder {path.parent}")
        if spec.writes and path.is_dir():
            raise InputError(f"{spec.flag} {path} is a folder; give a file name")
        if path.resolve() in claimed:
            raise InputError(f"{spec.flag} {path} would overwrite {claimed[path.resolve()]}; "
                             "give it another name")
        claimed[path.resolve()] = spec.flag


def _read_array(path: Path, flag: str, member: str | None = None) -> np.ndarray:
    """Numbers as float32 from an .npy, or from array `member` of an .npz archive."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, NpzFile):
            with loaded:
                names: list[str] = sorted(loaded.files)
                array = np.asarray(loaded[member]) if member in names else None
        else:
            array = np.asarray(loaded)
    except OSError as err:
        raise InputError(f"{flag} {path}: cannot read it ({err.strerror or err})") from err
    except (ValueError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(f"{flag} {path}: not a readable {path.suffix} file ({err})") from err
    if array is None and member is None:
        raise InputError(f"{flag} {path}: an .npz archive under an .npy name; give an .npy array")
    if array is None:
        raise InputError(f"{flag} {path} holds arrays {names}, no {member!r}: give the .npz "
                         "that vae-client encode writes, or an .npy array")
    if array.dtype.kind not in "biuf":
        raise InputError(f"{flag} {path}: values of type {array.dtype}; give numbers (float32)")
    return array.astype(np.float32)


def _read_images(path: Path) -> np.ndarray:
    """Images [N >= 1, C, H, W] from a PNG (a vae-client grid or one picture) or an .npy."""
    if path.suffix.lower() != ".png":
        images = _read_array(path, "--in")
    else:
        try:
            images = read_images(path)
        except OSError as err:
            raise InputError(f"--in {path}: cannot read it ({err.strerror or err})") from err
    if images.ndim != 4:
        raise InputError(f"--in {path}: an array of shape {list(images.shape)}; images are "
                         "[N, C, H, W]")
    if len(images) == 0:
        raise InputError(f"--in {path}: holds no images")
    return images


def _load_images(path: Path, image_shape: tuple[int, ...]) -> np.ndarray:
    """Images from --in, checked against the model's image shape."""
    array = _read_images(path)
    if array.shape[1:] != tuple(image_shape):
        raise InputError(f"--in {path}: images of shape {list(array.shape[1:])}; the model takes "
                         f"{list(image_shape)} (C, H, W): give a PNG written by vae-client or "
                         "one picture of that size")
    return array


def _load_latents(path: Path, latent_dim: int) -> np.ndarray:
    """Latents [N, latent_dim] from an .npy, or the mean of the .npz that encode writes."""
    latents = _read_array(path, "--in", "mean" if path.suffix.lower() == ".npz" else None)
    if latents.ndim != 2 or latents.shape[1] != latent_dim:
        raise InputError(f"--in {path}: latents of shape {list(latents.shape)}; the model takes "
                         f"[N, {latent_dim}]")
    return latents


def _save_images(path: Path, images: np.ndarray) -> None:
    if path.suffix.lower() == ".npy":
        with path.open("wb") as f:  # a file, so np.save adds no second extension
            np.save(f, images)
    else:
        write_images(path, images)
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
    with args.out.open("wb") as f:
        np.savez(f, mean=mean, log_var=log_var)
    print(f"wrote {args.out} (mean and log_var, shape {list(mean.shape)})")


def _decode(client: VaeClient, args: argparse.Namespace) -> None:
    _save_images(args.out, client.decode(_load_latents(args.input, client.info().latent_dim)))


def _denoise(client: VaeClient, args: argparse.Namespace) -> None:
    images = _load_images(args.input, tuple(client.info().image_shape))
    denoised = client.denoise(images)
    _save_images(args.out, denoised)
    if args.compare is not None:
        info = client.info()
        write_comparison(args.compare, [("noisy", images), ("denoised", denoised)],
                         [f"{info.name} v{info.version}: vae-client denoise --in {args.input.name}"])
        print(f"wrote {args.compare} (noisy and denoised side by side, labelled)")


def _noise(args: argparse.Namespace) -> None:
    """Local: a noisy copy of images to try denoise on (Gaussian, clipped to [0, 1])."""
    if not (math.isfinite(args.sigma) and args.sigma >= 0):
        raise InputError(f"--sigma must be a finite number >= 0, got {args.sigma}")
    if args.count < 1:
        raise InputError(f"--count must be >= 1, got {args.count}")
    chosen = _read_images(args.input)[: args.count]
    noise = args.sigma * np.random.default_rng(args.seed).standard_normal(chosen.shape)
    _save_images(args.out, np.clip(chosen + noise, 0, 1).astype(np.float32))


def _io_arguments(parser: argparse.ArgumentParser, what_in: str | None, out_default: str,
                  what_out: str) -> None:
    if what_in is not None:
        parser.add_argument("--in", dest="input", type=Path, required=True, metavar="PATH",
                            help=what_in)
    parser.add_argument("--out", type=Path, default=Path(out_default), metavar="PATH",
                        help=what_out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vae-client", description="Call a vae-serve server.",
                                epilog=EXIT_CODES, formatter_class=HelpWithNotes)
    p.add_argument("--target", default=os.environ.get(TARGET_ENV, DEFAULT_TARGET),
                   help=f"server address; dns:///HOST:PORT resolves every replica (env {TARGET_ENV})")
    p.add_argument("--lb-policy", choices=LB_POLICIES,
                   help="client-side balancing (round_robin with a headless Service)")
    p.add_argument("--timeout", type=float, default=30.0, help="deadline per call, seconds")
    p.add_argument("--tls-ca-file", type=Path, metavar="PATH",
                   help="PEM CA that signed the server's certificate: TLS (unset: plaintext)")
    p.add_argument("--tls-cert-file", type=Path, metavar="PATH",
                   help="PEM client certificate, for a server that requires mutual TLS")
    p.add_argument("--tls-key-file", type=Path, metavar="PATH",
                   help="PEM private key of --tls-cert-file")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=summary, epilog=EXIT_CODES,
                              formatter_class=HelpWithNotes)

    command("info", "print the served model's shapes, version and provider").set_defaults(func=_info)
    s = command("sample", "draw images from the prior")
    s.add_argument("--count", type=int, default=16, help="number of images")
    s.add_argument("--seed", type=int, default=0, help="0: the server picks (and prints) one")
    s.add_argument("--temperature", type=float, default=1.0, help="prior std multiplier")
    _io_arguments(s, None, "samples.png", "images: .png grid or .npy")
    s.set_defaults(func=_sample, files=(OUT_IMAGES,))
    e = command("encode", "images -> posterior mean and log-variance")
    _io_arguments(e, "images: .png or .npy", "codes.npz", ".npz with arrays mean and log_var")
    e.set_defaults(func=_encode, files=(IN_IMAGES, OUT_CODES))
    d = command("decode", "latents -> images")
    _io_arguments(d, "latents: .npy float32 [N, latent_dim], or the .npz encode writes (its "
                  "mean)", "decoded.png", "images: .png grid or .npy")
    d.set_defaults(func=_decode, files=(IN_LATENTS, OUT_IMAGES))
    n = command("denoise", "noisy images -> decode(posterior mean)")
    _io_arguments(n, "noisy images: .png or .npy", "clean.png", "images: .png grid or .npy")
    n.add_argument("--compare", type=Path, metavar="PATH",
                   help="also write a labelled .png for people: each noisy image beside its "
                   "denoised one")
    n.set_defaults(func=_denoise, files=(IN_IMAGES, OUT_IMAGES, OUT_COMPARISON))
    z = command("noise", "write a noisy copy of images (local, no server call)")
    _io_arguments(z, "images: .png or .npy (e.g. RUN/parity_images.npy)", "noisy.png",
                  "noisy images: .png grid or .npy")
    z.add_argument("--sigma", type=float, default=0.2, help="Gaussian noise standard deviation")
    z.add_argument("--count", type=int, default=16, help="use the first COUNT images")
    z.add_argument("--seed", type=int, default=0, help="noise seed")
    z.set_defaults(local=_noise, files=(IN_IMAGES, OUT_IMAGES))
    return p


class HelpWithNotes(argparse.RawDescriptionHelpFormatter, DefaultsHelpFormatter):
    """Defaults in each flag's help, and the epilog's line breaks kept."""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not 0 < args.timeout <= MAX_TIMEOUT_S:  # NaN too; grpc takes more as "expired"
            raise InputError(f"--timeout must be in (0, {MAX_TIMEOUT_S:.0f}] seconds, got "
                             f"{args.timeout}")
        check_files(args)
        if "local" in args:
            args.local(args)
            return 0
        with VaeClient(args.target, lb_policy=args.lb_policy, timeout_s=args.timeout,
                       tls_ca_file=args.tls_ca_file, tls_cert_file=args.tls_cert_file,
                       tls_key_file=args.tls_key_file) as client:
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
