"""The C++ tiler and stitcher against the NumPy reference (tests/reference.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st

from unetrt import build_info, tiling
from unetrt.errors import ConfigError, InputError
from unetrt.normalize import IDENTITY, Affine
from unetrt.tiling import plan_tiles

DTYPES = (np.uint8, np.uint16, np.float32)
LAYOUTS = ("NHWC", "NCHW")
# A mean-style map with clipping, so clipped and unclipped values both occur.
CLIPPED = Affine(scale=1 / 255, offset=0.5 - 100 / 255, lo=0.0, hi=1.0)


def make_frame(shape: tuple[int, ...], dtype: type, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == np.float32:
        return rng.normal(100, 50, shape).astype(np.float32)
    return rng.integers(0, 256 if dtype == np.uint8 else 65536, shape).astype(dtype)


def frame_shape(h: int, w: int, channels: int | None) -> tuple[int, ...]:
    return (h, w) if channels is None else (h, w, channels)


# ---------------------------------------------------------------- planner


def test_plan_example_520x696() -> None:
    plan = plan_tiles(520, 696, alignment=16, halo=20, max_tile=256)
    # halo 20 -> 32; core 256 - 64 = 192; rows: Hp 528, origins 0, 144, 272.
    assert (plan.tile_h, plan.tile_w, plan.padded_h, plan.padded_w) == (256, 256, 528, 704)
    assert sorted(set(plan.tiles[:, 0])) == [0, 144, 272]
    assert sorted(set(plan.tiles[:, 1])) == [0, 160, 320, 448]
    assert plan.n_tiles == 12
    np.testing.assert_array_equal(plan.tiles[0], [0, 0, 0, 200, 0, 208])
    np.testing.assert_array_equal(plan.tiles[-1], [272, 448, 336, 520, 512, 696])


def test_plan_whole_frame_when_it_fits() -> None:
    plan = plan_tiles(520, 696, alignment=16, halo=40, max_tile=(528, 704))
    assert (plan.tile_h, plan.tile_w, plan.padded_h, plan.padded_w) == (528, 704, 528, 704)
    np.testing.assert_array_equal(plan.tiles, [[0, 0, 0, 520, 0, 696]])
    assert plan_tiles(37, 53, alignment=8).n_tiles == 1  # no max_tile: one tile
    assert plan_tiles(37, 53, alignment=8, max_tile=[40, 56]).n_tiles == 1


def test_plan_fixed_pads_small_frames_to_the_model_size() -> None:
    plan = plan_tiles(37, 53, alignment=16, halo=8, max_tile=(64, 128), fixed=True)
    assert (plan.tile_h, plan.tile_w, plan.padded_h, plan.padded_w) == (64, 128, 64, 128)
    np.testing.assert_array_equal(plan.tiles, [[0, 0, 0, 37, 0, 53]])


def test_plan_is_read_only() -> None:
    with pytest.raises(ValueError):
        plan_tiles(10, 10).tiles[0, 0] = 1


def _expected_tile(extent: int, a: int, max_tile: int, fixed: bool) -> tuple[int, int]:
    padded = math.ceil(extent / a) * a
    if fixed:
        return max_tile, max(padded, max_tile)
    return (padded if padded <= max_tile else max_tile // a * a), padded


@settings(max_examples=100, deadline=None)
@given(
    height=st.integers(1, 700),
    width=st.integers(1, 700),
    pools=st.integers(0, 5),
    halo=st.integers(0, 80),
    max_h=st.integers(1, 800),
    max_w=st.integers(1, 800),
    fixed=st.booleans(),
)
def test_plan_invariants(
    height: int, width: int, pools: int, halo: int, max_h: int, max_w: int, fixed: bool
) -> None:
    a = 2**pools
    if fixed:
        max_h, max_w = max(a, max_h // a * a), max(a, max_w // a * a)
    h = math.ceil(halo / a) * a
    expected = [_expected_tile(e, a, m, fixed) for e, m in ((height, max_h), (width, max_w))]
    feasible = all(m >= a for m in (max_h, max_w)) and all(
        t == p or t - 2 * h >= a for t, p in expected
    )
    if not feasible:
        with pytest.raises(ConfigError):
            plan_tiles(height, width, alignment=a, halo=halo, max_tile=(max_h, max_w), fixed=fixed)
        return
    plan = plan_tiles(height, width, alignment=a, halo=halo, max_tile=(max_h, max_w), fixed=fixed)
    assert [(plan.tile_h, plan.padded_h), (plan.tile_w, plan.padded_w)] == expected
    tiles = plan.tiles
    assert tiles.dtype == np.int64 and tiles.shape == (plan.n_tiles, 6)

    # Cores partition the frame.
    cover = np.zeros((height, width), np.int32)
    for _, _, y0, y1, x0, x1 in tiles:
        assert y0 < y1 and x0 < x1
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all()

    for wy, wx, y0, y1, x0, x1 in tiles:
        for origin, tile, padded, c0, c1 in (
            (wy, plan.tile_h, plan.padded_h, y0, y1),
            (wx, plan.tile_w, plan.padded_w, x0, x1),
        ):
            # Windows on the alignment grid, inside the padded frame.
            assert origin % a == 0 and tile % a == 0
            assert origin >= 0 and origin + tile <= padded
            # Context: h on each side unless the window touches the padded border.
            assert origin == 0 or c0 - origin >= h
            assert origin + tile == padded or origin + tile - c1 >= h

    # Origins along each axis: first 0, last Hp - T.
    for column, tile, padded in ((0, plan.tile_h, plan.padded_h), (1, plan.tile_w, plan.padded_w)):
        origins = np.unique(tiles[:, column])
        assert origins[0] == 0 and origins[-1] == padded - tile
    # Fewest tiles: the whole padded frame when it fits.
    if not fixed and plan.padded_h <= max_h and plan.padded_w <= max_w:
        assert plan.n_tiles == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"halo": -3}, "halo must be >= 0, got -3"),
        ({"alignment": 12}, "alignment must be a power of two, got 12"),
        ({"alignment": 0}, "alignment must be a positive integer, got 0"),
        ({"max_tile": (64, 0)}, "max tile width must be a positive integer, got 0"),
        ({"max_tile": 8, "alignment": 16}, "max tile height 8 is smaller than the alignment 16"),
        ({"max_tile": 100, "alignment": 16, "fixed": True}, "must be a multiple of the alignment"),
        (
            {"max_tile": 64, "alignment": 16, "halo": 24},
            r"tile height 64 too small for halo 24 \(rounded up to 32",
        ),
        ({"fixed": True}, "a fixed tile size needs max_tile"),
    ],
)
def test_plan_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_tiles(300, 300, **kwargs)


def test_plan_rejects_empty_frames() -> None:
    with pytest.raises(ConfigError, match="frame width must be a positive integer, got 0"):
        plan_tiles(10, 0)


# ---------------------------------------------------------------- extraction


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("channels", [None, 1, 3])
@pytest.mark.parametrize("size", [(520, 696), (37, 53), (1, 1), (1, 7), (5, 1)])
@pytest.mark.parametrize("fixed", [False, True])
def test_extract_matches_reference(
    dtype: type, layout: str, channels: int | None, size: tuple[int, int], fixed: bool
) -> None:
    frame = make_frame(frame_shape(*size, channels), dtype)
    # Fixed 64x64 windows on tiny frames read the reflection several periods deep.
    plan = plan_tiles(*size, alignment=16, halo=8, max_tile=64, fixed=fixed)
    got = tiling.extract_tiles(frame, plan, affine=CLIPPED, layout=layout, threads=2)
    np.testing.assert_array_equal(got, ref.extract_tiles(frame, plan, slice(None), CLIPPED, layout))


@pytest.mark.parametrize("index", [slice(2, 5), 3, np.array([7, 0, 4]), [1, 1]])
def test_extract_a_subset_of_tiles(index: object) -> None:
    frame = make_frame((150, 170), np.uint16)
    plan = plan_tiles(150, 170, alignment=8, halo=8, max_tile=48)
    got = tiling.extract_tiles(frame, plan, index, IDENTITY)
    np.testing.assert_array_equal(got, ref.extract_tiles(frame, plan, index, IDENTITY, "NHWC"))


@settings(max_examples=50, deadline=None)
@given(
    height=st.integers(1, 120),
    width=st.integers(1, 120),
    pools=st.integers(0, 4),
    halo=st.integers(0, 12),
    extra=st.integers(0, 3),
    channels=st.sampled_from([None, 1, 2]),
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**16),
)
def test_extract_matches_reference_random(
    height: int,
    width: int,
    pools: int,
    halo: int,
    extra: int,
    channels: int | None,
    dtype: type,
    layout: str,
    seed: int,
) -> None:
    a = 2**pools
    tile = math.ceil(halo / a) * a * 2 + a * (1 + extra)  # the smallest legal tiles and up
    frame = make_frame(frame_shape(height, width, channels), dtype, seed)
    plan = plan_tiles(height, width, alignment=a, halo=halo, max_tile=tile)
    got = tiling.extract_tiles(frame, plan, affine=CLIPPED, layout=layout)
    np.testing.assert_array_equal(got, ref.extract_tiles(frame, plan, slice(None), CLIPPED, layout))


def test_extract_threads_give_identical_results() -> None:
    frame = make_frame((1024, 1000), np.uint16)
    plan = plan_tiles(1024, 1000, alignment=16, halo=16, max_tile=512)
    one = tiling.extract_tiles(frame, plan, affine=CLIPPED, threads=1)
    for threads in (0, 2, 3):
        np.testing.assert_array_equal(
            tiling.extract_tiles(frame, plan, affine=CLIPPED, threads=threads), one
        )


def test_extract_into_a_caller_buffer() -> None:
    frame = make_frame((40, 40), np.uint8)
    plan = plan_tiles(40, 40, alignment=8, halo=4, max_tile=24)
    buffer = np.full((8, plan.tile_h, plan.tile_w, 1), -1, np.float32)
    got = tiling.extract_tiles(frame, plan, slice(0, 2), out=buffer[3:5])
    assert got.base is buffer
    np.testing.assert_array_equal(
        buffer[3:5], ref.extract_tiles(frame, plan, slice(0, 2), IDENTITY, "NHWC")
    )
    assert (buffer[:3] == -1).all() and (buffer[5:] == -1).all()


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.float64, np.float16, np.uint32])
def test_extract_converts_other_dtypes_to_float32(dtype: type) -> None:
    frame = make_frame((30, 20), np.uint8).astype(dtype)
    plan = plan_tiles(30, 20, alignment=4, max_tile=16)
    got = tiling.extract_tiles(frame, plan, layout="NCHW")
    expected = ref.extract_tiles(frame.astype(np.float32), plan, slice(None), IDENTITY, "NCHW")
    np.testing.assert_array_equal(got, expected)


def test_extract_reads_non_contiguous_frames() -> None:
    frame = make_frame((60, 80), np.uint16)[::2, ::2]
    plan = plan_tiles(30, 40, alignment=8, max_tile=16)
    np.testing.assert_array_equal(
        tiling.extract_tiles(frame, plan),
        ref.extract_tiles(frame, plan, slice(None), IDENTITY, "NHWC"),
    )


@pytest.mark.parametrize(
    ("frame", "error", "message"),
    [
        (np.zeros((10, 10), bool), InputError, "frame dtype bool is not supported"),
        (np.zeros((10, 10), np.complex64), InputError, "frame dtype complex64 is not supported"),
        (np.zeros((10, 11), np.uint8), InputError, r"frame of shape \(10, 11\) does not match"),
        (np.zeros((10,), np.uint8), InputError, r"shape \(H, W\) or \(H, W, C\), got \(10,\)"),
    ],
)
def test_extract_rejects_bad_frames(frame: np.ndarray, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        tiling.extract_tiles(frame, plan_tiles(10, 10))


def test_extract_rejects_bad_arguments() -> None:
    frame, plan = np.zeros((10, 10), np.uint8), plan_tiles(10, 10)
    with pytest.raises(ConfigError, match="layout must be one of"):
        tiling.extract_tiles(frame, plan, layout="HWC")
    with pytest.raises(ConfigError, match="out of range"):
        tiling.extract_tiles(frame, plan, 5)
    with pytest.raises(ValueError, match="out must be a float32 array of shape"):
        tiling.extract_tiles(frame, plan, out=np.zeros((1, 10, 10, 1), np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        tiling.extract_tiles(frame, plan, out=np.zeros((1, 10, 10, 2), np.float32)[..., :1])


# ---------------------------------------------------------------- stitching


def _outputs(plan: tiling.TilePlan, channels: int, layout: str, seed: int = 1) -> np.ndarray:
    shape = (plan.n_tiles, plan.tile_h, plan.tile_w, channels)
    out = np.random.default_rng(seed).random(shape, np.float32)
    return out if layout == "NHWC" else np.ascontiguousarray(out.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(520, 696), (37, 53), (1, 1)])
def test_stitch_crop_matches_reference(layout: str, channels: int, size: tuple[int, int]) -> None:
    plan = plan_tiles(*size, alignment=16, halo=8, max_tile=64)
    outputs = _outputs(plan, channels, layout)
    got = tiling.stitch_crop(outputs, plan, layout=layout, threads=2)
    np.testing.assert_array_equal(got, ref.stitch_crop(outputs, plan.tiles, *size, layout))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("channels", [None, 2])
def test_identity_network_round_trip_is_exact(layout: str, channels: int | None) -> None:
    """With the network x -> x, extract then crop-stitch gives the frame back."""
    frame = make_frame(frame_shape(203, 157, channels), np.float32)
    plan = plan_tiles(203, 157, alignment=8, halo=12, max_tile=64)
    tiles = tiling.extract_tiles(frame, plan, layout=layout)
    np.testing.assert_array_equal(tiling.stitch_crop(tiles, plan, layout=layout), ref.as_hwc(frame))


def test_stitch_crop_in_batches_equals_one_call() -> None:
    plan = plan_tiles(300, 200, alignment=8, halo=8, max_tile=64)
    outputs = _outputs(plan, 2, "NCHW")
    out = np.zeros((300, 200, 2), np.float32)
    for start in range(0, plan.n_tiles, 5):
        batch = slice(start, start + 5)
        tiling.stitch_crop(outputs[batch], plan, batch, out, layout="NCHW")
    np.testing.assert_array_equal(out, tiling.stitch_crop(outputs, plan, layout="NCHW"))


def test_stitch_crop_rejects_mismatched_outputs() -> None:
    plan = plan_tiles(100, 100, alignment=8, halo=8, max_tile=64)
    outputs = _outputs(plan, 1, "NHWC")
    with pytest.raises(ValueError, match="do not match"):
        tiling.stitch_crop(outputs[:2], plan)
    with pytest.raises(ValueError, match="do not match"):
        tiling.stitch_crop(outputs, plan, layout="NCHW")
    with pytest.raises(ValueError, match=r"out must be a float32 array of shape \(100, 100, 1\)"):
        tiling.stitch_crop(outputs, plan, out=np.zeros((100, 100), np.float32))


def _blend(outputs: np.ndarray, plan: tiling.TilePlan, layout: str, step: int) -> np.ndarray:
    channels = outputs.shape[3] if layout == "NHWC" else outputs.shape[1]
    acc = np.zeros((plan.height, plan.width, channels), np.float32)
    weight_sum = np.zeros((plan.height, plan.width), np.float32)
    weights = tiling.taper_weights(plan.tile_h, plan.tile_w)
    for start in range(0, plan.n_tiles, step):
        batch = slice(start, start + step)
        tiling.stitch_blend(outputs[batch], plan, batch, weights, acc, weight_sum, layout)
    return tiling.finish_blend(acc, weight_sum)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(520, 696), (37, 53), (1, 1)])
def test_stitch_blend_matches_reference(layout: str, channels: int, size: tuple[int, int]) -> None:
    plan = plan_tiles(*size, alignment=16, halo=8, max_tile=64)
    outputs = _outputs(plan, channels, layout)
    weights = ref.taper_weights(plan.tile_h, plan.tile_w)
    acc, weight_sum = ref.stitch_blend(outputs, plan.tiles, weights, *size, layout)
    got = _blend(outputs, plan, layout, step=4)
    np.testing.assert_array_equal(got, acc / weight_sum[..., None])


def test_blend_of_identity_network_is_the_frame() -> None:
    frame = make_frame((130, 90, 2), np.float32)
    plan = plan_tiles(130, 90, alignment=8, halo=8, max_tile=48)
    tiles = tiling.extract_tiles(frame, plan)
    np.testing.assert_allclose(_blend(tiles, plan, "NHWC", step=100), frame, rtol=1e-5)


def test_finish_blend_rejects_mismatched_sums() -> None:
    with pytest.raises(ValueError, match=r"weight_sum must have shape \(4, 5\)"):
        tiling.finish_blend(np.zeros((4, 5, 1), np.float32), np.ones((5, 4), np.float32))


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (64, 64), (256, 96), (17, 33)])
def test_taper_weights(size: tuple[int, int]) -> None:
    w = tiling.taper_weights(*size)
    assert w.dtype == np.float32 and w.shape == size
    np.testing.assert_allclose(w, ref.taper_weights(*size), rtol=1e-6)
    assert w.max() <= 1 and w.min() >= np.float32(1e-3)
    np.testing.assert_array_equal(w, w[::-1, ::-1])  # symmetric
    if size[0] % 2 and size[1] % 2:
        assert w.max() == 1


def test_build_info() -> None:
    import importlib.metadata
    import os
    import re
    from pathlib import Path

    import unetrt

    info = build_info()
    assert sorted(info) == ["compiler", "cuda", "cuda_devices", "hardware_threads", "version"]
    # The version reaches C++ from pyproject.toml (scikit-build-core -> CMake -> define).
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    declared = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE)
    assert declared is not None
    assert info["version"] == declared[1] == importlib.metadata.version("unetrt")
    assert unetrt.__version__ == info["version"]
    assert type(info["cuda"]) is bool and type(info["cuda_devices"]) is int
    if not info["cuda"]:  # a CPU build answers "how many GPUs?" with 0
        assert info["cuda_devices"] == 0
    # std::thread::hardware_concurrency: online processors (libstdc++ and libc++
    # both ask sysconf), at least 1.
    online = os.sysconf("SC_NPROCESSORS_ONLN") if hasattr(os, "sysconf") else os.cpu_count()
    assert info["hardware_threads"] == max(1, online or 1)
    # info.cpp's formats: "GCC 12.2.0", "Clang <__clang_version__>", "MSVC <_MSC_FULL_VER>".
    assert re.fullmatch(r"GCC \d+\.\d+\.\d+|Clang \d+\.\d+\.\d+.*|MSVC \d{9}", info["compiler"])
