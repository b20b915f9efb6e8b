"""vae-client as a person uses it: pictures in and out, one-line errors."""

import asyncio
import json
from pathlib import Path

import numpy as np

from service.client import main
from service.images import read_images, read_png, write_png
from service.server import RunningServer


async def cli(server: RunningServer, *argv: str) -> int:
    return await asyncio.to_thread(main, ["--target", f"127.0.0.1:{server.port}", *argv])


async def test_info_prints_the_model(server, capsys) -> None:
    assert await cli(server, "info") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["image_shape"] == [1, 8, 8] and info["execution_provider"] == "CPUExecutionProvider"


async def test_sample_writes_a_png_grid(server, tmp_path: Path, capsys) -> None:
    assert await cli(server, "sample", "--count", "16", "--seed", "7", "--out",
                     str(tmp_path / "grid.png")) == 0
    picture = read_png(tmp_path / "grid.png")
    assert picture.shape == (14 * 37, 14 * 37) and "seed 7" in capsys.readouterr().out


async def test_encode_decode_and_denoise_files(server, tmp_path: Path) -> None:
    noisy = np.clip(np.random.default_rng(0).random((8, 8)), 0, 1).astype(np.float32)
    write_png(tmp_path / "noisy.png", noisy)
    assert await cli(server, "denoise", "--in", str(tmp_path / "noisy.png"), "--out",
                     str(tmp_path / "clean.png"), "--compare", str(tmp_path / "compare.png")) == 0
    assert read_images(tmp_path / "clean.png").shape == (1, 1, 8, 8)
    compare = read_png(tmp_path / "compare.png")  # noisy and denoised, labelled, for people
    assert compare.shape[1] > 2 * 112 and (compare == 0).any()
    assert await cli(server, "encode", "--in", str(tmp_path / "noisy.png"), "--out",
                     str(tmp_path / "codes.npz")) == 0
    np.save(tmp_path / "z.npy", np.load(tmp_path / "codes.npz")["mean"])
    assert await cli(server, "decode", "--in", str(tmp_path / "z.npy"), "--out",
                     str(tmp_path / "x.npy")) == 0
    assert np.load(tmp_path / "x.npy").shape == (1, 1, 8, 8)


async def test_pngs_the_client_writes_read_back_as_the_images(server, tmp_path: Path) -> None:
    assert await cli(server, "sample", "--count", "5", "--seed", "3", "--out",
                     str(tmp_path / "s.npy")) == 0
    assert await cli(server, "noise", "--in", str(tmp_path / "s.npy"), "--sigma", "0.2",
                     "--out", str(tmp_path / "noisy.png")) == 0
    assert await cli(server, "denoise", "--in", str(tmp_path / "noisy.png"), "--out",
                     str(tmp_path / "clean.png")) == 0
    clean, samples = read_images(tmp_path / "clean.png"), np.load(tmp_path / "s.npy")
    assert clean.shape == samples.shape == (5, 1, 8, 8)
    assert np.abs(read_images(tmp_path / "noisy.png") - samples).mean() > 0.05


async def test_wrong_picture_size_and_bad_count_exit_2(server, tmp_path: Path, capsys) -> None:
    write_png(tmp_path / "big.png", np.zeros((28, 28), np.float32))
    assert await cli(server, "denoise", "--in", str(tmp_path / "big.png")) == 2
    assert await cli(server, "sample", "--count", "0") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "the model takes [1, 8, 8]" in err[0] and "INVALID_ARGUMENT: count: 0" in err[1]


def test_unreachable_server_is_one_line_exit_1(capsys) -> None:
    assert main(["--target", "127.0.0.1:1", "--timeout", "1", "info"]) == 1
    assert capsys.readouterr().err.startswith("vae-client: error: ")
