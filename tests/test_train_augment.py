"""Paired augmentation: image, mask, weights and clip frames stay aligned; seeds fix it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from unetrt.errors import ConfigError, InputError
from unetrt.train.augment import AugmentConfig, augment_patch, sample_geometry

GEOMETRY_ONLY = AugmentConfig(
    p_flip=0.5,
    p_rot90=0.5,
    p_affine=1.0,
    rotation_degrees=45.0,
    shear_degrees=10.0,
    zoom_range=(0.8, 1.25),
    p_elastic=0.5,
    elastic_alpha=4.0,
    elastic_sigma=8.0,
    p_intensity=0.0,
)
FLIPS_ONLY = AugmentConfig(p_flip=0.5, p_rot90=0.5, p_affine=0.0, p_intensity=0.0)
INTENSITY_ONLY = AugmentConfig(p_flip=0.0, p_rot90=0.0, p_affine=0.0, p_intensity=1.0, p_noise=1.0)
PLAIN = {"p_flip": 0.0, "p_rot90": 0.0, "p_affine": 0.0, "p_intensity": 0.0}
SHRINK_ONLY = AugmentConfig(**PLAIN, p_shrink=1.0, shrink_range=(0.4, 0.9))
BARREL_ONLY = AugmentConfig(**PLAIN, p_barrel=1.0, barrel_strength=0.3)
PINCUSHION_ONLY = AugmentConfig(**PLAIN, p_pincushion=1.0, pincushion_strength=0.15)
NEW_WITH_THE_REST = dataclasses.replace(
    GEOMETRY_ONLY, p_shrink=0.7, p_barrel=0.5, barrel_strength=0.3, p_pincushion=0.5,
    pincushion_strength=0.15,
)  # fmt: skip
NEW_TRANSFORMS = [SHRINK_ONLY, BARREL_ONLY, PINCUSHION_ONLY, NEW_WITH_THE_REST]


@st.composite
def masks(draw: st.DrawFn) -> np.ndarray:
    """A label image with a few rectangular cells (at least 6 pixels wide)."""
    rows, cols = draw(st.integers(16, 48)), draw(st.integers(16, 48))
    labels = np.zeros((rows, cols), np.uint8)
    for label in range(1, draw(st.integers(1, 4)) + 1):
        r, c = draw(st.integers(0, rows - 6)), draw(st.integers(0, cols - 6))
        h, w = draw(st.integers(6, rows - r)), draw(st.integers(6, cols - c))
        labels[r : r + h, c : c + w] = label
    return labels


def _image(mask: np.ndarray) -> np.ndarray:
    return (mask > 0).astype(np.float32) * 200 + 20


def _near_an_edge(mask: np.ndarray, radius: int = 2) -> np.ndarray:
    """Pixels within ``radius`` of a change of label or of the patch border (where the
    neighbours that interpolation blends in may lie outside the patch)."""
    size = 2 * radius + 1
    near = ndimage.maximum_filter(mask, size) != ndimage.minimum_filter(mask, size)
    near[:radius] = near[-radius:] = near[:, :radius] = near[:, -radius:] = True
    return near


@settings(max_examples=40, deadline=None)
@given(mask=masks(), seed=st.integers(0, 2**32 - 1), crop=st.booleans())
def test_flips_and_quarter_turns_keep_image_and_mask_exactly_aligned(
    mask: np.ndarray, seed: int, crop: bool
) -> None:
    rng = np.random.default_rng(seed)
    shape = (12, 10) if crop else None
    centre = (int(rng.integers(mask.shape[0])), int(rng.integers(mask.shape[1])))
    image, out, weights = augment_patch(
        _image(mask), mask, mask.astype(np.float32), config=FLIPS_ONLY, rng=rng, shape=shape,
        centre=centre,
    )  # fmt: skip
    assert out is not None and weights is not None
    assert out.shape == image.shape == (shape or mask.shape)
    np.testing.assert_array_equal(image > 120, out > 0)
    np.testing.assert_array_equal(weights, out.astype(np.float32))


@settings(max_examples=40, deadline=None)
@given(mask=masks(), seed=st.integers(0, 2**32 - 1))
def test_warps_keep_image_and_mask_aligned_away_from_edges(mask: np.ndarray, seed: int) -> None:
    image, out, weights = augment_patch(
        _image(mask), mask, (mask > 0).astype(np.float32), config=GEOMETRY_ONLY,
        rng=np.random.default_rng(seed), shape=(16, 16),
    )  # fmt: skip
    assert out is not None and weights is not None
    assert set(np.unique(out)) <= set(np.unique(mask))  # labels stay labels
    interior = ~_near_an_edge(out)
    np.testing.assert_array_equal((image > 120)[interior], (out > 0)[interior])
    np.testing.assert_allclose(weights[interior], (out > 0)[interior], atol=1e-5)


@pytest.mark.parametrize("config", NEW_TRANSFORMS, ids=["shrink", "barrel", "pincushion", "all"])
@settings(max_examples=25, deadline=None)
@given(mask=masks(), seed=st.integers(0, 2**32 - 1))
def test_shrink_and_distortions_keep_image_mask_and_weights_aligned(
    config: AugmentConfig, mask: np.ndarray, seed: int
) -> None:
    assume((mask == 0).any())  # a frame with no background has no level to pad with
    weights = 3 + 2 * (mask > 0).astype(np.float32)  # 3 or 5 in the frame, 1 in padding
    image, out, out_weights = augment_patch(
        _image(mask), mask, weights, config=config, rng=np.random.default_rng(seed),
        shape=(16, 16),
    )  # fmt: skip
    assert out is not None and out_weights is not None
    assert set(np.unique(out)) <= set(np.unique(mask))  # labels stay labels
    padding = out_weights == 1
    # the padding's edge hides a label change: interpolation blends in what lies beyond;
    # 3 pixels, as a shrink (to 0.4) with zoom and barrel squeezes up to 4 source pixels
    # into one, where the nearest-neighbour mask may skip a corner the image blends in
    interior = ~_near_an_edge(np.where(padding, 255, out), radius=3)
    np.testing.assert_array_equal((image > 120)[interior], (out > 0)[interior])
    expected_weights = np.where(padding, 1.0, 3 + 2 * (out > 0))
    np.testing.assert_allclose(out_weights[interior], expected_weights[interior], atol=1e-5)
    assert np.all(out[padding] == 0) and np.all(image[padding] == 20)  # background


@pytest.mark.parametrize(
    ("config", "radius"), [(GEOMETRY_ONLY, 2), (NEW_WITH_THE_REST, 3)], ids=["old", "new"]
)
@settings(max_examples=25, deadline=None)
@given(mask=masks(), seed=st.integers(0, 2**32 - 1), steps=st.integers(2, 4))
def test_every_frame_of_a_clip_gets_the_same_transform(
    config: AugmentConfig, radius: int, mask: np.ndarray, seed: int, steps: int
) -> None:
    base = _image(mask)
    clip = [base + 7 * k for k in range(steps)]  # frame k = frame 0 + 7k
    image, out, weights = augment_patch(
        clip, mask, np.full(mask.shape, 3, np.float32), config=config,
        rng=np.random.default_rng(seed), shape=(16, 12),
    )  # fmt: skip
    assert image.shape == (steps, 16, 12) and out is not None and weights is not None
    for k in range(steps):
        np.testing.assert_allclose(image[k] - image[0], 7 * k, atol=1e-3)
    # as in the test above: the edge of a shrunk patch's padding counts as an edge
    interior = ~_near_an_edge(np.where(weights == 1, 255, out), radius)
    np.testing.assert_array_equal((image[-1] > 127)[interior], (out > 0)[interior])


def test_same_seed_same_patch_other_seed_other_patch() -> None:
    rng = np.random.default_rng(1)
    image = rng.random((40, 50)).astype(np.float32)
    mask = (image > 0.5).astype(np.uint8)
    config = AugmentConfig(p_elastic=1.0, p_noise=1.0, p_shrink=0.5, p_barrel=0.5, p_pincushion=0.5)

    def run(seed: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        return augment_patch(
            image, mask, config=config, rng=np.random.default_rng(seed), shape=(24, 24)
        )

    a, b, c = run(7), run(7), run(8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])  # type: ignore[arg-type]
    assert not np.array_equal(a[0], c[0])


def test_transforms_that_are_off_draw_nothing() -> None:
    """The rng's next draw and the masks after one patch, recorded before the shrink
    and the distortions existed: with their probabilities 0 nothing moved."""
    image = np.random.default_rng(0).random((30, 40)).astype(np.float32)
    mask = (image > 0.5).astype(np.uint8)
    recorded = {0: (0.5436249914654229, 135), 1: (0.303194829291645, 132),
                2: (0.13230635595108264, 133)}  # fmt: skip
    for seed, (next_draw, foreground) in recorded.items():
        rng = np.random.default_rng(seed)
        _, out, _ = augment_patch(
            image, mask, image, config=AugmentConfig(p_elastic=0.5, p_noise=0.5), rng=rng,
            shape=(16, 16), centre=(10, 12),
        )  # fmt: skip
        assert out is not None and int(out.sum()) == foreground
        assert rng.random() == next_draw


def _blocks(plane: np.ndarray) -> np.ndarray:
    """Means of the 2x2 blocks of ``plane``: the plane shrunk by one half."""
    rows, cols = plane.shape
    return plane.reshape(rows // 2, 2, cols // 2, 2).mean(axis=(1, 3))


def test_shrink_by_half_is_the_window_downsampled_at_the_drawn_offset() -> None:
    config = AugmentConfig(**PLAIN, p_shrink=1.0, shrink_range=(0.5, 0.5))
    rng = np.random.default_rng(3)
    frame = rng.random((40, 40)).astype(np.float32)
    labels = (rng.random((20, 20)) < 0.3).astype(np.uint8) * 2
    mask = np.kron(labels, np.ones((2, 2), np.uint8))  # constant on the 2x2 blocks
    weights = rng.random((40, 40)).astype(np.float32) + 2
    offsets = set()
    for seed in range(12):
        geometry = sample_geometry(config, (16, 16), np.random.default_rng(seed))
        image, out, out_weights = augment_patch(
            frame, mask, weights, config=config, rng=np.random.default_rng(seed),
            shape=(16, 16), centre=(20, 20),
        )  # fmt: skip
        r, c = geometry.shrink_offset
        offsets.add((r, c))
        window = np.s_[12:28, 12:28]  # the 16 x 16 window about (20, 20)
        shown = np.s_[r : r + 8, c : c + 8]
        expected_mask = np.zeros((16, 16), np.uint8)
        expected_mask[shown] = labels[6:14, 6:14]
        np.testing.assert_array_equal(out, expected_mask)
        small = _blocks(frame[window])
        background = np.median(frame[window][mask[window] == 0])
        expected = np.full((16, 16), background, np.float32)
        expected[shown] = small
        np.testing.assert_allclose(image, expected, rtol=1e-6)
        expected_weights = np.ones((16, 16), np.float32)
        expected_weights[shown] = _blocks(weights[window])
        np.testing.assert_allclose(out_weights, expected_weights, rtol=1e-6)
    assert all(0 <= r <= 8 and 0 <= c <= 8 for r, c in offsets) and len(offsets) > 6


def test_shrink_pads_with_the_frame_background_when_the_patch_shows_none() -> None:
    config = AugmentConfig(**PLAIN, p_shrink=1.0, shrink_range=(0.5, 0.5))
    mask = np.zeros((40, 40), np.uint8)
    mask[8:32, 8:32] = 1  # the patch about (20, 20) lies inside this cell
    frame = np.where(mask > 0, 0.9, 0.25).astype(np.float32)
    image, out, _ = augment_patch(
        frame, mask, config=config, rng=np.random.default_rng(0), shape=(16, 16),
        centre=(20, 20),
    )  # fmt: skip
    assert out is not None
    np.testing.assert_array_equal(image[out == 0], np.float32(0.25))
    np.testing.assert_array_equal(image[out == 1], np.float32(0.9))
    assert (out == 0).sum() == 16 * 16 - 8 * 8


def test_shrink_factor_one_and_distortion_zero_are_the_plain_crop() -> None:
    frame = np.random.default_rng(0).random((30, 40)).astype(np.float32)
    off = AugmentConfig(**PLAIN)
    plain, _, _ = augment_patch(frame, config=off, rng=np.random.default_rng(0), shape=(12, 16))
    for config in (
        AugmentConfig(**PLAIN, p_shrink=1.0, shrink_range=(1.0, 1.0)),
        AugmentConfig(**PLAIN, p_barrel=1.0, barrel_strength=0.0),
        AugmentConfig(**PLAIN, p_pincushion=1.0, pincushion_strength=0.0),
    ):
        image, _, _ = augment_patch(
            frame, config=config, rng=np.random.default_rng(0), shape=(12, 16)
        )
        np.testing.assert_array_equal(image, plain)


@pytest.mark.parametrize("kind", ["barrel", "pincushion"])
def test_distortion_moves_every_radius_to_the_predicted_one(kind: str) -> None:
    """The frame holds each pixel's distance from the patch centre, so an output pixel
    at distance d must read the source distance d (1 + k (d / half-diagonal)^2)."""
    config = AugmentConfig(**PLAIN, **{f"p_{kind}": 1.0, f"{kind}_strength": 0.3})
    rows = cols = np.arange(64, dtype=np.float64) - 32
    frame = np.hypot(rows[:, None], cols[None, :]).astype(np.float32)
    for seed in range(3):
        k = sample_geometry(config, (33, 33), np.random.default_rng(seed)).distortion
        assert (k > 0) == (kind == "barrel") and 0 < abs(k) <= 0.3
        image, _, _ = augment_patch(
            frame, config=config, rng=np.random.default_rng(seed), shape=(33, 33),
            centre=(32, 32),
        )  # fmt: skip
        d = frame[16:49, 16:49].astype(np.float64)  # output distance from the patch centre
        predicted = d * (1 + k * (d / (np.hypot(33, 33) / 2)) ** 2)
        away = d >= 3  # linear interpolation of the distance is exact to ~1 / (8 d)
        np.testing.assert_allclose(image[away], predicted[away], atol=0.05)


def test_intensity_changes_touch_the_image_only() -> None:
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 5:20] = 3
    image = _image(mask) / 255
    weights = np.linspace(0, 1, mask.size, dtype=np.float32).reshape(mask.shape)
    out_image, out_mask, out_weights = augment_patch(
        image, mask, weights, config=INTENSITY_ONLY, rng=np.random.default_rng(0)
    )
    np.testing.assert_array_equal(out_mask, mask)
    np.testing.assert_array_equal(out_weights, weights)
    assert out_image.dtype == np.float32 and not np.allclose(out_image, image)


def test_patch_window_stays_inside_a_large_enough_frame() -> None:
    frame = np.arange(30 * 40, dtype=np.float32).reshape(30, 40)
    off = AugmentConfig.off()
    rng = np.random.default_rng(0)
    corner, _, _ = augment_patch(frame, config=off, rng=rng, shape=(8, 16), centre=(0, 39))
    np.testing.assert_array_equal(corner, frame[0:8, 24:40])
    middle, _, _ = augment_patch(frame, config=off, rng=rng, shape=(8, 16), centre=(15, 20))
    np.testing.assert_array_equal(middle, frame[11:19, 12:28])
    # a frame smaller than the patch is mirrored at the bottom/right, as inference pads
    small = frame[:5, :6]
    padded, _, _ = augment_patch(small, config=off, rng=rng, shape=(8, 8))
    np.testing.assert_array_equal(padded, np.pad(small, ((0, 3), (0, 2)), mode="reflect"))


def test_quarter_turns_of_a_non_square_patch_keep_the_requested_shape() -> None:
    config = AugmentConfig(p_flip=0.0, p_rot90=1.0, p_affine=0.0, p_intensity=0.0)
    frame = np.arange(40 * 40, dtype=np.float32).reshape(40, 40)
    for seed in range(6):
        geometry = sample_geometry(config, (8, 16), np.random.default_rng(seed))
        image, _, _ = augment_patch(frame, config=config, rng=np.random.default_rng(seed),
                                    shape=(8, 16))  # fmt: skip
        assert image.shape == (8, 16)
        assert geometry.shape == ((16, 8) if geometry.quarter_turns % 2 else (8, 16))


def test_mismatched_shapes_are_input_errors() -> None:
    with pytest.raises(InputError, match=r"mask shape \(4, 4\)"):
        augment_patch(
            np.zeros((5, 5), np.float32), np.zeros((4, 4), np.uint8),
            config=AugmentConfig(), rng=np.random.default_rng(0),
        )  # fmt: skip
    with pytest.raises(InputError, match="clip differ"):
        augment_patch(
            [np.zeros((5, 5), np.float32), np.zeros((5, 6), np.float32)],
            config=AugmentConfig(), rng=np.random.default_rng(0),
        )  # fmt: skip


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"p_flip": 1.5}, "p_flip is a probability in \\[0, 1\\], got 1.5"),
        ({"p_rot90": "often"}, "p_rot90 must be a number, got 'often'"),
        ({"zoom_range": [1.2, 0.8]}, "zoom_range must satisfy 0 < low <= high"),
        ({"gamma_range": 1.0}, "gamma_range must be \\[low, high\\]"),
        ({"rotation_degrees": -5}, "rotation_degrees must be >= 0"),
        ({"elastic_sigma": 0}, "elastic_sigma must be > 0"),
        ({"noise_sdt": 0.1}, "did you mean 'noise_std'"),
        ({"p_shrink": -0.1}, "p_shrink is a probability in \\[0, 1\\], got -0.1"),
        ({"p_barrel": "always"}, "p_barrel must be a number, got 'always'"),
        ({"shrink_range": [0.5, 1.2]}, "shrink_range must satisfy 0 < low <= high <= 1"),
        ({"shrink_range": [0.9, 0.5]}, "shrink_range must satisfy 0 < low <= high"),
        ({"shrink_range": [0, 0.5]}, "shrink_range must satisfy 0 < low <= high"),
        ({"barrel_strength": -0.1}, "barrel_strength must be >= 0, got -0.1"),
        ({"pincushion_strength": 0.4}, "pincushion_strength must be in \\[0, 1/3\\)"),
        ({"p_pincusion": 0.5}, "did you mean 'p_pincushion'"),
        ("yes", "augmentation must be a JSON object or true/false"),
    ],
)
def test_bad_augmentation_settings_are_named(data: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AugmentConfig.from_dict(data)  # type: ignore[arg-type]


def test_augmentation_from_json_forms() -> None:
    assert AugmentConfig.from_dict(True) == AugmentConfig()
    assert AugmentConfig.from_dict(False) == AugmentConfig.off()
    config = AugmentConfig.from_dict(
        {"zoom_range": [0.5, 2.0], "p_elastic": 1, "p_shrink": 0.2, "shrink_range": [0.6, 0.8]}
    )
    assert config.zoom_range == (0.5, 2.0) and config.shrink_range == (0.6, 0.8)
    assert AugmentConfig.from_dict(config.to_dict()) == config
