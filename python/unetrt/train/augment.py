"""Paired augmentation of training patches.

A patch is cut from a frame and warped in one resampling step: the geometric
transform (rotation, shear, zoom, elastic deformation, barrel or pincushion
distortion, shrinking) maps every output pixel to a
point of the *whole frame*, so rotated or zoomed patches see real image context
instead of padding; only points that fall outside the frame are mirrored (numpy's
``mode="reflect"``, as the inference tiler pads). A shrunk patch shows its whole
window, scaled down, inside padding. Flips and 90-degree turns are then
applied exactly with NumPy. The same geometry is applied to the image (linear
interpolation), the mask (nearest neighbour, so labels stay labels), the weight map
(linear) and every frame of a clip; intensity changes touch the image only.

Everything is drawn from the ``numpy.random.Generator`` passed in, so a seed fixes
the result. The shrink and the barrel and pincushion distortions draw nothing while
their probability is 0, so recipes written before they existed get the same patches.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import ConfigError, InputError

_PROBABILITIES = (
    "p_flip", "p_rot90", "p_affine", "p_elastic", "p_intensity", "p_noise",
    "p_shrink", "p_barrel", "p_pincushion",
)  # fmt: skip
_RANGES = ("zoom_range", "contrast_range", "gamma_range", "shrink_range")
#: Beyond this strength r' = r (1 - k r^2) stops growing with r inside the patch (at
#: r = 1/sqrt(3k)), so a pincushion would fold the corners back over the patch.
_PINCUSHION_LIMIT = 1.0 / 3.0


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations to draw, how often, and how strong.

    Attributes:
        p_flip: Probability of flipping a patch vertically, and (drawn again)
            horizontally.
        p_rot90: Probability of turning a patch by 90, 180 or 270 degrees.
        p_affine: Probability of a random rotation + shear + zoom.
        rotation_degrees: Rotation angle drawn uniformly in [-r, r] degrees.
        shear_degrees: Shear angle drawn uniformly in [-s, s] degrees.
        zoom_range: Scale factor drawn uniformly in [lo, hi]; above 1 magnifies.
        p_elastic: Probability of an elastic deformation.
        elastic_alpha: Largest displacement of the elastic deformation, in pixels.
        elastic_sigma: Smoothness (Gaussian sigma, pixels) of the displacement field.
        p_intensity: Probability of a random gamma, contrast and brightness change.
        brightness: Additive shift drawn uniformly in [-b, b] (model-input units).
        contrast_range: Contrast factor about the patch mean, drawn in [lo, hi].
        gamma_range: Gamma exponent (on the patch's own min..max range) in [lo, hi].
        p_noise: Probability of adding Gaussian noise.
        noise_std: Noise standard deviation drawn uniformly in [0, noise_std].
        p_shrink: Probability of shrinking the patch: its whole window is scaled
            down and placed at a random position inside padding (see `Geometry`).
        shrink_range: Shrink factor drawn uniformly in [lo, hi], 0 < lo <= hi <= 1.
        p_barrel: Probability of a barrel distortion.
        barrel_strength: Barrel coefficient k drawn uniformly in [0, strength].
        p_pincushion: Probability of a pincushion distortion (drawn independently of
            the barrel; when both are drawn their coefficients add).
        pincushion_strength: Pincushion coefficient drawn uniformly in
            [0, strength], strength < 1/3.
    """

    p_flip: float = 0.5
    p_rot90: float = 0.5
    p_affine: float = 0.5
    rotation_degrees: float = 30.0
    shear_degrees: float = 5.0
    zoom_range: tuple[float, float] = (0.9, 1.1)
    p_elastic: float = 0.0
    elastic_alpha: float = 8.0
    elastic_sigma: float = 12.0
    p_intensity: float = 0.5
    brightness: float = 0.1
    contrast_range: tuple[float, float] = (0.8, 1.25)
    gamma_range: tuple[float, float] = (0.8, 1.25)
    p_noise: float = 0.0
    noise_std: float = 0.03
    p_shrink: float = 0.0
    shrink_range: tuple[float, float] = (0.5, 0.9)
    p_barrel: float = 0.0
    barrel_strength: float = 0.2
    p_pincushion: float = 0.0
    pincushion_strength: float = 0.2

    def __post_init__(self) -> None:
        for name in _RANGES:
            value = getattr(self, name)
            if isinstance(value, list):  # JSON arrays arrive as lists
                object.__setattr__(self, name, tuple(value))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _RANGES:
                ok = isinstance(value, tuple) and len(value) == 2 and all(map(_is_number, value))
                expected = "[low, high] (two numbers)"
            else:
                ok, expected = _is_number(value), "a number"
            if not ok:
                raise ConfigError(f"augmentation {f.name} must be {expected}, got {value!r}")
        for name in _PROBABILITIES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(
                    f"augmentation {name} is a probability in [0, 1], got {getattr(self, name)!r}"
                )
        for name in (
            "rotation_degrees", "shear_degrees", "brightness", "noise_std", "barrel_strength"
        ):  # fmt: skip
            if getattr(self, name) < 0:
                raise ConfigError(f"augmentation {name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.shear_degrees < 60:
            raise ConfigError(
                f"augmentation shear_degrees must be in [0, 60), got {self.shear_degrees!r}"
            )
        for name in ("elastic_alpha", "elastic_sigma"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"augmentation {name} must be > 0, got {getattr(self, name)!r}")
        for name in _RANGES:
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ConfigError(
                    f"augmentation {name} must satisfy 0 < low <= high, got {[lo, hi]!r}"
                )
        if self.shrink_range[1] > 1:
            raise ConfigError(
                "augmentation shrink_range must satisfy 0 < low <= high <= 1 (a factor above"
                f" 1 would magnify; that is zoom_range), got {list(self.shrink_range)!r}"
            )
        if not 0 <= self.pincushion_strength < _PINCUSHION_LIMIT:
            raise ConfigError(
                "augmentation pincushion_strength must be in [0, 1/3) (a stronger pincushion"
                f" folds the patch corners over), got {self.pincushion_strength!r}"
            )

    @classmethod
    def off(cls) -> AugmentConfig:
        """No augmentation at all (validation patches)."""
        return cls(p_flip=0.0, p_rot90=0.0, p_affine=0.0, p_intensity=0.0)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | bool) -> AugmentConfig:
        """Build from a JSON object; ``true`` means the defaults, ``false`` means `off`.

        Raises:
            ConfigError: On unknown keys (with the closest valid key) or bad values.
        """
        if isinstance(data, bool):
            return cls() if data else cls.off()
        if not isinstance(data, dict):
            raise ConfigError(f"augmentation must be a JSON object or true/false, got {data!r}")
        known = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"unknown augmentation key {key!r}{hint}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        out = dataclasses.asdict(self)
        for name in _RANGES:
            out[name] = list(out[name])
        return out


