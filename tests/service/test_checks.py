"""The input and output checks' fast paths let through exactly what the full checks do."""

import numpy as np
import pytest

from service.errors import InvalidInput
from service.operations.checks import check_batch, check_finite_outputs, check_wire_shape


def test_huge_finite_values_pass() -> None:
    huge = np.full((2, 4), 3e38, np.float32)  # finite, though any sum of them overflows
    assert check_batch(huge, "z", (4,), unit_range=False) is huge
    check_finite_outputs("z", (huge,))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_value_is_named_by_its_item(bad: float) -> None:
    latents = np.zeros((3, 4), np.float32)
    latents[2, 1] = bad
    with pytest.raises(InvalidInput, match="z: item 2 contains NaN or Inf"):
        check_batch(latents, "z", (4,), unit_range=False)
    with pytest.raises(InvalidInput, match="z: item 2 gives non-finite results"):
        check_finite_outputs("z", (latents,))


@pytest.mark.parametrize("bad, message", [(np.nan, "NaN or Inf"), (np.inf, "NaN or Inf"),
                                          (1.5, "outside \\[0, 1\\]"), (-0.1, "outside")])
def test_images_outside_the_unit_range_are_refused(bad: float, message: str) -> None:
    images = np.full((2, 1, 2, 2), 0.5, np.float32)
    images[1, 0, 1, 1] = bad
    with pytest.raises(InvalidInput, match=f"images: item 1 .*{message}"):
        check_batch(images, "images", (1, 2, 2), unit_range=True)


def test_a_shape_with_a_zero_dimension_is_sized_by_its_other_dimensions() -> None:
    assert check_wire_shape([0, 3], "z", 4) == (0, 3)
    with pytest.raises(InvalidInput, match="impossibly large"):
        check_wire_shape([0, 2**62, 4], "z", 4)
    with pytest.raises(InvalidInput, match="negative"):
        check_wire_shape([2, -1], "z", 4)
