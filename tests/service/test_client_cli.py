"""vae-client as a person uses it: pictures in and out, one-line errors."""

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from service.client.cli import main
from service.pictures.png import read_images, read_png, write_png
from service.transport.server import RunningServer


async def cli(server: RunningServer, *argv: str) -> int:
    return await asyncio.to_thread(main, ["--target", f"127.0.0.1:{server.port}", *argv])


async def test_info_prints_the_model(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli(server, "info") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["image_shape"] == [1, 8, 8] and info["execution_provider"] == "CPUExecutionProvider"


async def test_sample_writes_a_png_grid(server: RunningServer, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli(server, "sample", "--count", "16", "--seed", "7", "--out",
                     str(tmp_path / "grid.png")) == 0
    picture = read_png(tmp_path / "grid.png")
    assert picture.shape == (14 * 37, 14 * 37) and "seed 7" in capsys.readouterr().out


async def test_encode_decode_and_denoise_files(server: RunningServer, tmp_path: Path) -> None:
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


async def test_pngs_the_client_writes_read_back_as_the_images(server: RunningServer,
                                                              tmp_path: Path) -> None:
    assert await cli(server, "sample", "--count", "5", "--seed", "3", "--out",
                     str(tmp_path / "s.npy")) == 0
    assert await cli(server, "noise", "--in", str(tmp_path / "s.npy"), "--sigma", "0.2",
                     "--out", str(tmp_path / "noisy.png")) == 0
    assert await cli(server, "denoise", "--in", str(tmp_path / "noisy.png"), "--out",
                     str(tmp_path / "clean.png")) == 0
    clean, samples = read_images(tmp_path / "clean.png"), np.load(tmp_path / "s.npy")
    assert clean.shape == samples.shape == (5, 1, 8, 8)
    assert np.abs(read_images(tmp_path / "noisy.png") - samples).mean() > 0.05


async def test_wrong_picture_size_and_bad_count_exit_2(server: RunningServer, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    write_png(tmp_path / "big.png", np.zeros((28, 28), np.float32))
    assert await cli(server, "denoise", "--in", str(tmp_path / "big.png")) == 2
    assert await cli(server, "sample", "--count", "0") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "the model takes [1, 8, 8]" in err[0] and "INVALID_ARGUMENT: count: 0" in err[1]


def test_unreachable_server_is_one_line_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--target", "127.0.0.1:1", "--timeout", "1", "info"]) == 1
    assert capsys.readouterr().err.startswith("vae-client: error: ")


async def test_decode_takes_the_codes_encode_wrote(server: RunningServer, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.random.default_rng(1).random((3, 1, 8, 8), dtype=np.float32))
    assert await cli(server, "encode", "--in", str(tmp_path / "x.npy"), "--out",
                     str(tmp_path / "codes.npz")) == 0
    assert await cli(server, "decode", "--in", str(tmp_path / "codes.npz"), "--out",
                     str(tmp_path / "x_hat.npy")) == 0
    np.save(tmp_path / "mean.npy", np.load(tmp_path / "codes.npz")["mean"])
    assert await cli(server, "decode", "--in", str(tmp_path / "mean.npy"), "--out",
                     str(tmp_path / "from_mean.npy")) == 0
    assert np.load(tmp_path / "x_hat.npy").tobytes() == np.load(tmp_path / "from_mean.npy").tobytes()


def _bad_files(folder: Path) -> None:
    """Files of every wrong kind the cases below pass, and two good ones (x.npy, x.png)."""
    rng = np.random.default_rng(2)
    np.save(folder / "x.npy", rng.random((2, 1, 8, 8), dtype=np.float32))
    write_png(folder / "x.png", rng.random((8, 8)).astype(np.float32))
    write_png(folder / "big.png", np.zeros((28, 28), np.float32))
    np.savez(folder / "other.npz", a=np.zeros((2, 8), np.float32), b=np.ones(3))
    with (folder / "zip.npy").open("wb") as f:  # an .npz archive under an .npy name
        np.savez(f, mean=np.zeros((2, 8), np.float32))
    np.save(folder / "z5.npy", np.zeros((2, 5), np.float32))
    np.save(folder / "words.npy", np.array([["a", "b"]]))
    np.save(folder / "none.npy", np.zeros((0, 1, 8, 8), np.float32))
    (folder / "empty.npy").write_bytes(b"")
    (folder / "text.png").write_text("not a picture\n")
    (folder / "link.png").symlink_to("x.png")
    (folder / "folder.png").mkdir()
    np.save(folder / "parity_images.npy", rng.random((4, 1, 8, 8), dtype=np.float32))


BAD_CALLS = {  # argv (names relative to the test's folder) -> what the one line says
    "decode an npz with other arrays": (["decode", "--in", "other.npz"], "holds arrays ['a', 'b']"),
    "decode a picture": (["decode", "--in", "x.png"], "--in x.png: decode reads .npy or .npz"),
    "decode a missing file": (["decode", "--in", "gone.npy"], "--in gone.npy: cannot read it"),
    "decode an empty file": (["decode", "--in", "empty.npy"], "empty.npy: not a readable .npy"),
    "decode an npz named .npy": (["decode", "--in", "zip.npy"], "zip.npy: an .npz archive"),
    "decode latents of 5": (["decode", "--in", "z5.npy"], "the model takes [N, 8]"),
    "decode words": (["decode", "--in", "words.npy"], "words.npy: values of type <U1"),
    "decode to jpg": (["decode", "--in", "z5.npy", "--out", "d.jpg"],
                      "--out d.jpg: decode writes .png or .npy"),
    "encode to npy": (["encode", "--in", "x.png", "--out", "codes.npy"],
                      "--out codes.npy: encode writes .npz"),
    "encode an npz": (["encode", "--in", "other.npz"], "--in other.npz: encode reads .png or .npy"),
    "encode a picture of 28x28": (["encode", "--in", "big.png"], "the model takes [1, 8, 8]"),
    "encode no images": (["encode", "--in", "none.npy"], "none.npy: holds no images"),
    "encode a text file": (["encode", "--in", "text.png"], "text.png is not a PNG file"),
    "encode over its input": (["encode", "--in", "x.npy", "--out", "x.npy"],
                              "--out x.npy: encode writes .npz"),
    "compare over the run's npy": (["denoise", "--in", "x.png", "--compare", "parity_images.npy"],
                                   "--compare parity_images.npy: denoise writes .png"),
    "denoise over its input": (["denoise", "--in", "x.png", "--out", "x.png"],
                               "--out x.png would overwrite --in"),
    "compare over its input": (["denoise", "--in", "x.png", "--out", "c.npy", "--compare",
                                "link.png"], "--compare link.png would overwrite --in"),
    "compare over the output": (["denoise", "--in", "x.png", "--out", "c.png", "--compare",
                                 "c.png"], "--compare c.png would overwrite --out"),
    "sample to txt": (["sample", "--out", "s.txt"], "--out s.txt: sample writes .png or .npy"),
    "sample into no folder": (["sample", "--out", "gone/s.png"], "--out gone/s.png: no folder gone"),
    "noise over its input": (["noise", "--in", "x.npy", "--out", "x.npy"],
                             "--out x.npy would overwrite --in"),
    "noise to npz": (["noise", "--in", "x.npy", "--out", "n.npz"], "noise writes .png or .npy"),
    "noise of no images": (["noise", "--in", "x.npy", "--count", "0"], "--count must be >= 1"),
    "noise of NaN sigma": (["noise", "--in", "x.npy", "--sigma", "nan"], "--sigma must be"),
    "noise of a missing file": (["noise", "--in", "gone.png"], "--in gone.png: cannot read it"),
    "noise into a folder": (["noise", "--in", "x.npy", "--out", "folder.png"],
                            "--out folder.png is a folder"),
    "a timeout of NaN": (["--timeout", "nan", "info"], "--timeout must be in (0, "),
    "a timeout of 0": (["--timeout", "0", "sample"], "--timeout must be in (0, "),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
async def test_a_wrong_file_is_one_line_and_exit_2(
        server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    argv, message = BAD_CALLS[case]
    _bad_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert before["link.png"] == before["x.png"]
    assert await cli(server, *argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("vae-client: error: "), err
    assert message in err, err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert not any((tmp_path / "folder.png").iterdir())  # nothing written anywhere