@dataclass(frozen=True)
class Geometry:
    """One drawn geometric transform of a patch.

    An output pixel ``p`` (before the 90-degree turn) is traced back to the frame in
    this order: undo the shrink, ``u = (p - shrink_offset + 1/2) / shrink - 1/2`` (the
    window's pixel squares, scaled down, tile the patch from ``shrink_offset``); undo
    the radial distortion about the patch centre, ``d' = d (1 + k r^2)`` with ``d`` the
    offset of ``u`` from the centre and ``r = |d|`` in units of the half-diagonal
    ``hypot(rows, cols) / 2``; apply ``matrix``; add the elastic displacement at ``u``.
    With ``k > 0`` the source grows faster than the output radius (barrel: the edges
    are squeezed and the patch sees frame context beyond its window); with
    ``k < 0`` it grows slower (pincushion: the edges are stretched).

    Attributes:
        shape: Shape (rows, cols) of the patch before the 90-degree turn.
        matrix: 2x2 map from an output offset (about the patch centre) to a source
            offset; the identity when no rotation, shear or zoom was drawn.
        displacement: Elastic displacement (2, rows, cols) in source pixels, or None.
        flip_rows: Flip upside down.
        flip_cols: Flip left-right.
        quarter_turns: Counter-clockwise 90-degree turns (0..3), applied last.
        distortion: Radial coefficient k; 0 for none, > 0 barrel, < 0 pincushion.
        shrink: Shrink factor in (0, 1]; 1 for none.
        shrink_offset: Top-left pixel (row, col) of the shrunk window in the patch.
    """

    shape: tuple[int, int]
    matrix: np.ndarray
    displacement: np.ndarray | None
    flip_rows: bool
    flip_cols: bool
    quarter_turns: int
    distortion: float = 0.0
    shrink: float = 1.0
    shrink_offset: tuple[int, int] = (0, 0)

    @property
    def warps(self) -> bool:
        """Whether the patch must be resampled (anything but flips and turns)."""
        return (
            self.displacement is not None
            or not np.array_equal(self.matrix, np.eye(2))
            or self.distortion != 0
            or self.shrink != 1
        )

    def _window_grid(self) -> np.ndarray:
        """Window pixel (row, col) that every pre-turn patch pixel shows, (2, rows, cols);
        outside [-1/2, size - 1/2] in the padding of a shrunk patch."""
        grid = np.indices(self.shape, dtype=np.float64)
        if self.shrink != 1:
            offset = np.asarray(self.shrink_offset, dtype=np.float64)[:, None, None]
            grid = (grid - offset + 0.5) / self.shrink - 0.5
        return grid

    def content(self) -> np.ndarray | None:
        """Which pre-turn patch pixels show the frame, (rows, cols) bool; None if all do
        (nothing but a shrink leaves padding)."""
        if self.shrink == 1:
            return None
        grid = self._window_grid()
        size = np.asarray(self.shape, dtype=np.float64)[:, None, None]
        return np.all((grid >= -0.5) & (grid <= size - 0.5), axis=0)

    def source_coordinates(self, origin: tuple[int, int]) -> np.ndarray:
        """Source point (row, col) of every pre-turn patch pixel, shape (2, rows, cols)."""
        rows, cols = self.shape
        centre = np.array([(rows - 1) / 2.0, (cols - 1) / 2.0])
        grid = self._window_grid()
        offsets = grid - centre[:, None, None]
        if self.distortion != 0:
            r2 = np.sum(offsets**2, axis=0) / (math.hypot(rows, cols) / 2.0) ** 2
            offsets = offsets * (1.0 + self.distortion * r2)
        coords = np.einsum("ij,jhw->ihw", self.matrix, offsets)
        coords += (np.asarray(origin, dtype=np.float64) + centre)[:, None, None]
        if self.displacement is not None and self.shrink != 1:
            # the field lives on the window's pixels: read it where the shrink sends p
            coords += np.stack(
                [
                    ndimage.map_coordinates(d, grid, order=1, mode="nearest")
                    for d in self.displacement
                ]
            )
        elif self.displacement is not None:
            coords += self.displacement
        return coords


