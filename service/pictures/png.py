"""Grayscale PNG files from and to float arrays in [0, 1], with numpy and zlib only.

The client needs pictures without pillow (it installs with grpcio, protobuf and numpy only),
and training shares the same writer so a grid looks the same wherever it was made. A grid
written by `write_images` carries its layout in a tEXt chunk, so `read_images` gets the
original images back from the enlarged display picture.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}
"""PNG colour type -> samples per pixel (gray, RGB, gray+alpha, RGBA)."""


LAYOUT_KEY = "vae-serve-layout"
"""tEXt keyword of the JSON layout note: count, columns, height, width, scale, pad."""


class PngError(ValueError):
    """The file is not a PNG this reader understands; the message says which part."""


def display_scale(image_size: int) -> int:
    """Pixel repeat that makes an image about 112 px wide: an 8x8 digit stays legible."""
    return max(1, 112 // image_size)


def grid(images: np.ndarray, columns: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile [N, C, H, W] (or [N, H, W]) images into one [rows*H, cols*W] picture in [0, 1]."""
    pictures = images.reshape(images.shape[0], images.shape[-2], images.shape[-1])
    n, h, w = pictures.shape
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad), dtype=np.float32)
    for i, picture in enumerate(pictures):
        r, c = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        canvas[top : top + h, left : left + w] = picture
    return canvas


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def write_png(path: Path, picture: np.ndarray, scale: int = 1,
              text: dict[str, str] | None = None) -> None:
    """Write a [H, W] array in [0, 1] as an 8-bit grayscale PNG, each pixel `scale` times."""
    pixels = np.clip(np.rint(picture * 255.0), 0, 255).astype(np.uint8)
    pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
    h, w = pixels.shape
    rows = np.hstack([np.zeros((h, 1), dtype=np.uint8), pixels])  # filter byte 0 per row
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    data = zlib.compress(rows.tobytes(), 9)
    notes = b"".join(_chunk(b"tEXt", f"{k}\0{v}".encode("latin-1")) for k, v in (text or {}).items())
    path.write_bytes(_SIGNATURE + _chunk(b"IHDR", header) + notes + _chunk(b"IDAT", data)
                     + _chunk(b"IEND", b""))


def write_images(path: Path, images: np.ndarray) -> None:
    """Write [N, 1, H, W] images as one legible grid PNG that `read_images` reads back."""
    n, h, w = len(images), images.shape[-2], images.shape[-1]
    columns, scale = math.ceil(math.sqrt(n)), display_scale(w)
    layout = {"count": n, "columns": columns, "height": h, "width": w, "scale": scale, "pad": 1}
    write_png(path, grid(images, columns, pad=1), scale, {LAYOUT_KEY: json.dumps(layout)})


def read_images(path: Path) -> np.ndarray:
    """Images [N, 1, H, W] from a PNG: a grid with a layout note, or one plain picture."""
    picture, text = _decode(path)
    if LAYOUT_KEY not in text:
        return picture[None, None]
    try:
        layout = {k: int(v) for k, v in json.loads(text[LAYOUT_KEY]).items()}
        n, cols, h, w = layout["count"], layout["columns"], layout["height"], layout["width"]
        scale, pad = layout["scale"], layout["pad"]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise PngError(f"{path}: unreadable {LAYOUT_KEY} note ({err})") from err
    pixels = picture[::scale, ::scale]
    needed = (pad + math.ceil(n / cols) * (h + pad), pad + cols * (w + pad))
    if n < 1 or cols < 1 or pixels.shape[0] < needed[0] or pixels.shape[1] < needed[1]:
        raise PngError(f"{path}: the {LAYOUT_KEY} note does not fit a {picture.shape} picture")
    tiles = []
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        tiles.append(pixels[top : top + h, left : left + w])
    return np.stack(tiles)[:, None]


def _unfilter(raw: bytes, height: int, stride: int, bpp: int) -> np.ndarray:
    """Undo the five PNG row filters (spec section 9)."""
    out = np.zeros((height, stride), dtype=np.uint8)
    prior = np.zeros(stride, dtype=np.int32)
    pos = 0
    for y in range(height):
        kind = raw[pos]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=pos + 1).astype(np.int32)
        pos += stride + 1
        row = line.copy()
        if kind == 2:
            row = (line + prior) & 0xFF
        elif kind in (1, 3, 4):
            for x in range(stride):
                left = int(row[x - bpp]) if x >= bpp else 0
                up = int(prior[x])
                if kind == 1:
                    row[x] = (line[x] + left) & 0xFF
                elif kind == 3:
                    row[x] = (line[x] + (left + up) // 2) & 0xFF
                else:
                    up_left = int(prior[x - bpp]) if x >= bpp else 0
                    p = left + up - up_left
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                    pred = left if pa <= pb and pa <= pc else up if pb <= pc else up_left
                    row[x] = (line[x] + pred) & 0xFF
        elif kind != 0:
            raise PngError(f"row {y} has unknown filter type {kind}")
        out[y] = row
        prior = row
    return out


def read_png(path: Path) -> np.ndarray:
    """Read an 8-bit, non-interlaced PNG as a grayscale [H, W] float32 array in [0, 1]."""
    return _decode(path)[0]


def _decode(path: Path) -> tuple[np.ndarray, dict[str, str]]:
    """The grayscale picture and the tEXt notes of a PNG file."""
    blob = path.read_bytes()
    if not blob.startswith(_SIGNATURE):
        raise PngError(f"{path} is not a PNG file")
    pos, header, data, text = len(_SIGNATURE), b"", bytearray(), {}
    while pos + 8 <= len(blob):
        (length,), kind = struct.unpack(">I", blob[pos : pos + 4]), blob[pos + 4 : pos + 8]
        payload = blob[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = payload
        elif kind == b"IDAT":
            data += payload
        elif kind == b"tEXt" and b"\0" in payload:
            key, value = payload.split(b"\0", 1)
            text[key.decode("latin-1")] = value.decode("latin-1")
    if len(header) != 13:
        raise PngError(f"{path} has no valid IHDR chunk")
    w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or colour not in _CHANNELS or interlace:
        raise PngError(f"{path}: only 8-bit, non-interlaced gray/RGB(A) PNGs are supported")
    channels = _CHANNELS[colour]
    try:
        raw = zlib.decompress(bytes(data))
    except zlib.error as err:
        raise PngError(f"{path}: corrupt image data ({err})") from err
    if len(raw) != h * (w * channels + 1):
        raise PngError(f"{path}: image data has {len(raw)} bytes, expected {h * (w * channels + 1)}")
    pixels = _unfilter(raw, h, w * channels, channels).reshape(h, w, channels)
    gray = pixels[..., :3].mean(axis=2) if channels >= 3 else pixels[..., 0]
    return (gray / 255.0).astype(np.float32), text
