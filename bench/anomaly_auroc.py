"""Anomaly detection, measured: AUROC of Score for in-distribution against out-of-distribution test images.

python -m bench.anomaly_auroc --repo models --data-dir ~/data --pair mnist:mnist:fashion-mnist \
    --pair fashion:fashion-mnist:mnist

Each --pair MODEL:IN:OUT serves model MODEL of --repo (a free port on 127.0.0.1) and scores
the first --images test images of dataset IN (in-distribution) and of OUT through vae.v1
Score: once with samples=1 (the negative ELBO) and once with samples=--samples (the IWAE
bound). The AUROC is the probability that an OUT image scores higher (more anomalous) than
an IN image (Mann-Whitney; 1 = perfect detector, 0.5 = chance, below 0.5 = OUT looks *more*
likely than IN). Prints a markdown table (written to --out too).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import grpc
import numpy as np
from scipy.stats import rankdata
from tqdm import tqdm

from bench.report import command_line, publish
from bench.serve_bench import vae_server
from service.fronts.tensors import to_array, to_tensor
from service.help_format import DefaultsHelpFormatter
from service.vae.v1 import vae_pb2, vae_pb2_grpc
from training.data import load_mnist_like

IMAGES_PER_CALL = 50


def auroc(inliers: np.ndarray, outliers: np.ndarray) -> float:
    """P(outlier score > inlier score) + P(equal) / 2, from the ranks of the pooled scores."""
    ranks = rankdata(np.concatenate([inliers, outliers]))  # ties share their mean rank
    out_ranks = ranks[len(inliers):].sum()
    return float((out_ranks - len(outliers) * (len(outliers) + 1) / 2)
                 / (len(inliers) * len(outliers)))


def score(stub: vae_pb2_grpc.VaeServiceStub, images: np.ndarray, samples: int, label: str
          ) -> np.ndarray:
    """Per-image neg_elbo (samples = 1) or nll (samples > 1), in calls of IMAGES_PER_CALL."""
    field = "neg_elbo" if samples == 1 else "nll"
    parts = []
    for start in tqdm(range(0, len(images), IMAGES_PER_CALL), desc=label, unit="call",
                      leave=False):
        answer = stub.Score(vae_pb2.ScoreRequest(
            images=to_tensor(images[start:start + IMAGES_PER_CALL]), samples=samples, seed=1))
        parts.append(to_array(getattr(answer, field)))
    return np.concatenate(parts)


def parse_pair(text: str) -> tuple[str, str, str]:
    parts = text.split(":")
    if len(parts) != 3 or not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r}: write MODEL:IN:OUT, e.g. "
                                         "mnist:mnist:fashion-mnist")
    return parts[0], parts[1], parts[2]


def measure(repo: Path, data_dir: Path, pair: tuple[str, str, str], count: int, samples: int
            ) -> str:
    model, inside, outside = pair
    tests = {name: load_mnist_like(data_dir / name).test[:count] for name in (inside, outside)}
    server = vae_server(repo, model)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = vae_pb2_grpc.VaeServiceStub(channel)
            cells = []
            for k in (1, samples):
                scores = {name: score(stub, images, k, f"{model} {name} k={k}")
                          for name, images in tests.items()}
                cells += [f"{auroc(scores[inside], scores[outside]):.3f}",
                          f"{np.median(scores[inside]):.1f} / {np.median(scores[outside]):.1f}"]
    finally:
        server.stop()
    return f"| {model} | {inside} | {outside} | {' | '.join(cells)} |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.anomaly_auroc", description=__doc__,
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--repo", type=Path, default=Path("models"))
    p.add_argument("--data-dir", type=Path, required=True,
                   help="a folder with mnist/ and fashion-mnist/ IDX files")
    p.add_argument("--pair", action="append", required=True, metavar="MODEL:IN:OUT",
                   type=parse_pair, help="a served model and the datasets it should and "
                   "should not find likely")
    p.add_argument("--images", type=int, default=2000, help="test images of each dataset")
    p.add_argument("--samples", type=int, default=100, help="k of the IWAE column")
    p.add_argument("--out", type=Path, default=Path("bench/out/anomaly.md"))
    args = p.parse_args(argv)
    rows = [measure(args.repo, args.data_dir, pair, args.images, args.samples)
            for pair in args.pair]
    k = args.samples
    command = command_line("bench.anomaly_auroc", argv)
    text = "\n".join([
        f"`{command.strip()}`", "",
        f"| model | in | out | AUROC -ELBO | median -ELBO in / out (nats) | AUROC IWAE k={k} | "
        f"median IWAE in / out (nats) |", "|---|---|---|---:|---:|---:|---:|", *rows]) + "\n"
    publish(args.out, text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