def sample_geometry(
    config: AugmentConfig, shape: tuple[int, int], rng: np.random.Generator
) -> Geometry:
    """Draw one geometric transform for an output patch of ``shape``.

    Args:
        config: Probabilities and ranges.
        shape: Output patch shape (rows, cols). An odd number of quarter turns swaps
            rows and cols, so the patch is cut with the swapped shape first.
        rng: Source of randomness.

    Returns:
        The drawn `Geometry`.
    """
    flip_rows = bool(rng.random() < config.p_flip)
    flip_cols = bool(rng.random() < config.p_flip)
    turns = int(rng.integers(1, 4)) if rng.random() < config.p_rot90 else 0
    pre_shape = (shape[1], shape[0]) if turns % 2 else (shape[0], shape[1])
    matrix = np.eye(2)
    if rng.random() < config.p_affine:
        angle = math.radians(rng.uniform(-config.rotation_degrees, config.rotation_degrees))
        shear = math.tan(math.radians(rng.uniform(-config.shear_degrees, config.shear_degrees)))
        zoom = rng.uniform(*config.zoom_range)
        cos, sin = math.cos(angle), math.sin(angle)
        rotation = np.array([[cos, -sin], [sin, cos]])
        # output offset -> source offset: undo the zoom, shear columns along rows, rotate
        matrix = rotation @ np.array([[1.0, 0.0], [shear, 1.0]]) / zoom
    displacement = None
    if rng.random() < config.p_elastic:
        field = rng.uniform(-1.0, 1.0, size=(2, *pre_shape))
        for axis in range(2):
            smooth = ndimage.gaussian_filter(field[axis], config.elastic_sigma, mode="mirror")
            peak = float(np.abs(smooth).max())
            field[axis] = smooth * (config.elastic_alpha / peak) if peak > 0 else 0.0
        displacement = field
    distortion = 0.0
    if _happens(config.p_barrel, rng):
        distortion += rng.uniform(0.0, config.barrel_strength)
    if _happens(config.p_pincushion, rng):
        distortion -= rng.uniform(0.0, config.pincushion_strength)
    shrink, shrink_offset = 1.0, (0, 0)
    if _happens(config.p_shrink, rng):
        # at least one pixel of the window stays in view
        shrink = max(rng.uniform(*config.shrink_range), 1.0 / min(pre_shape))
        # integer offsets so that the window's pixel squares stay on the patch's grid
        room = [math.floor(size * (1.0 - shrink) + 1e-9) for size in pre_shape]
        shrink_offset = (int(rng.integers(room[0] + 1)), int(rng.integers(room[1] + 1)))
    return Geometry(
        pre_shape, matrix, displacement, flip_rows, flip_cols, turns,
        distortion, shrink, shrink_offset,
    )  # fmt: skip


