"""VaeClient: numpy in, numpy out over gRPC (grpcio and numpy only), and the `vae-client` CLI."""

from __future__ import annotations

import argparse
import csv
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
from service.pictures.figures import labelled_row, stacked, write_comparison
from service.pictures.png import PngError, read_images, write_images, write_png
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


@dataclass(frozen=True)
class Scores:
    """Score's answer, per image in nats, with what repeats it: the samples, seed and version."""

    neg_elbo: np.ndarray
    """[N] reconstruction + kl: an upper bound on -log p(x)."""
    reconstruction: np.ndarray
    """[N] -log p(x | z), averaged over the samples."""
    kl: np.ndarray
    """[N] KL(q(z | x) || N(0, I)), in closed form."""
    nll: np.ndarray
    """[N] the importance-weighted bound on -log p(x): tighter than neg_elbo as samples grow."""
    samples: int
    seed: int
    version: int

    def bounds(self) -> dict[str, np.ndarray]:
        """The four per-image arrays by name, in the order of the proto."""
        return {"neg_elbo": self.neg_elbo, "reconstruction": self.reconstruction, "kl": self.kl,
                "nll": self.nll}


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

    def score(self, images: np.ndarray, samples: int = 1, seed: int = 0) -> Scores:
        """images [N, C, H, W] in [0, 1] -> per-image bounds with `samples` importance draws;
        seed 0 lets the server pick and report one."""
        r = self.stub.Score(vae_pb2.ScoreRequest(images=to_tensor(images), samples=samples,
                                                 seed=seed), timeout=self.timeout_s)
        return Scores(to_array(r.neg_elbo), to_array(r.reconstruction), to_array(r.kl),
                      to_array(r.nll), int(r.samples), int(r.seed), int(r.version))

    def interpolate(self, images: np.ndarray | None = None, latents: np.ndarray | None = None,
                    steps: int = 8, spherical: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Two images [2, C, H, W] or two latents [2, latent] (exactly one) -> (images
        [steps, C, H, W], latents [steps, latent]) along the path, both ends included."""
        if (images is None) == (latents is None):
            raise ValueError("interpolate takes two images or two latents: give exactly one")
        path = (vae_pb2.INTERPOLATION_PATH_SPHERICAL if spherical
                else vae_pb2.INTERPOLATION_PATH_LINEAR)
        request = vae_pb2.InterpolateRequest(steps=steps, path=path)
        if images is not None:
            request.images.CopyFrom(to_tensor(images))
        if latents is not None:
            request.latents.CopyFrom(to_tensor(latents))
        r = self.stub.Interpolate(request, timeout=self.timeout_s)
        return to_array(r.images), to_array(r.latents)

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
LATENT_FILES = (".npy", ".npz")
IN_IMAGES = FileFlag("--in", "input", IMAGE_FILES, writes=False)
IN_LATENTS = FileFlag("--in", "input", LATENT_FILES, writes=False)
OUT_IMAGES = FileFlag("--out", "out", IMAGE_FILES, writes=True)
OUT_CODES = FileFlag("--out", "out", (".npz",), writes=True)
OUT_COMPARISON = FileFlag("--compare", "compare", (".png",), writes=True)
END_IMAGES = FileFlag("--images", "images", IMAGE_FILES, writes=False)
END_LATENTS = FileFlag("--latents", "latents", LATENT_FILES, writes=False)
OUT_SCORES = FileFlag("--out", "out", (".csv", ".json"), writes=True)
OUT_EXTREMES = FileFlag("--picture", "picture", (".png",), writes=True)
OUT_STRIP = FileFlag("--out", "out", (".png",), writes=True)
OUT_FRAMES = FileFlag("--npz", "npz", (".npz",), writes=True)


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


def _read_images(path: Path, flag: str) -> np.ndarray:
    """Images [N >= 1, C, H, W] from a PNG (a vae-client grid or one picture) or an .npy."""
    if path.suffix.lower() != ".png":
        images = _read_array(path, flag)
    else:
        try:
            images = read_images(path)
        except OSError as err:
            raise InputError(f"{flag} {path}: cannot read it ({err.strerror or err})") from err
    if images.ndim != 4:
        raise InputError(f"{flag} {path}: an array of shape {list(images.shape)}; images are "
                         "[N, C, H, W]")
    if len(images) == 0:
        raise InputError(f"{flag} {path}: holds no images")
    return images


def _read_latents(path: Path, flag: str) -> np.ndarray:
    """Latents [N >= 1, latent] from an .npy, or the mean of the .npz that encode writes."""
    latents = _read_array(path, flag, "mean" if path.suffix.lower() == ".npz" else None)
    if latents.ndim != 2 or len(latents) == 0:
        raise InputError(f"{flag} {path}: latents of shape {list(latents.shape)}; latents are "
                         "[N >= 1, latent_dim]")
    return latents


def _fit_images(images: np.ndarray, info: vae_pb2.ModelInfo, path: Path, flag: str) -> np.ndarray:
    """Images read from a file flag, checked against the served model's image shape."""
    if images.shape[1:] != tuple(info.image_shape):
        raise InputError(f"{flag} {path}: images of shape {list(images.shape[1:])}; the model "
                         f"takes {list(info.image_shape)} (C, H, W): give a PNG written by "
                         "vae-client or one picture of that size")
    return images


def _fit_latents(latents: np.ndarray, info: vae_pb2.ModelInfo, path: Path, flag: str
                 ) -> np.ndarray:
    """Latents read from a file flag, checked against the served model's latent size."""
    if latents.shape[1] != info.latent_dim:
        raise InputError(f"{flag} {path}: latents of shape {list(latents.shape)}; the model "
                         f"takes [N, {info.latent_dim}]")
    return latents


def _load_images(client: VaeClient, path: Path, flag: str) -> np.ndarray:
    """Images from a file flag: read (local errors first), then fitted to the model."""
    return _fit_images(_read_images(path, flag), client.info(), path, flag)


def _load_latents(client: VaeClient, path: Path, flag: str) -> np.ndarray:
    """Latents from a file flag: read (local errors first), then fitted to the model."""
    return _fit_latents(_read_latents(path, flag), client.info(), path, flag)


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
                      "max_sample_count": i.max_sample_count,
                      "max_score_samples": i.max_score_samples,
                      "operations": list(i.operations)}, indent=2))


