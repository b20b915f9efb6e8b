"""Labelled comparison pictures: every column named, groups set apart, the caption drawn."""

import numpy as np

from service.pictures.figures import GROUP_GAP, MARGIN, PAPER, TEXT_SCALE, comparison, labelled_row, stacked
from service.pictures.font import GLYPH_HEIGHT, render, text_width
from training.noise import Noise
from training.pictures import denoising_caption


def test_font_draws_known_glyphs_and_blanks_unknown_ones() -> None:
    assert render("I", 1)[:, 2].all()  # the I's stem
    assert not render("~", 1).any()
    assert render("ab", 2).shape == (2 * GLYPH_HEIGHT, text_width("ab", 2))


def test_groups_are_set_apart_and_columns_labelled() -> None:
    black = np.zeros((4, 1, 8, 8), np.float32)  # 8x8 digits show 112 px wide
    picture = comparison([("noisy", black), ("denoised", black), ("clean", black)], ["caption"],
                         groups_per_row=2)
    through_tiles = picture[-MARGIN - 1] == 1  # a row through the last images; True = paper
    edges = np.flatnonzero(np.diff(through_tiles.astype(int))) + 1
    paper_runs = [len(run) for run in np.split(through_tiles, edges) if run.all()]
    # the picture's edge, two gaps inside a triplet, the gap between triplets, ..., the edge
    assert paper_runs == [MARGIN, MARGIN, MARGIN, GROUP_GAP, MARGIN, MARGIN, MARGIN]
    label_h = GLYPH_HEIGHT * TEXT_SCALE
    assert (picture[MARGIN : MARGIN + label_h] == 0).any()  # the caption
    headers = picture[2 * MARGIN + label_h + MARGIN :][:label_h]
    assert (headers == 0).any(axis=0).sum() > 6 * 20  # six labels' worth of ink


def test_a_labelled_row_heads_each_image_with_its_own_label() -> None:
    black = np.zeros((3, 1, 8, 8), np.float32)
    row = labelled_row(black, ["a", "t=0.50", "b"], [])
    tiles = row[-MARGIN - 1] == 0  # a row through the images; True = ink
    assert tiles.sum() == 3 * 112 and (row[MARGIN : MARGIN + GLYPH_HEIGHT * TEXT_SCALE] == 0).any()


def test_stacked_sections_keep_their_pixels_left_aligned_on_paper() -> None:
    wide, narrow = np.zeros((5, 30), np.float32), np.zeros((4, 10), np.float32)
    picture = stacked([wide, narrow])
    assert picture.shape == (9, 30) and not picture[:5].any() and not picture[5:, :10].any()
    assert (picture[5:, 10:] == PAPER).all()


def test_a_model_not_trained_to_denoise_says_so() -> None:
    assert "not trained to denoise" in " ".join(denoising_caption("run", Noise()))
    assert "gaussian:0.3" in denoising_caption("run", Noise("gaussian", 0.3))[0]
