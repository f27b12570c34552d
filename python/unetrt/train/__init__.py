"""Training: Keras models, losses and metrics (needs the ``train`` extra).

The names below are loaded on first use, so that importing a light submodule (such as
the training configuration) does not import TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "UNetConfig": "models",
    "ConvLSTM2DUnrolled": "models",
    "SEED_MODEL_NAMES": "models",
    "alignment": "models",
    "build_convlstm_unet": "models",
    "build_model": "models",
    "build_unet": "models",
    "config_from_seed_name": "models",
    "receptive_field": "models",
    "LOSS_NAMES": "losses",
    "SegmentationLoss": "losses",
    "get_loss": "losses",
    "unet_border_weights": "losses",
    "dice_coefficient": "metrics",
    "jaccard": "metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
