"""`vae-client`: one subcommand per RPC (and `noise`), files in and out, one-line errors."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from service.client.files import (
    END_IMAGES,
    END_LATENTS,
    IN_IMAGES,
    IN_LATENTS,
    OUT_CODES,
    OUT_COMPARISON,
    OUT_EXTREMES,
    OUT_FRAMES,
    OUT_IMAGES,
    OUT_SCORES,
    OUT_STRIP,
    InputError,
    check_files,
    fit_images,
    fit_latents,
    load_images,
    load_latents,
    read_image_file,
    read_latent_file,
    save_images,
)
from service.client.vae_client import DEFAULT_TARGET, LB_POLICIES, Scores, VaeClient
from service.help_format import DefaultsHelpFormatter
from service.pictures.figures import labelled_row, stacked, write_comparison
from service.pictures.png import PngError, write_png

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
    save_images(args.out, images)


def _encode(client: VaeClient, args: argparse.Namespace) -> None:
    mean, log_var = client.encode(load_images(client, args.input, "--in"))
    with args.out.open("wb") as f:
        np.savez(f, mean=mean, log_var=log_var)
    print(f"wrote {args.out} (mean and log_var, shape {list(mean.shape)})")


def _decode(client: VaeClient, args: argparse.Namespace) -> None:
    save_images(args.out, client.decode(load_latents(client, args.input, "--in")))


def _denoise(client: VaeClient, args: argparse.Namespace) -> None:
    images = load_images(client, args.input, "--in")
    denoised = client.denoise(images)
    save_images(args.out, denoised)
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
    images = load_images(client, args.images, "--images")
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
    ends = _pick_pair((read_image_file if from_images else read_latent_file)(path, flag), args.pair,
                      path, flag)
    info = client.info()
    ends = (fit_images if from_images else fit_latents)(ends, info, path, flag)
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
    chosen = read_image_file(args.input, "--in")[: args.count]
    noise = args.sigma * np.random.default_rng(args.seed).standard_normal(chosen.shape)
    save_images(args.out, np.clip(chosen + noise, 0, 1).astype(np.float32))


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
