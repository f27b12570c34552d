"""unetrt: fast U-Net segmentation of microscopy videos.

The public names are imported on first use (PEP 562), so ``import unetrt`` and the
start of the ``unetrt`` command stay fast and do not load ONNX Runtime or SciPy
before they are needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._core import build_info

if TYPE_CHECKING:
    from .contract import ModelContract
    from .errors import UnetrtError
    from .normalize import Normalization
    from .pipeline import VideoStream
    from .postprocess import PostProcess
    from .segmenter import Segmenter, SegmenterSpec, SegmentSummary

__version__: str = build_info()["version"]

#: Public name -> the module that defines it.
_LAZY = {
    "ModelContract": "contract",
    "Normalization": "normalize",
    "PostProcess": "postprocess",
    "SegmentSummary": "segmenter",
    "Segmenter": "segmenter",
    "SegmenterSpec": "segmenter",
    "VideoStream": "pipeline",
    "UnetrtError": "errors",
}

__all__ = [
    "ModelContract",
    "Normalization",
    "PostProcess",
    "SegmentSummary",
    "Segmenter",
    "SegmenterSpec",
    "UnetrtError",
    "VideoStream",
    "__version__",
    "build_info",
]


if not TYPE_CHECKING:  # type checkers see the imports above instead

    def __getattr__(name: str) -> Any:
        if name not in _LAZY:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
