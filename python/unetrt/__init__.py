"""unetrt: fast U-Net segmentation of microscopy videos."""

from __future__ import annotations

from ._core import build_info
from .contract import ModelContract
from .errors import UnetrtError
from .normalize import Normalization
from .postprocess import PostProcess
from .segmenter import Segmenter, SegmentSummary

__version__: str = build_info()["version"]

__all__ = [
    "ModelContract",
    "Normalization",
    "PostProcess",
    "SegmentSummary",
    "Segmenter",
    "UnetrtError",
    "__version__",
    "build_info",
]
