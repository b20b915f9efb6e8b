"""Datasets as float32 arrays [N, C, H, W] in [0, 1], with fixed train/validation/test splits."""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.errors import UsageError

DATASETS = ("digits", "mnist", "fashion-mnist")
IDX_IMAGES_MAGIC = 0x00000803
"""Unsigned bytes, three dimensions (N, H, W): the IDX header of MNIST image files."""
MNIST_VALIDATION_ROWS = 5000
"""The last rows of the official training file form the validation split."""
DIGITS_TEST_FRACTION = 0.2
DIGITS_VALIDATION_FRACTION = 0.1
SPLIT_SEED = 0
"""Seed of the one permutation that splits digits; fixed so every run sees the same split."""


@dataclass(frozen=True)
class Splits:
    """Images of one dataset; every array is float32 [N, C, H, W] in [0, 1]."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.shape[1:]
        return int(c), int(h), int(w)


def read_idx_images(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX image file into uint8 [N, H, W]; a bad file raises UsageError."""
    if not path.is_file():
        raise UsageError(f"{path}: no such file; expected a gzipped IDX image file")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise UsageError(f"{path}: not a readable gzip file ({err}); download it again") from err
    if len(raw) < 16:
        raise UsageError(f"{path}: {len(raw)} bytes, shorter than the 16-byte IDX header")
    magic, count, rows, cols = struct.unpack(">IIII", raw[:16])
    if magic != IDX_IMAGES_MAGIC:
        raise UsageError(
            f"{path}: magic number {magic:#010x}, expected {IDX_IMAGES_MAGIC:#010x} "
            "(IDX unsigned-byte images); is this a label file?"
        )
    expected = 16 + count * rows * cols
    if len(raw) != expected:
        raise UsageError(
            f"{path}: {len(raw)} bytes, expected {expected} for {count} images of "
            f"{rows}x{cols}; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, rows, cols)


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """Write uint8 [N, H, W] as a gzipped IDX file (the inverse of read_idx_images)."""
    header = struct.pack(">IIII", IDX_IMAGES_MAGIC, *images.shape)
    path.write_bytes(gzip.compress(header + images.astype(np.uint8).tobytes()))


def _idx_file(data_dir: Path, stem: str) -> Path:
    gz = data_dir / f"{stem}.gz"
    return gz if gz.exists() or not (data_dir / stem).exists() else data_dir / stem


def _as_unit_images(pixels: np.ndarray, scale: float) -> np.ndarray:
    return (pixels.astype(np.float32) / scale)[:, None, :, :]


def load_mnist_like(data_dir: Path) -> Splits:
    """MNIST-format IDX files: train = first 55,000, validation = last 5,000, test = t10k."""
    train = read_idx_images(_idx_file(data_dir, "train-images-idx3-ubyte"))
    test = read_idx_images(_idx_file(data_dir, "t10k-images-idx3-ubyte"))
    train_all = _as_unit_images(train, 255.0)
    return Splits(
        train=train_all[:-MNIST_VALIDATION_ROWS],
        validation=train_all[-MNIST_VALIDATION_ROWS:],
        test=_as_unit_images(test, 255.0),
    )


def load_digits() -> Splits:
    """scikit-learn's bundled 8x8 digits (values 0..16), split 70/10/20 by a fixed permutation."""
    from sklearn.datasets import load_digits as sklearn_digits

    images = _as_unit_images(sklearn_digits().images, 16.0)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    n_test = int(len(images) * DIGITS_TEST_FRACTION)
    n_val = int(len(images) * DIGITS_VALIDATION_FRACTION)
    test, val, train = np.split(order, [n_test, n_test + n_val])
    return Splits(train=images[train], validation=images[val], test=images[test])


def load_splits(dataset: str, data_dir: Path | None) -> Splits:
    """Load one of DATASETS; MNIST-like sets need data_dir holding the IDX files."""
    if dataset == "digits":
        return load_digits()
    if dataset not in DATASETS:
        raise UsageError(f"dataset {dataset!r} is unknown; choose one of {', '.join(DATASETS)}")
    if data_dir is None:
        raise UsageError(f"dataset {dataset} needs --data-dir, a folder with its IDX files")
    if not data_dir.is_dir():
        raise UsageError(f"--data-dir {data_dir}: no such folder")
    return load_mnist_like(data_dir)
