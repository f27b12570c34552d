"""Models shipped inside the package, by name.

``--model default`` (CLI), ``Segmenter(model="default")`` and ``unetrt info default`` find
them here; a name that is also an existing path means the path. See README.md beside
this file for what each model is for.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ModelError

#: Built-in model name -> (file in this folder, one line on what it is).
BUILTIN_MODELS: dict[str, tuple[str, str]] = {
    "default": (
        "default.onnx",
        "U-Net for phase-contrast cells (CTC U373; Dice 0.916 on its gold truth)",
    ),
    "default-temporal": (
        "default-temporal.onnx",
        "the default U-Net with a ConvLSTM at its bottleneck: a step model for videos "
        "(--temporal stream|window)",
    ),
}

#: The model used when none is given.
DEFAULT_MODEL = "default"

#: Built-in models that training can start from (``train_pretrained_weights: "default"``,
#: ``unetrt train --from default``): name -> (Keras weights, the training-configuration
#: keys of its architecture and normalization), both in this folder.
BUILTIN_WEIGHTS: dict[str, tuple[str, str]] = {
    "default": ("default.weights.h5", "default.train.json"),
}


def builtin_path(name: str) -> Path:
    """The file of a built-in model.

    Raises:
        ModelError: If ``name`` is not a built-in model or this build lacks its file.
    """
    if name not in BUILTIN_MODELS:
        raise ModelError(
            f"{name!r} is neither a model file nor a built-in model ({', '.join(BUILTIN_MODELS)})"
        )
    path = Path(__file__).resolve().parent / BUILTIN_MODELS[name][0]
    if not path.is_file():
        raise ModelError(f"built-in model {name!r} is not shipped with this unetrt build")
    return path


def resolve_model(model: str | os.PathLike[str] | None) -> Path:
    """The file a model option means: a path, a built-in name, or None (the default).

    A path that exists wins over a built-in name; a missing path that is not a built-in
    name is returned as is, so that loading it reports the missing file.
    """
    if model is None:
        return builtin_path(DEFAULT_MODEL)
    path = Path(model)
    if not path.exists() and isinstance(model, str) and model in BUILTIN_MODELS:
        return builtin_path(model)
    return path


def builtin_weights(name: str) -> tuple[Path, dict[str, Any]]:
    """The Keras weights of a built-in model and the configuration keys that build it.

    Raises:
        ModelError: If ``name`` has no shipped weights.
    """
    if name not in BUILTIN_WEIGHTS:
        raise ModelError(
            f"no built-in model {name!r} to start training from ({', '.join(BUILTIN_WEIGHTS)})"
        )
    folder = Path(__file__).resolve().parent
    weights, config = (folder / f for f in BUILTIN_WEIGHTS[name])
    if not weights.is_file() or not config.is_file():
        raise ModelError(f"the weights of built-in model {name!r} are not shipped with this build")
    return weights, json.loads(config.read_text())
