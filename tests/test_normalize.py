"""Normalization: statistics, affine maps, and the C++ kernel against the NumPy formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import gaussian_filter

from unetrt import _core, tiling
from unetrt.errors import ConfigError, InputError
from unetrt.normalize import (
    IDENTITY,
    Affine,
    Normalization,
    Statistics,
    affine_for,
    correct_illumination,
    dtype_range,
    frame_statistics,
    kernel_frame,
    normalize_frame,
    prepare_frame,
    stack_statistics,
)

DTYPES = (np.uint8, np.uint16, np.float32)


def documented(frame: np.ndarray, method: str, center: float | None = None) -> np.ndarray:
    """The normalized frame as the `Normalization` docstring defines it, in NumPy.

    Independent of `affine_for`: ``R`` is the dtype range (255, 65535, 1.0); the map is
    evaluated in float32 with its scale and offset rounded to float32 (`Affine`).
    ``center`` replaces the frame's own mean or median (stack statistics).
    """
    full = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(frame.dtype, 1.0)
    x = frame.astype(np.float32)

    def affine(scale: float, offset: float) -> np.ndarray:
        return x * np.float32(scale) + np.float32(offset)

    if method == "none":
        return x
    if method == "range":
        return affine(1 / full, 0.0)
    if method in ("mean", "median"):
        if center is None:
            center = float(frame.mean(dtype=np.float64) if method == "mean" else np.median(frame))
        return np.clip(affine(1 / full, 0.5 - center / full), np.float32(0), np.float32(1))
    low, high = np.percentile(frame, [1.0, 99.8])  # the default percentiles
    scale = 1 / (high - low) if high > low else 1 / full
    return affine(scale, -low * scale)


def make_frame(shape: tuple[int, ...], dtype: type, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == np.float32:
        return rng.normal(0.4, 0.2, shape).astype(np.float32)
    return rng.integers(0, 200 if dtype == np.uint8 else 5000, shape).astype(dtype)


def test_dtype_range() -> None:
    assert dtype_range(np.uint8) == 255
    assert dtype_range(np.uint16) == 65535
    assert dtype_range(np.int16) == 32767
    assert dtype_range(np.float32) == dtype_range("float64") == 1.0
    with pytest.raises(InputError, match="bool"):
        dtype_range(bool)


def test_affine_for_each_method() -> None:
    frame = np.array([[0, 100], [200, 1000]], np.uint16)
    r = 65535.0
    assert affine_for(frame, Normalization(method="none")) == IDENTITY
    assert affine_for(frame, Normalization(method="range")) == Affine(1 / r)
    assert affine_for(frame, Normalization(method="mean")) == Affine(1 / r, 0.5 - 325 / r, 0, 1)
    assert affine_for(frame, Normalization(method="median")) == Affine(1 / r, 0.5 - 150 / r, 0, 1)
    spec = Normalization(method="percentile", low=0, high=100)
    scale, offset, lo, hi = affine_for(frame, spec)
    assert math.isclose(scale, 1 / 1000) and offset == 0 and (lo, hi) == (-math.inf, math.inf)
    assert scale == 1 / 1000  # p100 - p0 = 1000 exactly


def test_percentile_of_a_flat_frame_does_not_divide_by_zero() -> None:
    frame = np.full((8, 8), 77, np.uint8)
    affine = affine_for(frame, Normalization(method="percentile"))
    assert affine == Affine(1 / 255, -77 / 255)
    np.testing.assert_array_equal(normalize_frame(frame, Normalization(method="percentile")), 0)


def test_affine_for_statistics_needs_the_dtype() -> None:
    spec = Normalization(method="mean")
    assert affine_for(Statistics(center=51.0), spec, np.uint8) == Affine(1 / 255, 0.3, 0, 1)
    with pytest.raises(ConfigError, match="dtype"):
        affine_for(Statistics(center=51.0), spec)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["none", "range", "mean", "median", "percentile"])
@pytest.mark.parametrize("shape", [(37, 53), (64, 48, 3), (1, 1)])
def test_normalize_frame_equals_the_numpy_formula(
    dtype: type, method: str, shape: tuple[int, ...]
) -> None:
    frame = make_frame(shape, dtype)
    spec = Normalization(method=method)
    affine = affine_for(frame, spec)
    got = normalize_frame(frame, spec, threads=2)
    assert got.dtype == np.float32 and got.shape == frame.shape
    np.testing.assert_array_equal(got, ref.apply_affine(frame, affine))
    np.testing.assert_array_equal(got, documented(frame, method))


@settings(max_examples=50, deadline=None)
@given(
    height=st.integers(1, 90),
    width=st.integers(1, 90),
    dtype=st.sampled_from(DTYPES),
    method=st.sampled_from(["range", "mean", "percentile"]),
    layout=st.sampled_from(["NHWC", "NCHW"]),
    seed=st.integers(0, 2**16),
)
def test_extraction_normalizes_like_normalize_frame(
    height: int, width: int, dtype: type, method: str, layout: str, seed: int
) -> None:
    """Inference (normalization fused in tile extraction) equals training (normalize_frame)."""
    frame = make_frame((height, width), dtype, seed)
    spec = Normalization(method=method)
    values, affine = prepare_frame(frame, spec)
    plan = tiling.plan_tiles(height, width, alignment=8)  # one tile, padded to 8
    tile = tiling.extract_tiles(values, plan, affine=affine, layout=layout)
    tile = tile[0] if layout == "NHWC" else tile[0].transpose(1, 2, 0)
    expected = normalize_frame(frame, spec)
    np.testing.assert_array_equal(tile[:height, :width, 0], expected)
    np.testing.assert_array_equal(expected, ref.apply_affine(frame, affine))


def test_kernel_evaluates_in_float32_with_two_roundings() -> None:
    # Values where a fused multiply-add or float64 arithmetic would round differently.
    frame = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    affine = Affine(scale=1 / 3, offset=-0.1)
    out = np.empty(frame.shape, np.float32)
    _core.normalize(frame, *affine, out, 1)
    expected = frame.astype(np.float32) * np.float32(1 / 3) + np.float32(-0.1)
    np.testing.assert_array_equal(out, expected)


def test_mean_method_clips_to_unit_range() -> None:
    frame = np.array([[0, 255], [128, 128]], np.uint8)
    got = normalize_frame(frame, Normalization(method="mean"))
    assert got.min() >= 0 and got.max() <= 1
    np.testing.assert_array_equal(got, ref.apply_affine(frame, affine_for(frame, Normalization())))
    # mean 127.75: y = x / 255 + 0.5 - 127.75 / 255, so 0 maps to -0.00098, clipped to 0
    step, offset = np.float32(1 / 255), np.float32(0.5 - 127.75 / 255)
    assert offset < 0
    expected = [[0.0, np.float32(255) * step + offset], [np.float32(128) * step + offset] * 2]
    np.testing.assert_array_equal(got, np.array(expected, np.float32))
    # mean 63.75: y = x / 255 + 0.25, so 255 maps to 1.25, clipped to 1
    frame = np.array([[0, 0], [0, 255]], np.uint8)
    got = normalize_frame(frame, Normalization(method="mean"))
    np.testing.assert_array_equal(got, np.array([[0.25, 0.25], [0.25, 1.0]], np.float32))
    np.testing.assert_array_equal(got, documented(frame, "mean"))


def test_statistics_pool_channels() -> None:
    frame = make_frame((20, 30, 3), np.uint16)
    assert frame_statistics(frame, Normalization(method="mean")).center == pytest.approx(
        frame.mean()
    )
    stats = frame_statistics(frame, Normalization(method="percentile", low=2, high=98))
    np.testing.assert_allclose([stats.low, stats.high], np.percentile(frame, [2, 98]))


def test_stack_statistics_mean_is_exact_and_percentiles_pool_samples() -> None:
    frames = [make_frame((40, 50), np.uint16, seed) for seed in range(5)]
    mean = stack_statistics(iter(frames), Normalization(method="mean", scope="stack"))
    assert mean.center == pytest.approx(np.mean(frames))
    # Frames smaller than the sample size are taken whole: exact pooled percentiles.
    spec = Normalization(method="percentile", scope="stack")
    stats = stack_statistics(frames, spec)
    np.testing.assert_allclose([stats.low, stats.high], np.percentile(frames, [1, 99.8]))
    # Larger frames are subsampled, reproducibly.
    sampled = stack_statistics(frames, spec, pixels_per_frame=500, seed=3)
    assert sampled == stack_statistics(frames, spec, pixels_per_frame=500, seed=3)
    assert sampled.low == pytest.approx(stats.low, rel=0.2)
    assert sampled.high == pytest.approx(stats.high, rel=0.05)
    median = stack_statistics(frames, Normalization(method="median"), pixels_per_frame=1000)
    assert median.center == pytest.approx(np.median(frames), rel=0.05)


def test_stack_statistics_needs_frames() -> None:
    with pytest.raises(InputError, match="no frames"):
        stack_statistics([], Normalization(method="mean"))
    assert stack_statistics([], Normalization(method="range")) == Statistics()


def test_stack_scope_needs_statistics() -> None:
    frame = make_frame((10, 10), np.uint8)
    spec = Normalization(method="mean", scope="stack")
    with pytest.raises(ConfigError, match="stack_statistics"):
        normalize_frame(frame, spec)
    stats = stack_statistics([frame, frame[::-1]], spec)
    np.testing.assert_array_equal(
        normalize_frame(frame, spec, stats),
        ref.apply_affine(frame, affine_for(stats, spec, frame.dtype)),
    )
    # The flipped frame has the same pixels, so the stack mean is the frame's mean.
    assert stats == Statistics(center=float(frame.mean(dtype=np.float64)))
    np.testing.assert_array_equal(normalize_frame(frame, spec, stats), documented(frame, "mean"))


def test_stack_statistics_apply_to_every_frame_of_the_stack() -> None:
    # A dark frame normalized with a bright stack's mean: x / 255 + 0.5 - mean(bright) / 255.
    rng = np.random.default_rng(6)
    bright = rng.integers(100, 200, (32, 32), dtype=np.uint8)
    dark = (bright // 2).astype(np.uint8)
    spec = Normalization(method="mean", scope="stack")
    stats = stack_statistics([bright], spec)
    assert stats.center == float(bright.mean(dtype=np.float64))
    got = normalize_frame(dark, spec, stats)
    expected = documented(dark, "mean", center=float(bright.mean(dtype=np.float64)))
    np.testing.assert_array_equal(got, expected)
    # not the frame's own statistics: the dark frame's mean would map it around 0.5
    assert got.mean() < 0.5 - 60 / 255
    np.testing.assert_array_equal(
        normalize_frame(dark, Normalization(method="mean")), documented(dark, "mean")
    )


def test_correct_illumination_removes_a_gradient_and_keeps_the_mean() -> None:
    y, x = np.mgrid[0:128, 0:128]
    background = 1000 + 8 * x + 4 * y
    spots = np.zeros((128, 128))
    spots[::16, ::16] = 500
    frame = (background + spots).astype(np.uint16)
    got = correct_illumination(frame, 10.0)
    assert got.dtype == np.float32 and got.shape == frame.shape
    assert got.mean() == pytest.approx(frame.mean(), rel=1e-4)
    inner = got[20:-20, 20:-20]  # away from the reflected borders
    assert np.ptp(inner[spots[20:-20, 20:-20] == 0]) < 0.05 * np.ptp(background)
    np.testing.assert_allclose(correct_illumination(np.full((9, 9), 7, np.uint8), 2.0), 7)
    # The documented formula: frame - gaussian_filter(frame, sigma) + mean(frame).
    values = frame.astype(np.float32)
    expected = values - gaussian_filter(values, 10.0, mode="reflect") + np.float32(frame.mean())
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3)


def test_correct_illumination_is_per_channel() -> None:
    frame = np.stack([np.full((16, 16), 10.0), np.full((16, 16), 90.0)], axis=-1)
    np.testing.assert_allclose(correct_illumination(frame, 3.0), frame, rtol=1e-6)
    # Each channel is blurred on its own (only across H and W) and keeps its own mean.
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 4000, (24, 20, 2)).astype(np.uint16)
    got = correct_illumination(frame, 3.0)
    for c in range(2):
        values = frame[..., c].astype(np.float32)
        expected = values - gaussian_filter(values, 3.0, mode="reflect") + values.mean()
        np.testing.assert_allclose(got[..., c], expected, rtol=0, atol=1e-3)


def test_illumination_correction_keeps_the_raw_dtype_range() -> None:
    frame = make_frame((48, 64), np.uint16)
    spec = Normalization(method="range", illumination_sigma=5.0)
    values, affine = prepare_frame(frame, spec)
    assert values.dtype == np.float32 and affine == Affine(1 / 65535)
    np.testing.assert_array_equal(
        normalize_frame(frame, spec),
        ref.apply_affine(correct_illumination(frame, 5.0), affine),
    )


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (np.zeros((4, 4), bool), "frame dtype bool is not supported"),
        (np.zeros((4, 4, 2, 2), np.uint8), r"shape \(H, W\) or \(H, W, C\)"),
        (np.zeros((0, 4), np.uint8), r"got \(0, 4\)"),
    ],
)
def test_bad_frames_are_rejected(frame: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message):
        normalize_frame(frame, Normalization(method="range"))


def test_kernel_frame_converts_other_dtypes() -> None:
    frame = np.arange(12, dtype=np.int32).reshape(3, 4)
    converted = kernel_frame(frame)
    assert converted.dtype == np.float32 and converted.flags.c_contiguous
    np.testing.assert_array_equal(converted, np.arange(12, dtype=np.float32).reshape(3, 4))
    u16 = np.zeros((3, 4), np.uint16)
    assert kernel_frame(u16) is u16
    big_endian = np.arange(12, dtype=">u2").reshape(3, 4)
    native = kernel_frame(big_endian)
    assert native.dtype == np.uint16 and native.dtype.isnative
    np.testing.assert_array_equal(native, big_endian)
    np.testing.assert_array_equal(normalize_frame(big_endian, Normalization(method="none")), native)


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    dtype=st.sampled_from([np.uint8, np.uint16]),
    size=st.integers(1, 2000),
)
def test_histogram_percentiles_equal_numpy_bit_for_bit(data, dtype, size) -> None:
    from unetrt.normalize import percentiles

    top = data.draw(st.integers(0, np.iinfo(dtype).max))
    seed = data.draw(st.integers(0, 2**32 - 1))
    values = np.random.default_rng(seed).integers(0, top + 1, size).astype(dtype)
    q = data.draw(st.lists(st.floats(0, 100), min_size=1, max_size=4)) + [1.0, 99.8, 50.0]
    expected = tuple(float(v) for v in np.percentile(values, q))
    assert percentiles(values, q) == expected
