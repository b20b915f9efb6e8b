"""vae-client score and interpolate: tables, files and pictures from the real server; one-line
errors for bad input, found before any call."""

import asyncio
import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

from service.client.cli import main
from service.client.vae_client import VaeClient
from service.pictures.png import display_scale, read_png, write_png
from service.transport.server import RunningServer
from tests.service.test_client_cli import cli


def _digits(count: int) -> np.ndarray:
    from training.data import load_digits

    return np.ascontiguousarray(load_digits().test[:count])


T = TypeVar("T")


async def _ask(server: RunningServer, call: Callable[[VaeClient], T]) -> T:
    """A VaeClient call made off the event loop that serves it."""
    def run() -> T:
        with VaeClient(f"127.0.0.1:{server.port}") as client:
            return call(client)

    return await asyncio.to_thread(run)


async def test_score_prints_a_table_and_writes_the_clients_numbers(
        server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "x.npy", _digits(5))
    assert await cli(server, "score", "--images", str(tmp_path / "x.npy"), "--samples", "4",
                     "--seed", "3", "--out", str(tmp_path / "s.csv")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["image", "neg_elbo", "reconstruction", "kl", "nll"]
    assert [line.split()[0] for line in lines[1:8]] == ["0", "1", "2", "3", "4", "median", "p99"]
    assert "samples 4, seed 3, version 1" in lines[8]
    with (tmp_path / "s.csv").open() as f:
        rows = list(csv.DictReader(f))
    scores = await _ask(server, lambda client: client.score(_digits(5), samples=4, seed=3))
    for name, values in scores.bounds().items():
        assert np.array([row[name] for row in rows], np.float32).tobytes() == values.tobytes()


async def test_score_json_ranks_noise_above_digits_in_the_picture(
        server: RunningServer, tmp_path: Path) -> None:
    noise = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    np.save(tmp_path / "x.npy", np.concatenate([_digits(6), noise]))
    assert await cli(server, "score", "--images", str(tmp_path / "x.npy"), "--samples", "8",
                     "--out", str(tmp_path / "s.json"), "--picture", str(tmp_path / "e.png"),
                     "--show", "2") == 0
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["samples"] == 8 and report["seed"] > 0 and report["unit"] == "nats"
    nll = [row["nll"] for row in report["scores"]]
    assert sorted(range(8), key=nll.__getitem__)[-2:] in ([6, 7], [7, 6])
    assert report["median"]["nll"] == pytest.approx(float(np.median(np.array(nll, np.float32))), rel=1e-6)
    picture = read_png(tmp_path / "e.png")  # two rows of two labelled images, for people
    assert picture.shape[0] > 2 * 8 * display_scale(8) and (picture == 0).any()


async def test_interpolate_images_writes_a_strip_and_frames_from_their_means(
        server: RunningServer, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", _digits(3))
    assert await cli(server, "interpolate", "--images", str(tmp_path / "x.npy"), "--pair", "2",
                     "0", "--steps", "5", "--path", "spherical", "--out",
                     str(tmp_path / "strip.png"), "--npz", str(tmp_path / "f.npz")) == 0
    frames = np.load(tmp_path / "f.npz")
    mean, _ = await _ask(server, lambda client: client.encode(_digits(3)))
    decoded = await _ask(server, lambda client: client.decode(frames["latents"]))
    assert frames["images"].shape == (5, 1, 8, 8) and frames["latents"].shape == (5, 8)
    np.testing.assert_allclose(frames["latents"][[0, -1]], mean[[2, 0]], atol=1e-5)
    assert frames["images"].tobytes() == decoded.tobytes()
    assert read_png(tmp_path / "strip.png").shape[1] > 5 * 8 * display_scale(8)


async def test_interpolate_latents_of_encode_runs_a_straight_line(server: RunningServer,
                                                                  tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", _digits(2))
    assert await cli(server, "encode", "--in", str(tmp_path / "x.npy"), "--out",
                     str(tmp_path / "codes.npz")) == 0
    assert await cli(server, "interpolate", "--latents", str(tmp_path / "codes.npz"), "--steps",
                     "3", "--out", str(tmp_path / "strip.png"), "--npz", str(tmp_path / "f.npz")) == 0
    mean, latents = np.load(tmp_path / "codes.npz")["mean"], np.load(tmp_path / "f.npz")["latents"]
    np.testing.assert_allclose(latents, [mean[0], (mean[0] + mean[1]) / 2, mean[1]], atol=1e-6)


@pytest.mark.parametrize(("argv", "message"), [
    (["score", "--samples", "100000"], "INVALID_ARGUMENT: samples: 100000 is out of range"),
    (["interpolate", "--steps", "100000"], "INVALID_ARGUMENT: steps: 100000 is out of range"),
    (["interpolate", "--images", "big.npy"], "--images big.npy: images of shape [1, 28, 28]"),
])
async def test_limits_the_server_or_model_sets_are_one_line_exit_2(
        server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    np.save(tmp_path / "x.npy", _digits(2))
    np.save(tmp_path / "big.npy", np.zeros((2, 1, 28, 28), np.float32))
    monkeypatch.chdir(tmp_path)
    images = [] if "--images" in argv else ["--images", "x.npy"]
    assert await cli(server, *argv, *images) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_interpolate_takes_exactly_one_kind_of_end() -> None:
    with VaeClient("127.0.0.1:1") as client, pytest.raises(ValueError, match="exactly one"):
        client.interpolate(np.zeros((2, 1, 8, 8), np.float32), np.zeros((2, 8), np.float32))
    with pytest.raises(SystemExit) as stopped:
        main(["interpolate", "--images", "x.npy", "--latents", "z.npy"])
    assert stopped.value.code == 2


def _local_files(folder: Path) -> None:
    rng = np.random.default_rng(5)
    np.save(folder / "x.npy", rng.random((2, 1, 8, 8), dtype=np.float32))
    np.save(folder / "one.npy", rng.random((1, 1, 8, 8), dtype=np.float32))
    np.save(folder / "none.npy", np.zeros((0, 1, 8, 8), np.float32))
    np.save(folder / "z.npy", rng.standard_normal((2, 8)).astype(np.float32))
    np.savez(folder / "codes.npz", mean=np.zeros((3, 8), np.float32))
    write_png(folder / "x.png", rng.random((8, 8)).astype(np.float32))


LOCAL_ERRORS = {  # argv (names relative to the test's folder) -> what the one line says
    "score a jpg": (["score", "--images", "x.jpg"], "--images x.jpg: score reads .png or .npy"),
    "scores to txt": (["score", "--images", "x.npy", "--out", "s.txt"],
                      "--out s.txt: score writes .csv or .json"),
    "picture to npy": (["score", "--images", "x.npy", "--picture", "p.npy"],
                       "--picture p.npy: score writes .png"),
    "picture over the images": (["score", "--images", "x.png", "--picture", "x.png"],
                                "--picture x.png would overwrite --images"),
    "scores into no folder": (["score", "--images", "x.npy", "--out", "gone/s.csv"],
                              "--out gone/s.csv: no folder gone"),
    "score a missing file": (["score", "--images", "gone.npy"], "--images gone.npy: cannot read it"),
    "score no images": (["score", "--images", "none.npy"], "--images none.npy: holds no images"),
    "score latents": (["score", "--images", "z.npy"], "--images z.npy: an array of shape [2, 8]"),
    "no samples": (["score", "--images", "x.npy", "--samples", "0"], "--samples must be >= 1"),
    "show none": (["score", "--images", "x.npy", "--show", "0"], "--show must be >= 1"),
    "a negative seed": (["score", "--images", "x.npy", "--seed", "-1"], "--seed must be in 0..2**64-1"),
    "one step": (["interpolate", "--images", "x.npy", "--steps", "1"], "--steps must be >= 2"),
    "one image": (["interpolate", "--images", "one.npy"],
                  "--pair 0 1: --images one.npy holds 1 item(s), numbered 0..0"),
    "a pair past the end": (["interpolate", "--latents", "codes.npz", "--pair", "0", "3"],
                            "--pair 0 3: --latents codes.npz holds 3 item(s)"),
    "images as latents": (["interpolate", "--latents", "x.npy"],
                          "--latents x.npy: latents of shape [2, 1, 8, 8]; latents are [N >= 1"),
    "latents from a png": (["interpolate", "--latents", "x.png"],
                           "--latents x.png: interpolate reads .npy or .npz"),
    "strip to npy": (["interpolate", "--images", "x.npy", "--out", "s.npy"],
                     "--out s.npy: interpolate writes .png"),
    "frames to npy": (["interpolate", "--images", "x.npy", "--npz", "f.npy"],
                      "--npz f.npy: interpolate writes .npz"),
    "strip over the images": (["interpolate", "--images", "x.png", "--out", "x.png"],
                              "--out x.png would overwrite --images"),
    "frames over the codes": (["interpolate", "--latents", "codes.npz", "--npz", "codes.npz"],
                              "--npz codes.npz would overwrite --latents"),
}


@pytest.mark.parametrize("case", sorted(LOCAL_ERRORS))
def test_bad_input_is_one_line_and_exit_2_before_any_call(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        case: str) -> None:
    argv, message = LOCAL_ERRORS[case]
    _local_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert main(["--target", "127.0.0.1:1", "--timeout", "1", *argv]) == 2  # nothing listens
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("vae-client: error: "), err
    assert message in err, err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_help_says_what_the_scores_and_the_strip_are(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("score", "interpolate"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
    shown = capsys.readouterr().out
    assert all(word in shown for word in ("neg_elbo", "reconstruction", "kl", "nll", "nats",
                                          ".csv", ".json", "--show", "slerp", "place t", "--npz"))

