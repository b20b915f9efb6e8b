"""The files vae-client reads and writes: which flag takes which kind, and checked reading."""

from __future__ import annotations

import argparse
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.npyio import NpzFile

from service.client.vae_client import VaeClient
from service.pictures.png import read_images, write_images
from service.vae.v1 import vae_pb2


class InputError(ValueError):
    """A local file or flag the command cannot take; the message names the flag where it can."""


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


def read_array(path: Path, flag: str, member: str | None = None) -> np.ndarray:
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


def read_image_file(path: Path, flag: str) -> np.ndarray:
    """Images [N >= 1, C, H, W] from a PNG (a vae-client grid or one picture) or an .npy."""
    if path.suffix.lower() != ".png":
        images = read_array(path, flag)
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


def read_latent_file(path: Path, flag: str) -> np.ndarray:
    """Latents [N >= 1, latent] from an .npy, or the mean of the .npz that encode writes."""
    latents = read_array(path, flag, "mean" if path.suffix.lower() == ".npz" else None)
    if latents.ndim != 2 or len(latents) == 0:
        raise InputError(f"{flag} {path}: latents of shape {list(latents.shape)}; latents are "
                         "[N >= 1, latent_dim]")
    return latents


def fit_images(images: np.ndarray, info: vae_pb2.ModelInfo, path: Path, flag: str) -> np.ndarray:
    """Images read from a file flag, checked against the served model's image shape."""
    if images.shape[1:] != tuple(info.image_shape):
        raise InputError(f"{flag} {path}: images of shape {list(images.shape[1:])}; the model "
                         f"takes {list(info.image_shape)} (C, H, W): give a PNG written by "
                         "vae-client or one picture of that size")
    return images


def fit_latents(latents: np.ndarray, info: vae_pb2.ModelInfo, path: Path, flag: str
                 ) -> np.ndarray:
    """Latents read from a file flag, checked against the served model's latent size."""
    if latents.shape[1] != info.latent_dim:
        raise InputError(f"{flag} {path}: latents of shape {list(latents.shape)}; the model "
                         f"takes [N, {info.latent_dim}]")
    return latents


def load_images(client: VaeClient, path: Path, flag: str) -> np.ndarray:
    """Images from a file flag: read (local errors first), then fitted to the model."""
    return fit_images(read_image_file(path, flag), client.info(), path, flag)


def load_latents(client: VaeClient, path: Path, flag: str) -> np.ndarray:
    """Latents from a file flag: read (local errors first), then fitted to the model."""
    return fit_latents(read_latent_file(path, flag), client.info(), path, flag)


def save_images(path: Path, images: np.ndarray) -> None:
    if path.suffix.lower() == ".npy":
        with path.open("wb") as f:  # a file, so np.save adds no second extension
            np.save(f, images)
    else:
        write_images(path, images)
    print(f"wrote {path} ({len(images)} images)")