def _sample(client: VaeClient, args: argparse.Namespace) -> None:
    images, _, seed = client.sample(args.count, args.seed, args.temperature)
    print(f"seed {seed}")
    _save_images(args.out, images)


def _encode(client: VaeClient, args: argparse.Namespace) -> None:
    mean, log_var = client.encode(_load_images(client, args.input, "--in"))
    with args.out.open("wb") as f:
        np.savez(f, mean=mean, log_var=log_var)
    print(f"wrote {args.out} (mean and log_var, shape {list(mean.shape)})")


def _decode(client: VaeClient, args: argparse.Namespace) -> None:
    _save_images(args.out, client.decode(_load_latents(client, args.input, "--in")))


def _denoise(client: VaeClient, args: argparse.Namespace) -> None:
    images = _load_images(client, args.input, "--in")
    denoised = client.denoise(images)
    _save_images(args.out, denoised)
    if args.compare is not None:
        info = client.info()
        write_comparison(args.compare, [("noisy", images), ("denoised", denoised)],
                         [f"{info.name} v{info.version}: vae-client denoise --in {args.input.name}"])
        print(f"wrote {args.compare} (noisy and denoised side by side, labelled)")


SUMMARY_PERCENTILES = {"median": 50.0, "p99": 99.0}
"""The summary rows under the score table (and in its .json): over the images, per bound."""
EXTREMES_CAPTION = "label = image number: nll in nats"


def _short(value: float | np.floating[Any]) -> float:
    """A float32 score as the shortest decimal that reads back as the same float32."""
    return float(str(np.float32(value)))


def _score_summary(scores: Scores) -> dict[str, dict[str, float]]:
    return {label: {name: _short(np.percentile(values, q)) for name, values in scores.bounds().items()}
            for label, q in SUMMARY_PERCENTILES.items()}


def _score_table(scores: Scores) -> str:
    """A row per image, then the summary rows, then what repeats the numbers."""
    bounds = scores.bounds()
    lines = [f"{'image':>6}" + "".join(f"{name:>16}" for name in bounds)]
    lines += [f"{i:>6}" + "".join(f"{values[i]:>16.3f}" for values in bounds.values())
              for i in range(len(scores.nll))]
    lines += [f"{label:>6}" + "".join(f"{value:>16.3f}" for value in row.values())
              for label, row in _score_summary(scores).items()]
    lines.append(f"nats per image; samples {scores.samples}, seed {scores.seed}, "
                 f"version {scores.version}")
    return "\n".join(lines)


