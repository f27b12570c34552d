"""A pure-NumPy tiler and stitcher: the oracle the C++ core is compared against.

Written for obviousness, not speed: normalize the whole frame, ``np.pad`` it
(reflect, bottom/right), slice the windows, copy the cores or add weighted windows.
Also the ConvLSTM step model of `unetrt.testing` recomputed from its weights, one step
(`convlstm_step_reference`), a video in stream mode and a frame in window mode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from unetrt.normalize import Affine
from unetrt.tiling import TilePlan

if TYPE_CHECKING:
    import onnx


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


# --- The ConvLSTM step model (`unetrt.testing.convlstm_step_model`), in float64. ---


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}


def _conv_same(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cross-correlation of (C, H, W) with (O, C, k, k) weights, zero 'same' padding."""
    k = w.shape[2]
    r = (k - 1) // 2
    _, height, width = x.shape
    padded = np.pad(x, ((0, 0), (r, r), (r, r)))
    out = np.zeros((w.shape[0], height, width))
    for dy in range(k):
        for dx in range(k):
            window = padded[:, dy : dy + height, dx : dx + width]
            out += np.einsum("oc,chw->ohw", w[:, :, dy, dx], window)
    return out + b[:, None, None]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def convlstm_step_reference(
    model: onnx.ModelProto, frame: np.ndarray, h: np.ndarray, c: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step of the ConvLSTM step model, from its initializers, without onnxruntime.

    Args:
        model: The ``onnx.ModelProto`` (either layout; the weights are the same).
        frame: (H, W), H and W even.
        h: Hidden state (H/2, W/2, F).
        c: Cell state (H/2, W/2, F).

    Returns:
        ``(mask (H, W), h_new (H/2, W/2, F), c_new (H/2, W/2, F))`` in float64.
    """
    p = _initializers(model)
    frame = np.asarray(frame, np.float64)
    height, width = frame.shape
    x = frame[None]
    hc = np.asarray(h, np.float64).transpose(2, 0, 1)
    cc = np.asarray(c, np.float64).transpose(2, 0, 1)
    f = hc.shape[0]
    e = np.maximum(_conv_same(x, p["encoder.weight"], p["encoder.bias"]), 0.0)
    pooled = e.reshape(f, height // 2, 2, width // 2, 2).max(axis=(2, 4))
    gates = _conv_same(np.concatenate([pooled, hc]), p["gates.weight"], p["gates.bias"])
    i, fg, g, o = np.split(gates, 4)
    c_new = _sigmoid(fg) * cc + _sigmoid(i) * np.tanh(g)
    h_new = _sigmoid(o) * np.tanh(c_new)
    # ConvTranspose 2x2 stride 2: out[o, 2y + a, 2x + b] = sum_c h[c, y, x] w[c, o, a, b].
    w_up = p["up.weight"]
    u = np.einsum("cyx,coab->oyaxb", h_new, w_up).reshape(w_up.shape[1], height, width)
    u += p["up.bias"][:, None, None]
    d = np.maximum(_conv_same(np.concatenate([u, e]), p["decoder.weight"], p["decoder.bias"]), 0)
    mask = _sigmoid(_conv_same(d, p["head.weight"], p["head.bias"]))[0]
    return mask, h_new.transpose(1, 2, 0), c_new.transpose(1, 2, 0)


def _zero_state(model: onnx.ModelProto, frame: np.ndarray) -> np.ndarray:
    filters = _initializers(model)["encoder.weight"].shape[0]
    return np.zeros((frame.shape[0] // 2, frame.shape[1] // 2, filters))


def run_video_reference(
    model: onnx.ModelProto, frames: list[np.ndarray], reset_every: int | None = None
) -> list[np.ndarray]:
    """Stream mode: step through ``frames`` from a zero state; the mask of each frame.

    ``reset_every``: if given, the state is zeroed before frames ``0, n, 2n, ...``.
    """
    masks = []
    h = c = _zero_state(model, frames[0])
    for t, frame in enumerate(frames):
        if reset_every is not None and t % reset_every == 0:
            h = c = _zero_state(model, frame)
        mask, h, c = convlstm_step_reference(model, frame, h, c)
        masks.append(mask)
    return masks


def window_reference(
    model: onnx.ModelProto, frames: list[np.ndarray], t: int, T: int
) -> np.ndarray:
    """Window mode: the mask of frame ``t`` after ``T`` steps from a zero state.

    The clip is ``frames[max(t - T + 1 + k, 0)]`` for ``k`` in ``0 .. T - 1``: for
    ``t < T - 1`` frame 0 repeated, then frames ``0 .. t``.
    """
    clip = [frames[max(t - T + 1 + k, 0)] for k in range(T)]
    return run_video_reference(model, clip)[-1]
