"""Training without a configuration file: ``unetrt train --images DIR --masks DIR``.

`few_frames_config` makes the configuration a microscopist with a handful of annotated
frames needs (written to ``RUN/config.json`` by the run, so it can be edited and run
again); `write_template` writes a commented configuration file to start from
(``unetrt train --write-config FILE``). Imports without TensorFlow.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io import IMAGE_SUFFIXES, open_frames
from ..models import DEFAULT_MODEL, builtin_weights
from .config import COMMENT_PREFIX, PRETRAINED_KEYS

__all__ = ["FEW_FRAMES", "few_frames_config", "write_template"]

#: Patch side for few-frame training (smaller frames use the whole frame).
PATCH = 256

#: The settings for a handful of annotated frames: random patches, many per frame and
#: epoch (an epoch is a number of steps, not a pass over the frames), strong but
#: realistic augmentation, a warm-up then a cosine decay, no early stop before 300 steps.
FEW_FRAMES: dict[str, Any] = {
    "data_format": "folders",
    "model_lossfunction": "bce_dice",
    "datagen_batch_size": 2,
    "datagen_patch_batch": 2,
    "datagen_foreground_probability": 0.5,
    "train_steps_per_epoch": 25,
    "train_max_epochs": 40,
    "train_lr_schedule": "cosine",
    "train_warmup_steps": 25,
    "callbacks_patience": 10,
    "callbacks_min_steps": 300,
    "augmentation": {
        "p_flip": 0.5,
        "p_rot90": 0.5,
        "p_affine": 0.3,
        "p_elastic": 0.2,
        "p_intensity": 0.5,
        "p_noise": 0.2,
    },
}
#: Learning rates: fine-tuning a pretrained model moves less than training from scratch.
LR_FINE_TUNE, LR_SCRATCH = 3e-4, 1e-3


def few_frames_config(
    images: str | Path,
    masks: str | Path,
    output_dir: str | Path,
    *,
    start_from: str | None = None,
    minutes: float | None = None,
) -> dict[str, Any]:
    """The training configuration (JSON values) for a folder of a few annotated frames.

    The architecture and normalization are the default model's (so ``start_from=
    "default"`` fine-tunes it, and without it the same U-Net learns from scratch). One
    frame is held out for validation when there are at least three; with fewer there is
    no validation (a warning says so) and early stopping watches the training loss.

    Args:
        images: Folder of frames.
        masks: Folder of masks, one per frame (same numbers in the names).
        output_dir: The run's folder.
        start_from: Pretrained weights: a built-in model name or a weights file.
        minutes: Wall-clock budget (``train_max_minutes``).

    Raises:
        ConfigError: If a folder is missing or holds no images.
    """
    annotated = _count_images(Path(masks), "masks")
    _count_images(Path(images), "images")
    with open_frames(images) as frames:
        rows, cols = frames.frame_shape[:2]
    _, architecture = builtin_weights(DEFAULT_MODEL)
    align = 2 ** architecture["model_pools"]
    patch = [min(PATCH, side - side % align) for side in (rows, cols)]
    config: dict[str, Any] = {
        "data_train_images": str(Path(images).resolve()),
        "data_train_masks": str(Path(masks).resolve()),
        "output_dir": str(Path(output_dir).resolve()),
        **{k: architecture[k] for k in PRETRAINED_KEYS if k in architecture},
        **FEW_FRAMES,
        "datagen_dim_size": patch,
        "model_lr": LR_FINE_TUNE if start_from else LR_SCRATCH,
    }
    if start_from is not None:
        config["train_pretrained_weights"] = start_from
    if minutes is not None:
        config["train_max_minutes"] = minutes
    if annotated >= 3:
        config["data_val_fraction"] = 1 / annotated  # the last annotated frame
    else:
        warnings.warn(
            f"only {annotated} annotated frame(s): none is held out for validation, so "
            "nothing measures how well the model does on frames it has not seen",
            UserWarning,
            stacklevel=2,
        )
    return config


def _count_images(folder: Path, what: str) -> int:
    if not folder.is_dir():
        raise ConfigError(f"--{what} must be a folder of images; {folder} is not a folder")
    count = sum(1 for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if count == 0:
        raise ConfigError(f"the {what} folder {folder} holds no TIFF or PNG images")
    return count


def write_template(path: str | Path) -> None:
    """Write a training configuration to start from, each group of keys explained in a
    ``"// ..."`` comment entry (`load_config` skips them)."""
    _, architecture = builtin_weights(DEFAULT_MODEL)
    sections: list[tuple[str, dict[str, Any]]] = [
        ("data: folders of frames and of masks (same numbers in the file names); "
         "paths are relative to this file", {
            "data_train_images": "frames", "data_train_masks": "masks",
            "data_format": "folders", "data_val_fraction": 0.2, "output_dir": "run"}),
        ("model: the default model's U-Net; train_pretrained_weights 'default' fine-tunes "
         "it (then leave the architecture keys as they are), null trains from scratch", {
            **{k: architecture[k] for k in PRETRAINED_KEYS if k in architecture},
            "train_pretrained_weights": "default", "model_train_decoder_only": False}),
        ("schedule: steps per epoch do not depend on how many frames are annotated; "
         "train_max_minutes stops cleanly and keeps the best weights", {
            "model_lr": LR_FINE_TUNE, "train_lr_schedule": "cosine", "train_warmup_steps": 25,
            "train_steps_per_epoch": 25, "train_max_epochs": 40, "train_max_minutes": 10,
            "callbacks_patience": 10, "callbacks_min_steps": 300}),
        ("patches and augmentation (see docs/training-config.md)", {
            "datagen_dim_size": [PATCH, PATCH], "datagen_batch_size": 2,
            "datagen_patch_batch": 2, "datagen_foreground_probability": 0.5,
            "augmentation": FEW_FRAMES["augmentation"]}),
    ]  # fmt: skip
    document: dict[str, Any] = {}
    for i, (comment, keys) in enumerate(sections):
        document[f"{COMMENT_PREFIX}{i}"] = comment
        document.update(keys)
    Path(path).write_text(json.dumps(document, indent=2) + "\n")
