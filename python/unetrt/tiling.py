"""Tiles in, tiles out: planning, extraction with normalization, stitching.

Validated wrappers over the C++ core (``unetrt._core``). The semantics are in
docs/ARCHITECTURE.md, "Tiling semantics": the frame is reflect-padded at the bottom
and right to the alignment (and to at least the tile size of a fixed-size model),
every window has the same aligned size, and the tiles' cores partition the frame,
so ``crop`` stitching reproduces the model run once on the padded frame.

Functions here check shapes and dtypes, allocate outputs when none is given, and
hand contiguous buffers to C++, which releases the GIL while it works. ``threads``
is the number of threads the core may use (0 = all hardware threads); it only
splits work big enough to pay for the threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

from . import _core
from .contract import check_layout
from .errors import ConfigError, InputError
from .normalize import IDENTITY, Affine, kernel_frame

#: Which tiles of a plan a batch holds: a slice, an integer or integer indices.
TileIndex: TypeAlias = slice | int | np.ndarray | list[int]


@dataclass(frozen=True, eq=False)
class TilePlan:
    """Where the tiles of a frame are and which pixels each one is trusted for.

    Plans compare by identity (their ``tiles`` array has no single truth value).

    Attributes:
        tile_h: Window height fed to the model (a multiple of the alignment).
        tile_w: Window width fed to the model.
        padded_h: Height of the reflect-padded frame the windows lie in.
        padded_w: Width of the reflect-padded frame.
        height: Frame height.
        width: Frame width.
        tiles: int64 array (n_tiles, 6), one row per tile in row-major order:
            ``win_y, win_x`` (window origin in the padded frame), ``core_y0, core_y1,
            core_x0, core_x1`` (half-open core in frame coordinates).
    """

    tile_h: int
    tile_w: int
    padded_h: int
    padded_w: int
    height: int
    width: int
    tiles: np.ndarray

    @property
    def n_tiles(self) -> int:
        """Number of tiles."""
        return int(self.tiles.shape[0])


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _axis_tile(name: str, extent: int, a: int, halo: int, max_tile: int, fixed: bool) -> None:
    """Raises ConfigError where the C++ planner would reject an axis."""
    h = -(-halo // a) * a
    padded = -(-extent // a) * a
    if fixed:
        if max_tile % a:
            raise ConfigError(
                f"fixed tile {name} {max_tile} must be a multiple of the alignment {a}"
            )
        tile, padded = max_tile, max(padded, max_tile)
    else:
        if max_tile < a:
            raise ConfigError(f"max tile {name} {max_tile} is smaller than the alignment {a}")
        tile = padded if padded <= max_tile else max_tile // a * a
    if tile < padded and tile - 2 * h < a:
        raise ConfigError(
            f"tile {name} {tile} too small for halo {halo} (rounded up to {h} by the "
            f"alignment {a}): frames needing several tiles need tiles of at least "
            f"2 * halo + alignment = {2 * h + a} pixels"
        )


def plan_tiles(
    height: int,
    width: int,
    *,
    alignment: int = 1,
    halo: int = 0,
    max_tile: int | tuple[int, int] | None = None,
    fixed: bool = False,
) -> TilePlan:
    """Plans the tiles of a frame.

    Args:
        height: Frame height in pixels.
        width: Frame width in pixels.
        alignment: The model's input size must be a multiple of this (a power of two).
        halo: Context in pixels a tile needs around its core (rounded up to the
            alignment).
        max_tile: Largest window ``(h, w)`` (or one int for both) allowed; ``None``
            means no limit (one tile). With ``fixed``, the model's static input size.
        fixed: The model has a static input size ``max_tile``: every window has
            exactly that size and small frames are padded up to it.

    Returns:
        The plan: the fewest, largest windows; one window when the padded frame fits.

    Raises:
        ConfigError: If a value is invalid or the tile is too small for the halo.
    """
    height = _positive_int("frame height", height)
    width = _positive_int("frame width", width)
    a = _positive_int("alignment", alignment)
    if a & (a - 1):
        raise ConfigError(f"alignment must be a power of two, got {alignment!r}")
    if isinstance(halo, bool) or not isinstance(halo, (int, np.integer)) or halo < 0:
        raise ConfigError(f"halo must be >= 0, got {halo!r}")
    if max_tile is None:
        if fixed:
            raise ConfigError("a fixed tile size needs max_tile, got None")
        max_h, max_w = -(-height // a) * a, -(-width // a) * a
    elif isinstance(max_tile, (tuple, list)) and len(max_tile) == 2:
        max_h = _positive_int("max tile height", max_tile[0])
        max_w = _positive_int("max tile width", max_tile[1])
    else:
        max_h = max_w = _positive_int("max tile", max_tile)
    _axis_tile("height", height, a, int(halo), max_h, fixed)
    _axis_tile("width", width, a, int(halo), max_w, fixed)
    tile_h, tile_w, padded_h, padded_w, tiles = _core.plan_tiles(
        height, width, a, int(halo), max_h, max_w, bool(fixed)
    )
    tiles.flags.writeable = False
    return TilePlan(tile_h, tile_w, padded_h, padded_w, height, width, tiles)


def _tile_rows(plan: TilePlan, index: TileIndex) -> np.ndarray:
    try:
        rows = plan.tiles[index]
    except IndexError as exc:
        raise ConfigError(f"tile index {index!r} is out of range for {plan.n_tiles} tiles") from exc
    return np.ascontiguousarray(rows.reshape(-1, 6), dtype=np.int64)


def check_buffer(out: np.ndarray, shape: tuple[int, ...], dtype: type) -> None:
    """Raises ValueError unless ``out`` is a writeable C-contiguous buffer of this shape."""
    # A wrong output buffer is a programming error, not a user mistake: ValueError.
    if not isinstance(out, np.ndarray) or out.dtype != dtype or out.shape != shape:
        got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        raise ValueError(f"out must be a {np.dtype(dtype)} array of shape {shape}, got {got}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be C-contiguous and writeable")


def extract_tiles(
    frame: np.ndarray,
    plan: TilePlan,
    index: TileIndex = slice(None),
    affine: Affine = IDENTITY,
    layout: str = "NHWC",
    *,
    out: np.ndarray | None = None,
    threads: int = 0,
) -> np.ndarray:
    """Cuts normalized model input for some tiles of a frame.

    Each value is ``clip(x * scale + offset, lo, hi)`` computed in float32 (two
    roundings, no fused multiply-add, so NumPy gives the same bits). Rows and columns
    past the frame are read with NumPy's ``"reflect"`` padding.

    Args:
        frame: The frame, (H, W) or (H, W, C) with (H, W) = (plan.height, plan.width);
            see `kernel_frame` for accepted dtypes.
        plan: The frame's tile plan.
        index: Which tiles (rows of ``plan.tiles``): a slice, an int or int indices.
        affine: The intensity map (see `unetrt.normalize.affine_for`).
        layout: ``"NHWC"`` or ``"NCHW"``, the model input layout.
        out: float32 buffer of shape (n, tile_h, tile_w, C) (NHWC) or
            (n, C, tile_h, tile_w) (NCHW) to fill; allocated when None.
        threads: Threads to use, 0 for all.

    Returns:
        The batch of tiles (``out`` when given).

    Raises:
        InputError: If the frame does not match the plan or has an unusable dtype.
        ConfigError: If the layout or index is invalid.
    """
    check_layout(layout)
    frame = kernel_frame(frame)
    if frame.shape[:2] != (plan.height, plan.width):
        raise InputError(
            f"frame of shape {frame.shape[:2]} does not match the tile plan's "
            f"{(plan.height, plan.width)}"
        )
    rows = _tile_rows(plan, index)
    channels = frame.shape[2] if frame.ndim == 3 else 1
    n = rows.shape[0]
    shape = (
        (n, plan.tile_h, plan.tile_w, channels)
        if layout == "NHWC"
        else (n, channels, plan.tile_h, plan.tile_w)
    )
    if out is None:
        out = np.empty(shape, np.float32)
    else:
        check_buffer(out, shape, np.float32)
    scale, offset, lo, hi = affine
    _core.extract_tiles(
        frame, rows, plan.tile_h, plan.tile_w, scale, offset, lo, hi, layout, out, threads
    )
    return out


def _tile_outputs(tile_outputs: np.ndarray, plan: TilePlan, rows: np.ndarray, layout: str) -> int:
    """Checks a batch of model outputs against the plan; returns its channel count."""
    check_layout(layout)
    if not isinstance(tile_outputs, np.ndarray) or tile_outputs.ndim != 4:
        raise ValueError("tile_outputs must be a 4-D array (n, tile_h, tile_w, K) or (n, K, ..)")
    n, *rest = tile_outputs.shape
    size = tuple(rest[:2]) if layout == "NHWC" else tuple(rest[1:])
    if n != rows.shape[0] or size != (plan.tile_h, plan.tile_w):
        raise ValueError(
            f"tile_outputs of shape {tile_outputs.shape} ({layout}) do not match "
            f"{rows.shape[0]} tiles of {plan.tile_h}x{plan.tile_w}"
        )
    return int(rest[2] if layout == "NHWC" else rest[0])


def stitch_crop(
    tile_outputs: np.ndarray,
    plan: TilePlan,
    index: TileIndex = slice(None),
    out: np.ndarray | None = None,
    layout: str = "NHWC",
    *,
    threads: int = 0,
) -> np.ndarray:
    """Copies the core of each tile's model output into the frame-sized result.

    Batches of tiles can be stitched one after the other into the same ``out``.

    Args:
        tile_outputs: Model outputs for the tiles ``plan.tiles[index]``, float32
            (n, tile_h, tile_w, K) for NHWC or (n, K, tile_h, tile_w) for NCHW.
        plan: The frame's tile plan.
        index: Which tiles the batch holds, as given to `extract_tiles`.
        out: float32 (H, W, K) result to write into; allocated (zeros) when None.
        layout: ``"NHWC"`` or ``"NCHW"``, the layout of ``tile_outputs``.
        threads: Threads to use, 0 for all.

    Returns:
        The (H, W, K) result (``out`` when given).
    """
    rows = _tile_rows(plan, index)
    channels = _tile_outputs(tile_outputs, plan, rows, layout)
    shape = (plan.height, plan.width, channels)
    if out is None:
        out = np.zeros(shape, np.float32)
    else:
        check_buffer(out, shape, np.float32)
    outputs = np.ascontiguousarray(tile_outputs, dtype=np.float32)
    _core.stitch_crop(outputs, rows, out, layout, threads)
    return out


def taper_weights(tile_h: int, tile_w: int) -> np.ndarray:
    """The blending weights of a window.

    Args:
        tile_h: Window height.
        tile_w: Window width.

    Returns:
        float32 (tile_h, tile_w): a separable Gaussian with sigma = T / 8 per axis,
        peak 1, floored at 1e-3 so that every pixel keeps some weight.
    """
    return _core.taper_weights(
        _positive_int("tile height", tile_h), _positive_int("tile width", tile_w)
    )


def stitch_blend(
    tile_outputs: np.ndarray,
    plan: TilePlan,
    index: TileIndex,
    weights: np.ndarray,
    acc: np.ndarray,
    weight_sum: np.ndarray,
    layout: str = "NHWC",
    *,
    threads: int = 0,
) -> None:
    """Adds tapered whole windows into a running sum (``blend`` stitching).

    Smoother seams than ``crop`` for models without an exact halo, at the price of
    not reproducing a whole-frame run exactly. Each window's part inside the frame
    is added as ``acc += weights * output`` and ``weight_sum += weights`` (float32,
    tiles in order); call `finish_blend` once every tile was added.

    Args:
        tile_outputs: Model outputs for the tiles ``plan.tiles[index]``, float32
            (n, tile_h, tile_w, K) for NHWC or (n, K, tile_h, tile_w) for NCHW.
        plan: The frame's tile plan.
        index: Which tiles the batch holds, as given to `extract_tiles`.
        weights: float32 (tile_h, tile_w), usually `taper_weights`.
        acc: float32 (H, W, K) running sum, zeros at the start.
        weight_sum: float32 (H, W) running sum of weights, zeros at the start.
        layout: ``"NHWC"`` or ``"NCHW"``, the layout of ``tile_outputs``.
        threads: Threads to use, 0 for all.
    """
    rows = _tile_rows(plan, index)
    channels = _tile_outputs(tile_outputs, plan, rows, layout)
    weights = np.ascontiguousarray(weights, dtype=np.float32)
    if weights.shape != (plan.tile_h, plan.tile_w):
        raise ValueError(
            f"weights must have shape {(plan.tile_h, plan.tile_w)}, got {weights.shape}"
        )
    check_buffer(acc, (plan.height, plan.width, channels), np.float32)
    check_buffer(weight_sum, (plan.height, plan.width), np.float32)
    outputs = np.ascontiguousarray(tile_outputs, dtype=np.float32)
    _core.stitch_blend(outputs, rows, weights, acc, weight_sum, layout, threads)


def finish_blend(acc: np.ndarray, weight_sum: np.ndarray, *, threads: int = 0) -> np.ndarray:
    """Turns the sums of `stitch_blend` into the blended result, in place.

    Args:
        acc: float32 (H, W, K) weighted sum; divided by ``weight_sum`` in place.
        weight_sum: float32 (H, W) sum of weights, positive everywhere once every
            tile was added (the taper never drops below 1e-3).
        threads: Threads to use, 0 for all.

    Returns:
        ``acc``, now the weighted mean of the tile outputs.
    """
    if not isinstance(acc, np.ndarray) or acc.ndim != 3:
        raise ValueError("acc must be a float32 array (H, W, K)")
    check_buffer(acc, acc.shape, np.float32)
    weight_sum = np.ascontiguousarray(weight_sum, dtype=np.float32)
    if weight_sum.shape != acc.shape[:2]:
        raise ValueError(f"weight_sum must have shape {acc.shape[:2]}, got {weight_sum.shape}")
    _core.finish_blend(acc, weight_sum, threads)
    return acc


def cut_states(
    state_map: np.ndarray,
    plan: TilePlan,
    index: TileIndex,
    stride: int,
    out: np.ndarray,
    layout: str = "NHWC",
    *,
    threads: int = 0,
) -> np.ndarray:
    """Each tile's state window of a step model's whole-frame state map.

    Args:
        state_map: float32 (Hp / stride, Wp / stride, K) for NHWC or (K, ..) for NCHW.
        plan: The frame's tile plan.
        index: Which tiles of the plan.
        stride: Padded-frame pixels per state cell.
        out: float32 batch of the windows, (n, tile_h / stride, tile_w / stride, K) or
            (n, K, ..) in ``layout``.
        layout: The model's layout.
        threads: Threads to use, 0 for all.

    Returns:
        ``out``.
    """
    rows = _tile_rows(plan, index)
    _core.cut_states(state_map, rows, stride, plan.tile_h, plan.tile_w, layout, out, threads)
    return out


def stitch_states(
    states: np.ndarray,
    plan: TilePlan,
    index: TileIndex,
    stride: int,
    state_map: np.ndarray,
    layout: str = "NHWC",
    *,
    threads: int = 0,
) -> np.ndarray:
    """Each tile's state core (its frame core rounded down to the stride, the last
    core reaching the padded border) from a batch of state outputs into a state map.

    Args:
        states: float32 state outputs of the tiles ``plan.tiles[index]``, shaped as
            `cut_states` writes them.
        plan: The frame's tile plan.
        index: Which tiles of the plan.
        stride: Padded-frame pixels per state cell.
        state_map: The map to write into, shaped as `cut_states` reads it.
        layout: The model's layout.
        threads: Threads to use, 0 for all.

    Returns:
        ``state_map``.
    """
    rows = _tile_rows(plan, index)
    values = np.ascontiguousarray(states, dtype=np.float32)
    _core.stitch_states(
        values,
        rows,
        stride,
        plan.tile_h,
        plan.tile_w,
        plan.height,
        plan.width,
        plan.padded_h,
        plan.padded_w,
        layout,
        state_map,
        threads,
    )
    return state_map
