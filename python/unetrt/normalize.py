"""Intensity normalization, identical for training and inference.

A normalization turns a raw frame (uint8, uint16 or float32) into float32 model input.
Every method is an affine map followed by an optional clip,
``y = clip(x * scale + offset, lo, hi)``; the statistics that fix ``scale`` and
``offset`` come from one frame (``scope="frame"``) or from a sample of the stack
(``scope="stack"``). The affine map itself runs in the C++ core, fused into tile
extraction at inference and called through `normalize_frame` in training, so both
sides compute the same numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .errors import ConfigError

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

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        """Build from the plain-JSON form, rejecting unknown keys."""
        if not isinstance(data, dict):
            raise ConfigError(f"normalization must be a JSON object, got {data!r}")
        unknown = sorted(set(data) - {"method", "scope", "low", "high", "illumination_sigma"})
        if unknown:
            raise ConfigError(f"normalization has unknown keys: {', '.join(unknown)}")
        return cls(**data)
