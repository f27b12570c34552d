"""Paired augmentation: image, mask, weights and clip frames stay aligned; seeds fix it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
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


@settings(max_examples=25, deadline=None)
@given(mask=masks(), seed=st.integers(0, 2**32 - 1), steps=st.integers(2, 4))
def test_every_frame_of_a_clip_gets_the_same_transform(
    mask: np.ndarray, seed: int, steps: int
) -> None:
    base = _image(mask)
    clip = [base + 7 * k for k in range(steps)]  # frame k = frame 0 + 7k
    image, out, _ = augment_patch(
        clip, mask, config=GEOMETRY_ONLY, rng=np.random.default_rng(seed), shape=(16, 12)
    )
    assert image.shape == (steps, 16, 12) and out is not None
    for k in range(steps):
        np.testing.assert_allclose(image[k] - image[0], 7 * k, atol=1e-3)
    interior = ~_near_an_edge(out)
    np.testing.assert_array_equal((image[-1] > 127)[interior], (out > 0)[interior])


def test_same_seed_same_patch_other_seed_other_patch() -> None:
    rng = np.random.default_rng(1)
    image = rng.random((40, 50)).astype(np.float32)
    mask = (image > 0.5).astype(np.uint8)
    config = AugmentConfig(p_elastic=1.0, p_noise=1.0)

    def run(seed: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        return augment_patch(
            image, mask, config=config, rng=np.random.default_rng(seed), shape=(24, 24)
        )

    a, b, c = run(7), run(7), run(8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])  # type: ignore[arg-type]
    assert not np.array_equal(a[0], c[0])


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
        ("yes", "augmentation must be a JSON object or true/false"),
    ],
)
def test_bad_augmentation_settings_are_named(data: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AugmentConfig.from_dict(data)  # type: ignore[arg-type]


def test_augmentation_from_json_forms() -> None:
    assert AugmentConfig.from_dict(True) == AugmentConfig()
    assert AugmentConfig.from_dict(False) == AugmentConfig.off()
    config = AugmentConfig.from_dict({"zoom_range": [0.5, 2.0], "p_elastic": 1})
    assert config.zoom_range == (0.5, 2.0)
    assert AugmentConfig.from_dict(config.to_dict()) == config
