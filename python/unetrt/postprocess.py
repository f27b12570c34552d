"""Mask clean-up: small-object removal, hole filling, border clearing, instance labels.

An object is a connected region of foreground (mask != 0) pixels, connected through
edges and corners (8-connectivity). Holes are background regions that do not reach
the frame border, connected through edges only (4-connectivity): the dual of
8-connected foreground, so a ring that closes only diagonally still encloses a hole.

Steps run in a fixed order: fill holes, then remove small objects and objects touching
the border (both judged on the filled objects), then number the remaining objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .errors import ConfigError, OutputError

__all__ = ["PostProcess"]

# Objects are 8-connected; scipy's default structure (a cross) is used for holes.
OBJECT_STRUCTURE = np.ones((3, 3), dtype=bool)
MAX_LABELS = int(np.iinfo(np.uint16).max)


@dataclass(frozen=True)
class PostProcess:
    """How a predicted mask is cleaned up.

    Works on binary masks (bool, or integers such as uint8 0/255) and on class-index
    masks (0 = background, 1, 2, ... = classes). For class masks the steps act on the
    foreground (class > 0) as a whole and kept pixels keep their class; a filled hole
    takes the class of the nearest foreground pixel.

    Attributes:
        min_size: Remove objects with fewer than this many pixels (0 or 1: keep all).
        fill_holes: Fill background regions enclosed by an object.
        clear_border: Remove objects touching the frame border.
        label: Return instance labels (uint16: 0 background, 1..N objects numbered in
            raster order of their first pixel) instead of the mask. Only for binary
            masks: a class mask raises `ConfigError`, since numbering objects would
            drop their classes.
    """

    min_size: int = 0
    fill_holes: bool = False
    clear_border: bool = False
    label: bool = False

    def __post_init__(self) -> None:
        if (
            isinstance(self.min_size, bool)
            or not isinstance(self.min_size, int | np.integer)
            or self.min_size < 0
        ):
            raise ConfigError(
                f"min_size must be a whole number of pixels >= 0, got {self.min_size!r}"
            )
        for name in ("fill_holes", "clear_border", "label"):
            value = getattr(self, name)
            if not isinstance(value, bool | np.bool_):
                raise ConfigError(f"{name} must be true or false, got {value!r}")

    @property
    def active(self) -> bool:
        """Whether `apply` changes anything."""
        return self.min_size > 1 or self.fill_holes or self.clear_border or self.label

    def apply(self, mask: np.ndarray) -> np.ndarray:
        """Clean up one frame's mask.

        Args:
            mask: ``(H, W)`` bool or integer mask.

        Returns:
            With ``label``: uint16 instance labels. Otherwise a mask of the input's
            dtype (uint8 0/255 for a bool input) with the same values where kept. When
            nothing is to be done, the input itself (or its uint8 form) is returned.

        Raises:
            ValueError: If `mask` is not a 2D bool or integer array.
            ConfigError: If ``label`` is set and the mask holds several classes.
            OutputError: If ``label`` is set and there are more than 65535 objects.
        """
        if not isinstance(mask, np.ndarray) or mask.ndim != 2 or mask.dtype.kind not in "biu":
            got = (
                f"{mask.dtype} array of shape {mask.shape}"
                if isinstance(mask, np.ndarray)
                else type(mask).__name__
            )
            raise ValueError(f"mask must be a 2D bool or integer array, got {got}")
        values = mask.astype(np.uint8) * 255 if mask.dtype == bool else mask
        if not self.active:
            return values
        foreground = values != 0
        if self.label and foreground.any():
            classes = values[foreground]
            if classes.min() != classes.max():
                raise ConfigError(
                    "label needs a binary mask, but this mask holds classes "
                    f"{np.unique(classes).tolist()}"
                )

        if self.fill_holes:
            filled = ndimage.binary_fill_holes(foreground)
            holes = filled & ~foreground
            if holes.any():
                values = values.copy()
                values[holes] = _nearest_class(values, foreground)[holes]
                foreground = filled

        objects, count = ndimage.label(foreground, structure=OBJECT_STRUCTURE)
        drop = np.zeros(count + 1, dtype=bool)
        if self.min_size > 1:
            drop |= np.bincount(objects.ravel(), minlength=count + 1) < self.min_size
        if self.clear_border:
            edges = (objects[0], objects[-1], objects[:, 0], objects[:, -1])
            drop[np.concatenate(edges)] = True
        drop[0] = False  # background is not an object

        if self.label:
            kept = ~drop
            kept[0] = False
            if kept.sum() > MAX_LABELS:
                raise OutputError(
                    f"the mask has {kept.sum()} objects, more than the {MAX_LABELS} that "
                    "uint16 labels hold; raise min_size"
                )
            # Renumber the kept objects 1..N in their original (raster) order.
            renumber = (np.cumsum(kept) * kept).astype(np.uint16)
            return renumber[objects]
        if drop.any():
            values = np.where(drop[objects], 0, values).astype(values.dtype, copy=False)
        return values


def _nearest_class(values: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """The value of the nearest foreground pixel, for every pixel."""
    classes = values[foreground]
    if classes.min() == classes.max():
        return np.full_like(values, classes[0])
    nearest = ndimage.distance_transform_edt(
        ~foreground, return_distances=False, return_indices=True
    )
    return values[tuple(nearest)]
