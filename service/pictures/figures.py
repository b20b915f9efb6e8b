"""Labelled comparison pictures: columns of images side by side (original / reconstruction,
noisy / denoised / clean), each column named, groups set apart, and a caption; rows of
individually labelled images (an interpolation strip, the extremes of a score) stacked.

Drawn at display resolution with the bitmap font of service/pictures/font.py, so the client makes
them with numpy alone; written as plain PNGs (no layout note: they are for people to read).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from service.pictures.font import GLYPH_HEIGHT, render, text_width
from service.pictures.png import display_scale, write_png

TEXT_SCALE = 2
"""Each font pixel is 2x2 display pixels: 14 px capitals, legible beside 112 px digits."""
MARGIN = 8
"""Display pixels between neighbouring images of one group, and around the picture."""
GROUP_GAP = 40
"""Display pixels between groups: wider than MARGIN, so a pair or triplet reads as one."""
INK, PAPER = 0.0, 1.0


def _draw_text(canvas: np.ndarray, text: str, top: int, left: int) -> None:
    mask = render(text, TEXT_SCALE)
    canvas[top : top + mask.shape[0], left : left + mask.shape[1]][mask] = INK


def comparison(columns: list[tuple[str, np.ndarray]], caption: list[str], groups_per_row: int = 2
               ) -> np.ndarray:
    """One picture: for each item i, the i-th image of every column side by side (a group),
    groups laid out `groups_per_row` across, each column of a group headed by its label.

    columns: (label, images [N, C, H, W] in [0, 1]), all with the same N.
    """
    count = len(columns[0][1])
    h, w = columns[0][1].shape[-2:]
    scale = display_scale(w)
    tile_h, tile_w = h * scale, w * scale
    label_h = GLYPH_HEIGHT * TEXT_SCALE
    column_w = max(tile_w, *(text_width(label, TEXT_SCALE) for label, _ in columns))
    group_w = len(columns) * column_w + (len(columns) - 1) * MARGIN
    rows = math.ceil(count / groups_per_row)
    caption_h = len(caption) * (label_h + MARGIN)
    width = 2 * MARGIN + groups_per_row * group_w + (groups_per_row - 1) * GROUP_GAP
    width = max(width, 2 * MARGIN + max((text_width(line, TEXT_SCALE) for line in caption),
                                        default=0))
    header_top = MARGIN + caption_h + (MARGIN if caption else 0)
    grid_top = header_top + label_h + MARGIN
    height = grid_top + rows * tile_h + (rows - 1) * MARGIN + MARGIN
    canvas = np.full((height, width), PAPER, dtype=np.float32)
    for line_number, line in enumerate(caption):
        _draw_text(canvas, line, MARGIN + line_number * (label_h + MARGIN), MARGIN)
    for g in range(min(groups_per_row, count)):
        group_left = MARGIN + g * (group_w + GROUP_GAP)
        for c, (label, _) in enumerate(columns):
            left = group_left + c * (column_w + MARGIN)
            _draw_text(canvas, label, header_top,
                       left + (column_w - text_width(label, TEXT_SCALE)) // 2)
    for i in range(count):
        row, g = divmod(i, groups_per_row)
        top = grid_top + row * (tile_h + MARGIN)
        for c, (_, images) in enumerate(columns):
            left = MARGIN + g * (group_w + GROUP_GAP) + c * (column_w + MARGIN)
            left += (column_w - tile_w) // 2
            tile = images[i].reshape(h, w).repeat(scale, axis=0).repeat(scale, axis=1)
            canvas[top : top + tile_h, left : left + tile_w] = np.clip(tile, 0.0, 1.0)
    return canvas


def labelled_row(images: np.ndarray, labels: list[str], caption: list[str]) -> np.ndarray:
    """Images [N, C, H, W] side by side, each headed by its own label (a strip, extremes)."""
    return comparison([(label, images[i : i + 1]) for i, label in enumerate(labels)], caption,
                      groups_per_row=1)


def stacked(pictures: list[np.ndarray]) -> np.ndarray:
    """Pictures one below another, left-aligned on paper: the sections of one figure."""
    width = max(picture.shape[1] for picture in pictures)
    return np.vstack([np.pad(picture, ((0, 0), (0, width - picture.shape[1])),
                             constant_values=PAPER) for picture in pictures])


def write_comparison(path: Path, columns: list[tuple[str, np.ndarray]], caption: list[str],
                     groups_per_row: int = 2) -> None:
    """Write `comparison(...)` as a PNG at display resolution."""
    write_png(path, comparison(columns, caption, groups_per_row))
