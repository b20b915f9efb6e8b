"""PNG grids that the client writes read back as the images that made them."""

from pathlib import Path

import numpy as np
import pytest

from service.pictures.png import PngError, read_images, write_images, write_png


@pytest.mark.parametrize("count", [1, 5, 16])
def test_grid_round_trip_within_one_grey_level(tmp_path: Path, count: int) -> None:
    images = np.random.default_rng(count).random((count, 1, 8, 8)).astype(np.float32)
    write_images(tmp_path / "g.png", images)
    back = read_images(tmp_path / "g.png")
    assert back.shape == images.shape and np.abs(back - images).max() <= 0.5 / 255 + 1e-6


def test_plain_picture_is_one_image(tmp_path: Path) -> None:
    write_png(tmp_path / "p.png", np.full((28, 28), 0.5, np.float32))
    assert read_images(tmp_path / "p.png").shape == (1, 1, 28, 28)


def test_layout_that_does_not_fit_is_a_png_error(tmp_path: Path) -> None:
    note = '{"count": 99, "columns": 10, "height": 8, "width": 8, "scale": 1, "pad": 1}'
    write_png(tmp_path / "bad.png", np.zeros((8, 8), np.float32), text={"vae-serve-layout": note})
    with pytest.raises(PngError, match="does not fit"):
        read_images(tmp_path / "bad.png")