def _write_scores(path: Path, scores: Scores) -> None:
    """Every score: .csv a row per image; .json also with the summary and what repeats it."""
    bounds, count = scores.bounds(), len(scores.nll)
    if path.suffix.lower() == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", *bounds])
            writer.writerows([i, *(_short(values[i]) for values in bounds.values())]
                             for i in range(count))
    else:
        report = {"version": scores.version, "samples": scores.samples, "seed": scores.seed,
                  "unit": "nats", **_score_summary(scores),
                  "scores": [{"image": i, **{name: _short(values[i]) for name, values in
                                             bounds.items()}} for i in range(count)]}
        path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path} ({count} images' scores)")


def _extremes(images: np.ndarray, scores: Scores, show: int, caption: list[str]) -> np.ndarray:
    """The `show` least likely images (highest nll) in a row above the `show` most likely."""
    order = np.argsort(scores.nll, kind="stable")
    rows = ((order[::-1][:show], [*caption, "highest nll: least likely"]),
            (order[:show], ["lowest nll: most likely"]))
    return stacked([labelled_row(images[chosen], [f"{i}: {scores.nll[i]:.1f}" for i in chosen], lines)
                    for chosen, lines in rows])


def _at_least(flag: str, value: int, low: int, meaning: str) -> None:
    """A count flag's lower bound, checked before any call; the server checks the upper one."""
    if value < low:
        raise InputError(f"{flag} must be >= {low} ({meaning}), got {value}")


def _check_seed(seed: int) -> None:
    if not 0 <= seed < 2**64:
        raise InputError(f"--seed must be in 0..2**64-1 (0: the server picks one), got {seed}")


def _score(client: VaeClient, args: argparse.Namespace) -> None:
    _at_least("--samples", args.samples, 1, "1 = the ELBO alone")
    _at_least("--show", args.show, 1, "images per row of --picture")
    _check_seed(args.seed)
    images = _load_images(client, args.images, "--images")
    scores = client.score(images, args.samples, args.seed)
    print(_score_table(scores))
    if args.out is not None:
        _write_scores(args.out, scores)
    if args.picture is not None:
        caption = [f"{client.info().name} v{scores.version}: {args.images.name}, samples "
                   f"{scores.samples}, seed {scores.seed}", EXTREMES_CAPTION]
        write_png(args.picture, _extremes(images, scores, args.show, caption))
        print(f"wrote {args.picture} (the {min(args.show, len(images))} highest and lowest "
              "nll images, labelled)")


STRIP_FRAMES_PER_ROW = 16
"""A long strip wraps: about 1,900 px wide at 112 px per frame."""


def _strip(frames: np.ndarray, caption: list[str]) -> np.ndarray:
    """The frames in rows, labelled a, t=..., b by their place on the path."""
    t = np.linspace(0.0, 1.0, len(frames))
    labels = ["a", *(f"t={v:.2f}" for v in t[1:-1]), "b"]
    return stacked([labelled_row(frames[start : start + STRIP_FRAMES_PER_ROW],
                                 labels[start : start + STRIP_FRAMES_PER_ROW],
                                 caption if start == 0 else [])
                    for start in range(0, len(frames), STRIP_FRAMES_PER_ROW)])


def _pick_pair(items: np.ndarray, pair: list[int], path: Path, flag: str) -> np.ndarray:
    """The two items --pair names, [2, ...]: the ends a and b of the path."""
    if not all(0 <= i < len(items) for i in pair):
        raise InputError(f"--pair {pair[0]} {pair[1]}: {flag} {path} holds {len(items)} "
                         f"item(s), numbered 0..{len(items) - 1}; interpolate needs two")
    return items[pair]


def _interpolate(client: VaeClient, args: argparse.Namespace) -> None:
    _at_least("--steps", args.steps, 2, "frames, both ends included")
    from_images = args.images is not None
    path, flag = (args.images, "--images") if from_images else (args.latents, "--latents")
    ends = _pick_pair((_read_images if from_images else _read_latents)(path, flag), args.pair,
                      path, flag)
    info = client.info()
    ends = (_fit_images if from_images else _fit_latents)(ends, info, path, flag)
    frames, latents = client.interpolate(ends if from_images else None,
                                         None if from_images else ends, args.steps,
                                         spherical=args.path == "spherical")
    caption = [f"{info.name} v{info.version}: {args.path} path, a = {args.pair[0]} and "
               f"b = {args.pair[1]} of {path.name}"]
    write_png(args.out, _strip(frames, caption))
    print(f"wrote {args.out} ({len(frames)} frames from a to b, {args.path} path, labelled)")
    if args.npz is not None:
        with args.npz.open("wb") as f:
            np.savez(f, images=frames, latents=latents)
        print(f"wrote {args.npz} (images {list(frames.shape)} and latents {list(latents.shape)})")


def _noise(args: argparse.Namespace) -> None:
    """Local: a noisy copy of images to try denoise on (Gaussian, clipped to [0, 1])."""
    if not (math.isfinite(args.sigma) and args.sigma >= 0):
        raise InputError(f"--sigma must be a finite number >= 0, got {args.sigma}")
    if args.count < 1:
        raise InputError(f"--count must be >= 1, got {args.count}")
    chosen = _read_images(args.input, "--in")[: args.count]
    noise = args.sigma * np.random.default_rng(args.seed).standard_normal(chosen.shape)
    _save_images(args.out, np.clip(chosen + noise, 0, 1).astype(np.float32))


def _io_arguments(parser: argparse.ArgumentParser, what_in: str | None, out_default: str,
                  what_out: str) -> None:
    if what_in is not None:
        parser.add_argument("--in", dest="input", type=Path, required=True, metavar="PATH",
                            help=what_in)
    parser.add_argument("--out", type=Path, default=Path(out_default), metavar="PATH",
                        help=what_out)


SCORE_DETAILS = """Prints a row per image, then the median and the 99th percentile of each column
over the images, all in nats (natural-log units; lower = more likely under the model):
  neg_elbo        reconstruction + kl: the negative ELBO, an upper bound on -log p(x)
  reconstruction  -log p(x | z), averaged over the samples z ~ q(z | x)
  kl              KL(q(z | x) || N(0, I)), in closed form
  nll             the importance-weighted bound on -log p(x) from --samples draws (IWAE):
                  the estimate to rank by; high = unlike the training data (an anomaly)
The same images, --samples and --seed give the same numbers from the same model version;
the seed used is printed. One call scores the whole file; the server caps images x samples
per call and its error names the cap: split a file that asks for more."""
INTERPOLATE_DETAILS = """The ends are two images of --images (their posterior means) or two codes of
--latents, chosen by --pair; --steps frames from a to b, both ends included, are decoded in
one batch. linear: a straight line; spherical: the great circle (slerp), whose frames keep
the norm that codes drawn from the prior have. The strip labels the ends a and b and each
frame between by its place t on the path (0 < t < 1)."""


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

    def command(name: str, summary: str, details: str = "") -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=f"{summary}\n\n{details}".strip(),
                              epilog=EXIT_CODES, formatter_class=HelpWithNotes)

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
    c = command("score", "images -> how unlikely each is under the model, in nats", SCORE_DETAILS)
    c.add_argument("--images", type=Path, required=True, metavar="PATH",
                   help="images: .png or .npy")
    c.add_argument("--samples", type=int, default=1,
                   help="importance samples per image, 1..the server's max_score_samples (see "
                   "info); nll tightens as it grows")
    c.add_argument("--seed", type=int, default=0, help="0: the server picks (and prints) one")
    c.add_argument("--out", type=Path, metavar="PATH",
                   help="also write the scores: .csv (a row per image) or .json (with the "
                   "summary, samples, seed and version)")
    c.add_argument("--picture", type=Path, metavar="PATH",
                   help="also write a labelled .png for people: the least likely images (highest "
                   "nll) above the most likely, each with its number and nll")
    c.add_argument("--show", type=int, default=4, help="images in each row of --picture")
    c.set_defaults(func=_score, files=(END_IMAGES, OUT_SCORES, OUT_EXTREMES))
    i = command("interpolate", "two images or two codes -> frames decoded along the path "
                "between them", INTERPOLATE_DETAILS)
    ends = i.add_mutually_exclusive_group(required=True)
    ends.add_argument("--images", type=Path, metavar="PATH",
                      help="images: .png or .npy; the path runs between two posterior means")
    ends.add_argument("--latents", type=Path, metavar="PATH",
                      help="latents: .npy float32 [N, latent_dim], or the .npz encode writes (its "
                      "mean); the path runs between two of them")
    i.add_argument("--pair", type=int, nargs=2, default=[0, 1], metavar=("A", "B"),
                   help="the numbers of the two ends in the file (from 0)")
    i.add_argument("--steps", type=int, default=8,
                   help="frames, both ends included: 2..the server's max_sample_count (see info)")
    i.add_argument("--path", choices=("linear", "spherical"), default="linear",
                   help="linear: the straight line; spherical: the great circle (slerp)")
    i.add_argument("--out", type=Path, default=Path("strip.png"), metavar="PATH",
                   help="the frames as a labelled .png strip, a to b, 16 to a row")
    i.add_argument("--npz", type=Path, metavar="PATH",
                   help="also write the frames as .npz: arrays images [steps, C, H, W] and "
                   "latents [steps, latent_dim]")
    i.set_defaults(func=_interpolate, files=(END_IMAGES, END_LATENTS, OUT_STRIP, OUT_FRAMES))
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
