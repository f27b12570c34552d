"""Intensity normalization, identical for training and inference.

A normalization turns a raw frame (uint8, uint16 or float32) into float32 model input.
Every method is an affine map followed by an optional clip,
``y = clip(x * scale + offset, lo, hi)``; the statistics that fix ``scale`` and
``offset`` come from one frame (``scope="frame"``) or from a sample of the stack
(``scope="stack"``). The affine map itself runs in the C++ core, fused into tile
extraction at inference and called through `normalize_frame` in training, so both
sides compute the same numbers.

Typical use::

    frame, affine = prepare_frame(raw, spec)          # corrected frame + affine map
    batch = tiling.extract_tiles(frame, plan, affine=affine)   # inference
    x = normalize_frame(raw, spec)                    # training, same numbers
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import DTypeLike

from . import _core
from .errors import ConfigError, InputError, check_keys

METHODS = ("none", "range", "mean", "median", "percentile")
SCOPES = ("frame", "stack")


@dataclass(frozen=True)
class Normalization:
    """How raw intensities become model input.

    Attributes:
        method: ``"none"`` (cast to float32), ``"range"`` (divide by the dtype range:
            255 for uint8, 65535 for uint16, 1 for float), ``"mean"`` / ``"median"``
            (seed-compatible: scale by the dtype range, then ``x + 0.5 - mean``
            (or median), clipped to [0, 1]), ``"percentile"`` (map the ``low`` and
            ``high`` percentiles to 0 and 1, no clipping).
        scope: ``"frame"``: statistics of each frame; ``"stack"``: statistics of a
            sample of frames of the whole stack, fixed for the run.
        low: Lower percentile for ``"percentile"``.
        high: Upper percentile for ``"percentile"``.
        illumination_sigma: If set, correct uneven illumination first: subtract a
            Gaussian-blurred background of this sigma (pixels), add back the mean.
    """

    method: str = "mean"
    scope: str = "frame"
    low: float = 1.0
    high: float = 99.8
    illumination_sigma: float | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"normalization method must be one of {METHODS}, got {self.method!r}")
        if self.scope not in SCOPES:
            raise ConfigError(f"normalization scope must be one of {SCOPES}, got {self.scope!r}")
        if not 0.0 <= self.low < self.high <= 100.0:
            raise ConfigError(
                f"normalization percentiles must satisfy 0 <= low < high <= 100, "
                f"got low={self.low}, high={self.high}"
            )
        if self.illumination_sigma is not None and not self.illumination_sigma > 0:
            raise ConfigError(
                f"illumination_sigma must be a positive number of pixels, "
                f"got {self.illumination_sigma!r}"
            )

    @property
    def needs_stack_statistics(self) -> bool:
        """True when the map uses statistics of the whole stack (`stack_statistics`)."""
        return self.scope == "stack" and self.method not in ("none", "range")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        """Build from the plain-JSON form, rejecting unknown keys."""
        known = ("method", "scope", "low", "high", "illumination_sigma")
        return cls(**check_keys(data, "normalization", known, ConfigError))


class Affine(NamedTuple):
    """The intensity map ``y = clip(x * scale + offset, lo, hi)``.

    The core evaluates it in float32: ``x``, ``scale``, ``offset``, ``lo`` and ``hi``
    are rounded to float32, then the product and the sum are each rounded (no fused
    multiply-add), exactly as NumPy computes
    ``np.clip(x.astype(np.float32) * np.float32(scale) + np.float32(offset), lo, hi)``.
    ``lo = -inf`` and ``hi = +inf`` mean no clipping.
    """

    scale: float = 1.0
    offset: float = 0.0
    lo: float = -math.inf
    hi: float = math.inf


#: The map that only casts to float32 (method ``"none"``).
IDENTITY = Affine()


class Statistics(NamedTuple):
    """The intensity statistics a normalization needs, in raw intensity units.

    Attributes:
        center: Mean (method ``"mean"``) or median (``"median"``).
        low: The ``spec.low`` percentile (method ``"percentile"``).
        high: The ``spec.high`` percentile (method ``"percentile"``).
    """

    center: float = 0.0
    low: float = 0.0
    high: float = 0.0


_KERNEL_DTYPES = (np.uint8, np.uint16, np.float32)


def kernel_frame(frame: np.ndarray) -> np.ndarray:
    """Returns `frame` as a C-contiguous uint8, uint16 or float32 array for the core.

    Other integer and floating dtypes (int16, int32, float16, float64, ...) are
    converted to float32 (integers above 2**24 lose precision), big-endian data (as
    some TIFF files hold) to native byte order; bool and complex frames are rejected.

    Args:
        frame: A frame (H, W) or (H, W, C).

    Returns:
        The frame itself when it already fits, else a converted copy.

    Raises:
        InputError: If the dtype is not a real number type or the shape is not
            (H, W) or (H, W, C).
    """
    frame = np.asarray(frame)
    if frame.ndim not in (2, 3) or 0 in frame.shape:
        raise InputError(f"a frame must have shape (H, W) or (H, W, C), got {frame.shape}")
    if frame.dtype.type in _KERNEL_DTYPES:
        native = frame.dtype if frame.dtype.isnative else frame.dtype.newbyteorder("=")
        return np.ascontiguousarray(frame, dtype=native)
    if frame.dtype.kind not in "iuf":
        raise InputError(
            f"frame dtype {frame.dtype} is not supported; use uint8, uint16 or float32"
        )
    return np.ascontiguousarray(frame, dtype=np.float32)


def dtype_range(dtype: DTypeLike) -> float:
    """The full-scale intensity of a raw frame dtype.

    Args:
        dtype: The raw frame's dtype.

    Returns:
        255 for uint8, 65535 for uint16, the largest value for other integer types,
        1.0 for floating point.

    Raises:
        InputError: If the dtype is not an integer or floating point type.
    """
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        return float(np.iinfo(dt).max)
    if dt.kind == "f":
        return 1.0
    raise InputError(f"frame dtype {dt} has no intensity range; use uint8, uint16 or float32")


def correct_illumination(frame: np.ndarray, sigma: float) -> np.ndarray:
    """Flattens uneven illumination.

    Computes ``frame - gaussian_filter(frame, sigma) + mean(frame)`` in float32 (per
    channel for (H, W, C) frames, blurring only across H and W, with reflected
    borders): the slowly varying background is removed and the mean brightness kept,
    so the result stays in the raw intensity units (its normalization still uses the
    raw dtype's range). Cost grows with sigma (the kernel spans 8 sigma).

    Args:
        frame: A raw frame (H, W) or (H, W, C).
        sigma: Standard deviation of the background blur, in pixels.

    Returns:
        The corrected frame, float32, same shape.
    """
    from scipy.ndimage import gaussian_filter

    values = kernel_frame(frame).astype(np.float32, copy=False)
    sigmas = (sigma, sigma) if values.ndim == 2 else (sigma, sigma, 0.0)
    background = gaussian_filter(values, sigmas, mode="reflect")
    mean = values.mean(axis=(0, 1), dtype=np.float64).astype(np.float32)
    return values - background + mean


def frame_statistics(frame: np.ndarray, spec: Normalization) -> Statistics:
    """Statistics of one frame, as given.

    Pass the illumination-corrected frame when ``spec`` corrects illumination
    (`prepare_frame` does both). All channels are pooled: one map applies to the
    whole frame.

    Args:
        frame: A frame (H, W) or (H, W, C).
        spec: The normalization.

    Returns:
        The statistics ``spec.method`` needs (defaults for ``"none"`` / ``"range"``).
    """
    values = np.asarray(frame)
    if spec.method == "mean":
        return Statistics(center=float(values.mean(dtype=np.float64)))
    if spec.method == "median":
        return Statistics(center=float(np.median(values)))
    if spec.method == "percentile":
        low, high = percentiles(values, (spec.low, spec.high))
        return Statistics(low=low, high=high)
    return Statistics()


def percentiles(values: np.ndarray, q: Sequence[float]) -> tuple[float, ...]:
    """``np.percentile(values, q)`` (its default linear method), bit for bit.

    8- and 16-bit integer frames take their order statistics from a histogram (a
    counting pass instead of a partial sort: about 5x faster on a 520 x 696 frame);
    other dtypes go to NumPy.
    """
    flat = np.asarray(values).reshape(-1)
    if flat.dtype not in (np.uint8, np.uint16) or flat.size == 0:
        return tuple(float(v) for v in np.percentile(flat, q))
    cumulative = np.cumsum(np.bincount(flat))
    # NumPy's linear method: virtual index q/100 (n-1), then a lerp between the order
    # statistics on either side, computed from the nearer one.
    virtual = np.true_divide(np.asarray(q, np.float64), 100) * (flat.size - 1)
    below = np.floor(virtual)
    gamma = virtual - below
    lo = np.searchsorted(cumulative, below, side="right").astype(np.float64)
    hi = np.searchsorted(cumulative, np.minimum(below + 1, flat.size - 1), side="right")
    hi = hi.astype(np.float64)
    diff = hi - lo
    result = np.where(gamma >= 0.5, hi - diff * (1 - gamma), lo + diff * gamma)
    return tuple(float(v) for v in result)


def stack_statistics(
    frames: Iterable[np.ndarray],
    spec: Normalization,
    *,
    pixels_per_frame: int = 1 << 16,
    seed: int = 0,
) -> Statistics:
    """Statistics of a stack from a sample of its frames (``scope="stack"``).

    The mean is exact over the given frames; medians and percentiles come from a
    pooled random sample of ``pixels_per_frame`` pixels of each frame, so only one
    frame is held at a time. Pass a handful of frames spread over the stack, each
    illumination-corrected when ``spec`` corrects illumination.

    Args:
        frames: Frames sampled from the stack, each (H, W) or (H, W, C).
        spec: The normalization.
        pixels_per_frame: Pixels sampled per frame for medians and percentiles.
        seed: Seed of the pixel sampling, for reproducible statistics.

    Returns:
        The statistics ``spec.method`` needs.

    Raises:
        InputError: If ``frames`` is empty.
    """
    if spec.method in ("none", "range"):
        return Statistics()
    rng = np.random.default_rng(seed)
    total, count, samples = 0.0, 0, []
    for frame in frames:
        values = np.asarray(frame).reshape(-1)
        if spec.method == "mean":
            total += float(values.sum(dtype=np.float64))
            count += values.size
        elif values.size > pixels_per_frame:
            samples.append(values[rng.integers(0, values.size, pixels_per_frame)])
        else:
            samples.append(values)
    if not count and not samples:
        raise InputError("no frames to compute stack normalization statistics from")
    if spec.method == "mean":
        return Statistics(center=total / count)
    return frame_statistics(np.concatenate(samples), spec)


def affine_for(
    source: Statistics | np.ndarray, spec: Normalization, dtype: DTypeLike | None = None
) -> Affine:
    """The affine map of a normalization.

    ``none``: identity. ``range``: ``x / R``. ``mean`` / ``median``:
    ``x / R + 0.5 - m / R`` clipped to [0, 1], with ``m`` the mean or median of the raw
    values. ``percentile``: ``(x - p_low) / (p_high - p_low)``, unclipped; a flat
    frame (``p_high == p_low``) uses ``(x - p_low) / R``. ``R`` is `dtype_range` of
    the raw dtype, also when illumination correction made the frame float32.

    Args:
        source: Statistics (from `frame_statistics` / `stack_statistics`) or a frame
            to compute them from.
        spec: The normalization.
        dtype: The raw frame dtype (not float32 of an illumination-corrected frame);
            defaults to the frame's when ``source`` is a frame.

    Returns:
        The map to hand to `normalize_frame`'s kernel or `unetrt.tiling.extract_tiles`.

    Raises:
        ConfigError: If ``source`` is statistics and ``dtype`` is missing.
    """
    if isinstance(source, Statistics):
        stats = source
    else:
        frame = np.asarray(source)
        dtype = frame.dtype if dtype is None else dtype
        stats = frame_statistics(frame, spec)
    if spec.method == "none":
        return IDENTITY
    if dtype is None:
        raise ConfigError("affine_for needs the raw frame dtype along with statistics")
    full = dtype_range(dtype)
    if spec.method == "range":
        return Affine(scale=1.0 / full)
    if spec.method in ("mean", "median"):
        return Affine(scale=1.0 / full, offset=0.5 - stats.center / full, lo=0.0, hi=1.0)
    span = stats.high - stats.low
    scale = 1.0 / span if span > 0 else 1.0 / full
    return Affine(scale=scale, offset=-stats.low * scale)


#: Frames sampled (evenly spaced) for per-stack statistics, in training and inference.
STACK_SAMPLE_FRAMES = 16


def stack_sample_indices(n_frames: int) -> list[int]:
    """The evenly spaced frames whose statistics stand for a stack of ``n_frames``."""
    if n_frames < 1:
        raise InputError("cannot compute stack statistics from zero frames")
    picks = np.linspace(0, n_frames - 1, min(n_frames, STACK_SAMPLE_FRAMES)).round()
    return sorted({int(i) for i in picks})


def sample_statistics(
    read: Callable[[int], np.ndarray], n_frames: int, spec: Normalization
) -> Statistics:
    """Per-stack statistics from `stack_sample_indices` frames, read one at a time.

    Training and inference both call this, so a stack-scope model sees the same
    statistics in both. Frames are illumination-corrected first when ``spec`` says so.

    Args:
        read: Returns frame ``i`` of the stack.
        n_frames: Number of frames in the stack.
        spec: The normalization.

    Returns:
        The statistics for `affine_for` / `prepare_frame`.
    """

    def frames() -> Iterator[np.ndarray]:
        for i in stack_sample_indices(n_frames):
            values = kernel_frame(read(i))
            if spec.illumination_sigma is not None:
                values = correct_illumination(values, spec.illumination_sigma)
            yield values

    return stack_statistics(frames(), spec)


def prepare_frame(
    frame: np.ndarray, spec: Normalization, stats: Statistics | None = None
) -> tuple[np.ndarray, Affine]:
    """The frame the kernel reads and the affine map it applies.

    Applies illumination correction if asked, and computes frame statistics unless
    given. Inference hands the result to `unetrt.tiling.extract_tiles`; training
    calls `normalize_frame`, which uses the same two steps.

    Args:
        frame: A raw frame (H, W) or (H, W, C).
        spec: The normalization.
        stats: Statistics to use; required for ``scope="stack"`` (see
            `stack_statistics`), computed from this frame when None otherwise.

    Returns:
        ``(kernel_frame, affine)``: a C-contiguous uint8/uint16/float32 frame and its map.

    Raises:
        ConfigError: If ``scope="stack"`` and no statistics are given.
        InputError: If the frame's dtype or shape is unusable.
    """
    raw_dtype = np.asarray(frame).dtype
    values = kernel_frame(frame)
    if spec.illumination_sigma is not None:
        values = correct_illumination(values, spec.illumination_sigma)
    if stats is None:
        if spec.needs_stack_statistics:
            raise ConfigError(
                "stack-scope normalization needs statistics from stack_statistics(), got None"
            )
        stats = frame_statistics(values, spec)
    return values, affine_for(stats, spec, raw_dtype)


def normalize_frame(
    frame: np.ndarray,
    spec: Normalization,
    stats: Statistics | None = None,
    *,
    threads: int = 0,
) -> np.ndarray:
    """Normalizes a whole frame with the C++ kernel tile extraction uses.

    Args:
        frame: A raw frame (H, W) or (H, W, C).
        spec: The normalization.
        stats: Statistics to use (see `prepare_frame`).
        threads: Threads to use, 0 for all.

    Returns:
        The normalized frame, float32, same shape as ``frame``.
    """
    values, (scale, offset, lo, hi) = prepare_frame(frame, spec, stats)
    out = np.empty(values.shape, np.float32)
    _core.normalize(values, scale, offset, lo, hi, out, threads)
    return out