def _happens(probability: float, rng: np.random.Generator) -> bool:
    """Whether a later-added transform happens: one draw, none while it is off, so that
    the draws of the older transforms (and of the next patch) stay where they were."""
    return probability > 0 and bool(rng.random() < probability)


def _window_origin(
    frame_shape: tuple[int, ...], patch_shape: tuple[int, int], centre: tuple[int, int] | None
) -> tuple[int, int]:
    """Top-left corner of a patch around ``centre``, kept inside the frame if it fits."""
    origin = []
    for axis in range(2):
        size, extent = patch_shape[axis], frame_shape[axis]
        c = extent // 2 if centre is None else centre[axis]
        origin.append(min(max(c - size // 2, 0), max(extent - size, 0)))
    return origin[0], origin[1]


def _cut(plane: np.ndarray, geometry: Geometry, origin: tuple[int, int], order: int) -> np.ndarray:
    rows, cols = geometry.shape
    r0, c0 = origin
    if not geometry.warps and r0 + rows <= plane.shape[0] and c0 + cols <= plane.shape[1]:
        return plane[r0 : r0 + rows, c0 : c0 + cols].copy()
    coords = geometry.source_coordinates(origin)
    # scipy's "mirror" is numpy's "reflect": mirror about the edge pixel, no repeat
    return ndimage.map_coordinates(plane, coords, order=order, mode="mirror")


def _background_levels(
    planes: Sequence[np.ndarray], mask: np.ndarray | None, window: tuple[slice, slice]
) -> list[float]:
    """Each frame plane's background level, with which a shrunk image is padded.

    The median of the window's frame pixels that the mask calls background (0), else
    (a window inside a cell) of the whole frame's, else (no mask, or no background
    anywhere) of the window's pixels. Frame pixels, not resampled ones: interpolation
    brightens the background next to cells. That level suits every normalization:
    zero would be a dark frame the model never sees at inference (``mean`` and
    ``median`` normalization put the typical intensity at 0.5), and a reflection would
    show cells where the mask says background.
    """
    inside = [plane[window] for plane in planes]
    candidates = [(inside, np.ones(inside[0].shape, bool))]
    if mask is not None:
        candidates[:0] = [(inside, mask[window] == 0), (list(planes), mask == 0)]
    source, where = next((s, w) for s, w in candidates if w.any())
    return [float(np.median(plane[where])) for plane in source]


def _orient(patch: np.ndarray, geometry: Geometry) -> np.ndarray:
    if geometry.flip_rows:
        patch = patch[..., ::-1, :]
    if geometry.flip_cols:
        patch = patch[..., :, ::-1]
    if geometry.quarter_turns:
        patch = np.rot90(patch, geometry.quarter_turns, axes=(-2, -1))
    return np.ascontiguousarray(patch)


def adjust_intensity(
    image: np.ndarray, config: AugmentConfig, rng: np.random.Generator
) -> np.ndarray:
    """Random gamma, contrast, brightness and noise on a normalized image patch.

    Gamma, contrast and brightness are drawn once per patch (all frames of a clip
    get the same change); noise is drawn per pixel.

    Args:
        image: float32 patch (rows, cols) or clip (time, rows, cols).
        config: Probabilities and ranges.
        rng: Source of randomness.

    Returns:
        The changed float32 image (a new array).
    """
    out = np.array(image, dtype=np.float32, copy=True)
    if rng.random() < config.p_intensity:
        gamma = rng.uniform(*config.gamma_range)
        contrast = rng.uniform(*config.contrast_range)
        shift = rng.uniform(-config.brightness, config.brightness)
        lo, hi = float(out.min()), float(out.max())
        if hi > lo:
            out = lo + (hi - lo) * ((out - lo) / (hi - lo)) ** gamma
        mean = float(out.mean())
        out = (out - mean) * contrast + mean + shift
    if rng.random() < config.p_noise:
        sigma = rng.uniform(0.0, config.noise_std)
        out = out + rng.normal(0.0, sigma, size=out.shape).astype(np.float32)
    return out.astype(np.float32, copy=False)


def augment_patch(
    image: np.ndarray | Sequence[np.ndarray],
    mask: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    *,
    config: AugmentConfig,
    rng: np.random.Generator,
    shape: tuple[int, int] | None = None,
    centre: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Cut an augmented patch from a frame (or clip) and its mask and weight map.

    The patch window is centred on ``centre`` and moved inside the frame when the
    frame is large enough; the drawn geometry is applied about the window centre.

    Args:
        image: float32 frame (rows, cols), or a clip (time, rows, cols) given as one
            array or a sequence of frames; every frame of a clip gets the same geometry.
        mask: Integer label or class map (rows, cols); nearest-neighbour resampling.
        weights: Per-pixel loss weights (rows, cols); linear resampling.
        config: Probabilities and ranges (`AugmentConfig.off` for a plain crop).
        rng: Source of randomness.
        shape: Patch shape (rows, cols); the frame's shape if None.
        centre: Pixel (row, col) the patch is centred on; the frame centre if None.

    Returns:
        ``(image, mask, weights)`` patches, None where None was given.

    Raises:
        InputError: If the arrays' shapes do not agree.
    """
    planes = [image] if isinstance(image, np.ndarray) and image.ndim == 2 else list(image)
    frame_shape = planes[0].shape
    if any(p.shape != frame_shape for p in planes):
        raise InputError(f"the frames of a clip differ in shape: {[p.shape for p in planes]}")
    for name, other in (("mask", mask), ("weights", weights)):
        if other is not None and other.shape != frame_shape:
            raise InputError(
                f"{name} shape {other.shape} does not match the image frame shape {frame_shape}"
            )
    out_shape = (frame_shape[0], frame_shape[1]) if shape is None else shape
    geometry = sample_geometry(config, out_shape, rng)
    origin = _window_origin(frame_shape, geometry.shape, centre)
    cut = np.stack([_cut(p, geometry, origin, order=1) for p in planes])
    mask_cut = None if mask is None else _cut(mask, geometry, origin, order=0)
    weights_cut = None if weights is None else _cut(weights, geometry, origin, order=1)
    content = geometry.content()
    if content is not None:  # padding: background, with the neutral loss weight
        rows, cols = geometry.shape
        window = (slice(origin[0], origin[0] + rows), slice(origin[1], origin[1] + cols))
        cut[:, ~content] = np.array(_background_levels(planes, mask, window))[:, None]
        if mask_cut is not None:
            mask_cut[~content] = 0
        if weights_cut is not None:
            weights_cut[~content] = 1.0
    is_clip = not (isinstance(image, np.ndarray) and image.ndim == 2)
    image_out = _orient(cut if is_clip else cut[0], geometry)
    image_out = adjust_intensity(image_out, config, rng)
    mask_out = None if mask_cut is None else _orient(mask_cut, geometry)
    weights_out = None if weights_cut is None else _orient(weights_cut, geometry)
    return image_out, mask_out, weights_out
