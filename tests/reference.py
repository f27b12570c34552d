"""A pure-NumPy tiler and stitcher: the oracle the C++ core is compared against.

Written for obviousness, not speed: normalize the whole frame, ``np.pad`` it
(reflect, bottom/right), slice the windows, copy the cores or add weighted windows.
"""

from __future__ import annotations

import numpy as np

from unetrt.normalize import Affine
from unetrt.tiling import TilePlan


def apply_affine(frame: np.ndarray, affine: Affine) -> np.ndarray:
    """``clip(x * scale + offset, lo, hi)`` in float32, two roundings."""
    scale, offset, lo, hi = (np.float32(v) for v in affine)
    return np.clip(frame.astype(np.float32) * scale + offset, lo, hi)


def as_hwc(frame: np.ndarray) -> np.ndarray:
    return frame[:, :, None] if frame.ndim == 2 else frame


def pad_frame(frame: np.ndarray, padded_h: int, padded_w: int) -> np.ndarray:
    """An (H, W, C) frame reflect-padded at the bottom and right."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, padded_h - h), (0, padded_w - w), (0, 0)), mode="reflect")


def extract_tiles(
    frame: np.ndarray, plan: TilePlan, index: object, affine: Affine, layout: str
) -> np.ndarray:
    """The model input of tiles ``plan.tiles[index]``."""
    padded = pad_frame(apply_affine(as_hwc(frame), affine), plan.padded_h, plan.padded_w)
    rows = plan.tiles[index].reshape(-1, 6)
    batch = np.stack(
        [padded[y : y + plan.tile_h, x : x + plan.tile_w] for y, x in rows[:, :2]]
    ).reshape(len(rows), plan.tile_h, plan.tile_w, padded.shape[2])
    return batch if layout == "NHWC" else batch.transpose(0, 3, 1, 2).copy()


def to_nhwc(outputs: np.ndarray, layout: str) -> np.ndarray:
    return outputs if layout == "NHWC" else outputs.transpose(0, 2, 3, 1)


def stitch_crop(
    outputs: np.ndarray, tiles: np.ndarray, height: int, width: int, layout: str
) -> np.ndarray:
    """Copies each tile's core into an (H, W, K) frame (NaN where no core)."""
    outputs = to_nhwc(outputs, layout)
    dst = np.full((height, width, outputs.shape[3]), np.nan, np.float32)
    for out, (wy, wx, y0, y1, x0, x1) in zip(outputs, tiles, strict=True):
        dst[y0:y1, x0:x1] = out[y0 - wy : y1 - wy, x0 - wx : x1 - wx]
    return dst


def stitch_blend(
    outputs: np.ndarray,
    tiles: np.ndarray,
    weights: np.ndarray,
    height: int,
    width: int,
    layout: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted sums of whole windows (their part inside the frame), tiles in order."""
    outputs = to_nhwc(outputs, layout)
    acc = np.zeros((height, width, outputs.shape[3]), np.float32)
    weight_sum = np.zeros((height, width), np.float32)
    for out, (wy, wx, *_) in zip(outputs, tiles, strict=True):
        h, w = min(out.shape[0], height - wy), min(out.shape[1], width - wx)
        if h <= 0 or w <= 0:
            continue
        acc[wy : wy + h, wx : wx + w] += weights[:h, :w, None] * out[:h, :w]
        weight_sum[wy : wy + h, wx : wx + w] += weights[:h, :w]
    return acc, weight_sum


def taper_weights(tile_h: int, tile_w: int) -> np.ndarray:
    """Separable Gaussian, sigma T/8, peak 1, floor 1e-3."""

    def gaussian(n: int) -> np.ndarray:
        g = np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2) / (n / 8)) ** 2)
        return g / g.max()

    return np.maximum(np.outer(gaussian(tile_h), gaussian(tile_w)), 1e-3).astype(np.float32)
