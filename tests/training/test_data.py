from pathlib import Path

import numpy as np
import pytest

from tests.conftest import data_dir
from training.data import load_digits, load_splits, read_idx_images, write_idx_images
from training.errors import UsageError


def test_idx_round_trip(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    write_idx_images(tmp_path / "x.gz", images)
    np.testing.assert_array_equal(read_idx_images(tmp_path / "x.gz"), images)


def test_truncated_idx_names_file_and_sizes(tmp_path: Path) -> None:
    images = np.zeros((4, 28, 28), dtype=np.uint8)
    write_idx_images(tmp_path / "full.gz", images)
    import gzip

    raw = gzip.decompress((tmp_path / "full.gz").read_bytes())
    (tmp_path / "cut.gz").write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(UsageError, match=r"cut\.gz: 3052 bytes, expected 3152 .*truncated"):
        read_idx_images(tmp_path / "cut.gz")


def test_wrong_magic_is_explained(tmp_path: Path) -> None:
    import gzip
    import struct

    (tmp_path / "labels.gz").write_bytes(gzip.compress(struct.pack(">II", 0x801, 3) + b"abcdefgh"))
    with pytest.raises(UsageError, match=r"labels\.gz: magic number 0x00000801, expected"):
        read_idx_images(tmp_path / "labels.gz")


def test_cut_gzip_stream_is_explained(tmp_path: Path) -> None:
    write_idx_images(tmp_path / "x.gz", np.zeros((50, 28, 28), dtype=np.uint8))
    blob = (tmp_path / "x.gz").read_bytes()
    (tmp_path / "x.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UsageError, match=r"x\.gz: not a readable gzip file"):
        read_idx_images(tmp_path / "x.gz")


def test_missing_data_dir_is_explained(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        load_splits("mnist", tmp_path)


def test_digits_splits_are_fixed_disjoint_and_scaled() -> None:
    a, b = load_digits(), load_digits()
    np.testing.assert_array_equal(a.test, b.test)
    assert (len(a.train), len(a.validation), len(a.test)) == (1259, 179, 359)
    assert a.image_shape == (1, 8, 8)
    assert a.train.min() == 0.0 and a.train.max() == 1.0 and a.train.dtype == np.float32


@pytest.mark.mnist
def test_real_mnist_files() -> None:
    folder = data_dir("mnist")
    if not (folder / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST IDX files not found in {folder}")
    splits = load_splits("mnist", folder)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (55000, 5000, 10000)
    assert splits.image_shape == (1, 28, 28)
