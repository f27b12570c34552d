"""PostProcess on small hand-made masks whose expected output is known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from unetrt.errors import ConfigError
from unetrt.postprocess import PostProcess


def grid(text: str, on: int = 255) -> np.ndarray:
    """A uint8 mask from rows of '.' (background), '#' (`on`) or digits (classes)."""
    rows = [row.strip() for row in text.strip().splitlines()]
    table = {".": 0, "#": on} | {str(d): d for d in range(10)}
    return np.array([[table[c] for c in row] for row in rows], dtype=np.uint8)


# Three objects: a 4-pixel square touching the top border, a 1-pixel speck, and a
# ring with a one-pixel hole; the speck touches the ring only diagonally.
SCENE = grid("""
    .##.......
    .##.......
    ....#.....
    .....###..
    .....#.#..
    .....###..
    ..........
""")


def test_defaults_do_nothing_and_return_the_input() -> None:
    post = PostProcess()
    assert not post.active
    assert post.apply(SCENE) is SCENE
    assert not PostProcess(min_size=1).active  # "fewer than 1 pixel" removes nothing


def test_bool_mask_becomes_uint8_0_255() -> None:
    out = PostProcess().apply(SCENE > 0)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, SCENE)


def test_min_size_removes_objects_smaller_than_n_pixels() -> None:
    # Diagonal contact joins the speck to the ring: 8 + 1 = 9 pixels.
    out = PostProcess(min_size=5).apply(SCENE)
    expected = grid("""
        ..........
        ..........
        ....#.....
        .....###..
        .....#.#..
        .....###..
        ..........
    """)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(PostProcess(min_size=4).apply(SCENE), SCENE)
    assert not PostProcess(min_size=10).apply(SCENE).any()


def test_fill_holes_fills_enclosed_background_only() -> None:
    out = PostProcess(fill_holes=True).apply(SCENE)
    expected = SCENE.copy()
    expected[4, 6] = 255
    np.testing.assert_array_equal(out, expected)
    assert SCENE[4, 6] == 0  # the input is not modified


def test_ring_closed_only_diagonally_still_encloses_a_hole() -> None:
    diamond = grid("""
        .....
        ..#..
        .#.#.
        ..#..
        .....
    """)
    out = PostProcess(fill_holes=True).apply(diamond)
    assert out[2, 2] == 255


def test_holes_count_towards_the_object_size() -> None:
    ring = grid("""
        ###.
        #.#.
        ###.
    """)
    assert not PostProcess(min_size=9).apply(ring).any()
    assert PostProcess(min_size=9, fill_holes=True).apply(ring).sum() == 9 * 255


def test_clear_border_drops_objects_touching_any_edge() -> None:
    mask = grid("""
        #.....
        ......
        ..##..
        ......
        .....#
    """)
    expected = grid("""
        ......
        ......
        ..##..
        ......
        ......
    """)
    np.testing.assert_array_equal(PostProcess(clear_border=True).apply(mask), expected)


def test_label_numbers_objects_in_raster_order_after_removal() -> None:
    mask = grid("""
        ##..#
        ##...
        .....
        ...##
        #..##
    """)
    out = PostProcess(label=True, min_size=2).apply(mask)
    expected = np.array(
        [
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 2, 2],
            [0, 0, 0, 2, 2],
        ],
        dtype=np.uint16,
    )
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, expected)


def test_label_uses_8_connectivity() -> None:
    mask = np.eye(4, dtype=bool)
    np.testing.assert_array_equal(PostProcess(label=True).apply(mask), np.eye(4))


def test_label_of_empty_mask_is_empty() -> None:
    out = PostProcess(label=True).apply(np.zeros((3, 4), np.uint8))
    assert out.dtype == np.uint16
    assert not out.any()


def test_class_mask_keeps_classes_and_fills_holes_with_nearest_class() -> None:
    # One object made of class 1 (left half) and class 2 (right half) around a
    # 2-pixel hole, plus a lone class-3 pixel.
    mask = grid("""
        1122..
        1..2..
        1122..
        ......
        .....3
    """)
    out = PostProcess(fill_holes=True, min_size=2).apply(mask)
    expected = grid("""
        1122..
        1122..
        1122..
        ......
        ......
    """)
    np.testing.assert_array_equal(out, expected)


def test_label_refuses_class_masks() -> None:
    with pytest.raises(ConfigError, match=r"classes \[1, 2\]"):
        PostProcess(label=True).apply(grid("1.2"))


def test_zero_one_masks_keep_their_values() -> None:
    mask = grid(
        """
        #.
        ..
        .#
    """,
        on=1,
    )
    out = PostProcess(clear_border=True, fill_holes=True).apply(mask)
    assert out.dtype == np.uint8
    assert out.max() == 0
    np.testing.assert_array_equal(PostProcess(fill_holes=True).apply(mask), mask)


def test_uint16_class_mask_dtype_is_kept() -> None:
    mask = np.zeros((5, 5), np.uint16)
    mask[1:4, 1:4] = 300
    mask[2, 2] = 0
    out = PostProcess(fill_holes=True).apply(mask)
    assert out.dtype == np.uint16
    assert (out[1:4, 1:4] == 300).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_size": -1}, "min_size .* got -1"),
        ({"min_size": 2.5}, "min_size .* got 2.5"),
        ({"min_size": True}, "min_size .* got True"),
        ({"fill_holes": "yes"}, "fill_holes must be true or false, got 'yes'"),
        ({"clear_border": 1}, "clear_border"),
        ({"label": None}, "label"),
    ],
)
def test_invalid_options_raise_config_error(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PostProcess(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "mask",
    [np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2), np.float32), [[0, 1]]],
)
def test_rejects_non_2d_integer_masks(mask: object) -> None:
    with pytest.raises(ValueError, match="2D bool or integer"):
        PostProcess(fill_holes=True).apply(mask)  # type: ignore[arg-type]


def test_frozen() -> None:
    post = PostProcess(min_size=3)
    with pytest.raises(AttributeError):
        post.min_size = 4  # type: ignore[misc]
