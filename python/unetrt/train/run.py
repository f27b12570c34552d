"""A training run: ``unetrt train CONFIG.json``.

`train` builds the model, the datasets and the loss a `TrainConfig` describes, fits
the model with Keras, and leaves in the output folder::

    model.keras        the trained model (the best epoch's weights, see below)
    config.json        the training configuration (what `unetrt export` reads)
    log.csv            loss and metrics per epoch (appended to when resuming)
    checkpoints/       epochNNNN.keras every ``callbacks_save_freq`` (the last 3 and the best kept)
    montages/          epochNNNN.png: image | truth | prediction on a few validation frames
    tensorboard/       TensorBoard logs, when the ``tensorboard`` package is installed

Early stopping watches the validation loss (the training loss without validation data)
with ``callbacks_patience`` and restores the best weights at the end, whether or not it
stopped the run; the learning rate is halved after ``max(1, patience // 2)`` epochs
without improvement. A run resumes from a checkpoint with its weights, optimizer state
and epoch (from the ``epochNNNN`` in its name); early stopping and the learning-rate
schedule start afresh.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np
from PIL import Image

from ..contract import CONFIG_NAME
from ..errors import ConfigError, ModelError, OutputError
from ..io import atomic_output
from .config import TrainConfig, load_config
from .data import FrameDataset, PatchDataset, build_datasets
from .metrics import dice_coefficient, jaccard
from .models import build_model

MODEL_NAME = "model.keras"
LOG_NAME = "log.csv"
SUMMARY_NAME = "summary.json"
#: Periodic checkpoints kept in ``checkpoints/`` (older ones are deleted).
KEEP_CHECKPOINTS = 3
#: Validation frames (or patches) shown in each epoch's montage.
MONTAGE_FRAMES = 3
#: Longest side of one montage panel, in pixels (larger frames are shrunk).
MONTAGE_PANEL = 384
_CHECKPOINT = re.compile(r"epoch(\d+)(-batch\d+)?\.keras$")


def train(
    config: TrainConfig | str | os.PathLike[str] | dict[str, Any],
    *,
    output_dir: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
    epochs: int | None = None,
    verbose: int | str = 2,
) -> Path:
    """Train a model as the configuration says and save it with its configuration.

    Args:
        config: A `TrainConfig`, the path of its JSON file, or the parsed JSON.
        output_dir: Folder for the model, logs and checkpoints (default: the
            configuration's ``output_dir``).
        resume: A checkpoint (``checkpoints/epochNNNN.keras``) to continue from.
        epochs: Overrides ``train_max_epochs`` (the total, counting resumed epochs).
        verbose: Keras ``fit`` verbosity: 0 silent, 1 progress bar, 2 one line per epoch.

    Returns:
        The path of the saved ``model.keras``.

    Raises:
        ConfigError: If the configuration is invalid or does not fit the data.
        InputError: If the data cannot be read.
        ModelError: If pretrained weights or the checkpoint cannot be loaded.
        OutputError: If the output folder cannot be written.
    """
    cfg, out = resolve_run(config, output_dir)
    if epochs is not None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
        cfg = dataclasses.replace(cfg, train_max_epochs=epochs)
    initial_epoch = _checkpoint_epoch(Path(resume)) if resume is not None else 0
    if initial_epoch >= cfg.train_max_epochs:
        raise ConfigError(
            f"checkpoint {resume} already has {initial_epoch} epochs; "
            f"train_max_epochs is {cfg.train_max_epochs} (raise it with --epochs)"
        )
    make_folders(out, out / "checkpoints", out / "montages")
    _write_text(out / CONFIG_NAME, json.dumps(cfg.to_dict(), indent=2) + "\n")

    model, train_set, val_set = prepare_model(cfg)
    train_set.epoch = initial_epoch  # a resumed run draws new patches, not epoch 0's again
    steps = len(train_set)
    compile_model(model, cfg, _learning_rate(cfg, steps))
    if resume is not None:
        _load_weights(model, Path(resume), optimizer=True)

    monitor = "val_loss" if val_set is not None else "loss"
    checkpoint_name = (
        "epoch{epoch:04d}.keras"
        if cfg.callbacks_save_freq == "epoch"
        else "epoch{epoch:04d}-batch{batch:06d}.keras"
    )
    callbacks = [
        keras.callbacks.ModelCheckpoint(
            str(out / "checkpoints" / checkpoint_name), save_freq=cfg.callbacks_save_freq
        ),
        _PruneCheckpoints(out / "checkpoints", KEEP_CHECKPOINTS, monitor),
        keras.callbacks.EarlyStopping(
            monitor=monitor,
            patience=cfg.callbacks_patience,
            restore_best_weights=True,
            start_from_epoch=math.ceil(cfg.callbacks_min_steps / steps),
        ),
        keras.callbacks.CSVLogger(str(out / LOG_NAME), append=resume is not None),
        _Montage(val_set if val_set is not None else train_set, out / "montages"),
    ]
    if cfg.train_lr_schedule == "plateau":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitor,
                factor=0.5,
                patience=max(1, cfg.callbacks_patience // 2),
                min_lr=cfg.model_lr / 100,
            )
        )
    if importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(keras.callbacks.TensorBoard(str(out / "tensorboard")))
    budget = _TimeBudget(cfg.train_max_minutes)
    callbacks.append(budget)
    history = model.fit(
        train_set,
        validation_data=val_set,
        epochs=cfg.train_max_epochs,
        initial_epoch=initial_epoch,
        callbacks=callbacks,
        verbose=verbose,
    )
    path = out / MODEL_NAME
    with atomic_output(path) as partial:
        model.save(partial)
    summary = _summary(history.history, budget, train_set.warnings)
    _write_text(out / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
    for line in summary["warnings"]:
        warnings.warn(f"training: {line}", UserWarning, stacklevel=2)
    return path


def resolve_run(
    config: TrainConfig | str | os.PathLike[str] | dict[str, Any],
    output_dir: str | os.PathLike[str] | None,
) -> tuple[TrainConfig, Path]:
    """The validated configuration of a run and its output folder (`output_dir`, else the
    configuration's), made absolute and stored as the configuration's ``output_dir``."""
    if isinstance(config, TrainConfig):
        cfg = config
    else:
        cfg = load_config(config if isinstance(config, dict) else Path(config))
    out = Path(output_dir if output_dir is not None else cfg.output_dir).resolve()
    return dataclasses.replace(cfg, output_dir=str(out)), out


def make_folders(*folders: Path) -> None:
    """Create the run's folders (and their parents).

    Raises:
        OutputError: If one cannot be created.
    """
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create {folder}: {exc.strerror or exc}") from exc


def prepare_model(cfg: TrainConfig) -> tuple[Any, PatchDataset, PatchDataset | FrameDataset | None]:
    """The model and the ``(train, validation)`` datasets of a run, seeded, with the
    pretrained weights or encoder loaded and the fixed layers frozen (see `_freeze`).

    Raises:
        ConfigError: If the configuration does not fit the data.
        InputError: If the data cannot be read.
        ModelError: If the pretrained weights cannot be loaded.
    """
    keras.utils.set_random_seed(cfg.weights_seed)
    train_set, val_set = build_datasets(cfg)
    model = build_model(cfg.model_config())
    if cfg.train_pretrained_weights is not None:
        _load_pretrained(model, cfg)
    if cfg.model_encoder_weights is not None:
        load_encoder(model, Path(cfg.model_encoder_weights))
    _freeze(model, cfg)
    return model, train_set, val_set


def compile_model(model: Any, cfg: TrainConfig, learning_rate: Any) -> None:
    """Compile with Adam at `learning_rate` (a number or a schedule), the configuration's
    loss, and Dice and Jaccard (of the mask head, for a two-head model)."""
    metrics: Any = [dice_coefficient, jaccard]
    if isinstance(model.output, (list, tuple)):  # two heads: score the mask
        metrics = {"mask": metrics}
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=cfg.loss(), metrics=metrics)


def _pretrained_path(cfg: TrainConfig) -> Path:
    """The weights file of ``train_pretrained_weights`` (a path or a built-in model)."""
    if cfg.builtin_weights is not None:
        from ..models import builtin_weights

        return builtin_weights(cfg.builtin_weights)[0]
    assert cfg.train_pretrained_weights is not None
    return Path(cfg.train_pretrained_weights)


def _load_pretrained(model: Any, cfg: TrainConfig) -> None:
    """Load ``train_pretrained_weights``. A ConvLSTM model started from a built-in frame
    model takes every layer the two share (same name and weight shapes: the encoder
    convolutions, the decoder, the head); its ConvLSTM layers start from their
    initializers."""
    path = _pretrained_path(cfg)
    if cfg.builtin_weights is None or not cfg.is_clip_model:
        _load_weights(model, path, optimizer=False)
        return
    from ..models import builtin_weights
    from .config import load_config

    _, keys = builtin_weights(cfg.builtin_weights)
    shipped = load_config({"data_train_images": ".", **keys})
    if shipped.is_clip_model:
        _load_weights(model, path, optimizer=False)
        return
    frame_model = build_model(shipped.model_config())
    _load_weights(frame_model, path, optimizer=False)
    ours = {layer.name: layer for layer in model.layers}
    for layer in frame_model.layers:
        target = ours.get(layer.name)
        weights = layer.get_weights()
        if target is None or not weights:
            continue
        if [w.shape for w in target.get_weights()] == [w.shape for w in weights]:
            target.set_weights(weights)


#: Name prefixes of the encoder layers (U-Nets: ``enc*``, ``down*``; ResNet34: ``stem_*``,
#: ``stage*``).
ENCODER_PREFIXES = ("enc", "down", "stem_", "stage")


def load_encoder(model: Any, path: Path) -> None:
    """Copy the encoder (`ENCODER_PREFIXES`) of the Keras model in `path` (``.keras``:
    e.g. a ResNet34 U-Net trained before, of any depth, decoder or output) into `model`,
    layer by layer by name. Nothing is downloaded.

    Raises:
        ModelError: If the file cannot be loaded, holds no encoder layer of `model`, or
            one of them has other weight shapes.
    """
    from ..export import load_keras_model

    source = {layer.name: layer for layer in load_keras_model(path).layers}
    copied = 0
    for layer in model.layers:
        found = source.get(layer.name)
        if not layer.name.startswith(ENCODER_PREFIXES) or found is None or not layer.weights:
            continue
        weights = found.get_weights()
        shapes = [w.shape for w in weights]
        if shapes != [tuple(w.shape) for w in layer.weights]:
            raise ModelError(
                f"model_encoder_weights {path}: layer {layer.name!r} has weights of shapes "
                f"{shapes}, this model's are {[tuple(w.shape) for w in layer.weights]} "
                f"(another model_n_filters?)"
            )
        layer.set_weights(weights)
        copied += 1
    if not copied:
        raise ModelError(f"model_encoder_weights {path} holds no encoder layer of this model")


def _freeze(model: Any, cfg: TrainConfig) -> None:
    """Layers that fine-tuning leaves as they are.

    - The batch-norm layers of a built-in model: its weights come from the ONNX export,
      where each batch norm is folded into the convolution before it, so only inference
      mode (moving statistics) reproduces the model; with a few frames per batch,
      batch statistics would be noise anyway.
    - With ``model_train_decoder_only``, the encoder (every layer named with one of
      `ENCODER_PREFIXES`): the decoder and the bottleneck learn, on the pretrained
      features.
    """
    for layer in model.layers:
        if cfg.builtin_weights is not None and isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
        if cfg.model_train_decoder_only and layer.name.startswith(ENCODER_PREFIXES):
            layer.trainable = False


def _learning_rate(cfg: TrainConfig, steps_per_epoch: int) -> Any:
    """``model_lr``, or for ``train_lr_schedule: "cosine"`` a linear warm-up over
    ``train_warmup_steps`` to it, then a cosine decay to 1 % of it over the run."""
    if cfg.train_lr_schedule == "plateau":
        return cfg.model_lr
    total = cfg.train_max_epochs * steps_per_epoch
    warmup = min(cfg.train_warmup_steps, total - 1)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=cfg.model_lr / 100 if warmup else cfg.model_lr,
        decay_steps=max(1, total - warmup),
        alpha=0.01,
        warmup_target=cfg.model_lr if warmup else None,
        warmup_steps=warmup,
    )


#: Validation Dice this far below training Dice at the best epoch is worth a warning,
#: once the run has had this many epochs and learned something (training Dice > 0.5).
DICE_GAP = 0.2
MIN_EPOCHS_JUDGED = 3


def _summary(
    history: dict[str, list[float]], budget: _TimeBudget, found: list[str]
) -> dict[str, Any]:
    """What the run did, for ``summary.json`` and the command's last lines."""
    warned = list(found)
    loss = history.get("val_loss") or history.get("loss") or []
    best = int(np.argmin(loss)) if loss else None
    train_dice = _at(history, "dice_coefficient", best)
    val_dice = _at(history, "val_dice_coefficient", best)
    judged = len(loss) >= MIN_EPOCHS_JUDGED and train_dice is not None and train_dice > 0.5
    if judged and val_dice is not None and val_dice < train_dice - DICE_GAP:  # type: ignore[operator]
        warned.append(
            f"validation Dice {val_dice:.3f} stays far below training Dice {train_dice:.3f}: "
            "check that the validation frames are normalized and labelled like the training "
            "frames (and, with batch norm, that batches are not too small)"
        )
    return {
        "epochs": len(loss),
        "steps": budget.steps,
        "minutes": round(budget.minutes, 2),
        "stopped_by_time": budget.stopped,
        "best_epoch": None if best is None else best + 1,
        "train_dice": train_dice,
        "val_dice": val_dice,
        "warnings": warned,
    }


def _at(history: dict[str, list[float]], key: str, index: int | None) -> float | None:
    values = history.get(key) or history.get(f"mask_{key}")
    if not values or index is None:
        return None
    return round(float(values[min(index, len(values) - 1)]), 4)


class _TimeBudget(keras.callbacks.Callback):
    """Stops the run cleanly after ``minutes`` of training (``train_max_minutes``): the
    current step ends, the best weights are restored and saved as usual."""

    def __init__(self, minutes: float | None) -> None:
        super().__init__()
        self.limit = None if minutes is None else minutes * 60.0
        self.steps = 0
        self.stopped = False
        self._start = time.monotonic()

    @property
    def minutes(self) -> float:
        return (time.monotonic() - self._start) / 60.0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._start = time.monotonic()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.steps += 1
        if self.limit is not None and time.monotonic() - self._start >= self.limit:
            self.stopped = True
            self.model.stop_training = True


def _checkpoint_epoch(path: Path) -> int:
    """Epochs completed when a checkpoint was written (a mid-epoch one restarts its epoch)."""
    if not path.is_file():
        raise ModelError(f"cannot resume from {path}: no such file")
    match = _CHECKPOINT.search(path.name)
    if match is None:
        raise ConfigError(
            f"cannot tell which epoch checkpoint {path.name} ends; `unetrt train` names "
            f"them epochNNNN.keras (NNNN epochs done)"
        )
    epoch = int(match.group(1))
    return epoch - 1 if match.group(2) else epoch


def _load_weights(model: Any, path: Path, *, optimizer: bool) -> None:
    if not path.is_file():
        raise ModelError(f"cannot load weights from {path}: no such file")
    if optimizer:  # a .keras checkpoint restores the optimizer state into a built optimizer
        model.optimizer.build(model.trainable_variables)
    try:
        model.load_weights(path)
    except Exception as exc:  # Keras raises ValueError, KeyError, OSError, ...
        raise ModelError(
            f"cannot load weights from {path} into this model "
            f"(is it the same architecture as the configuration?): {exc}"
        ) from exc


def _write_text(path: Path, text: str) -> None:
    with atomic_output(path) as partial:
        partial.write_text(text)


class _PruneCheckpoints(keras.callbacks.Callback):
    """Deletes all but the newest `keep` checkpoints and the best one after each epoch.

    The best checkpoint is the newest one at the end of the epoch with the lowest
    `monitor` value, so a run stopped by hand still has the weights early stopping
    would have restored.
    """

    def __init__(self, folder: Path, keep: int, monitor: str) -> None:
        super().__init__()
        self.folder = folder
        self.keep = keep
        self.monitor = monitor
        self.best_value = math.inf
        self.best_file: Path | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        files = sorted(p for p in self.folder.glob("epoch*.keras") if _CHECKPOINT.search(p.name))
        value = (logs or {}).get(self.monitor)
        if files and value is not None and value < self.best_value:
            self.best_value, self.best_file = value, files[-1]
        for old in files[: -self.keep]:
            if old != self.best_file:
                old.unlink(missing_ok=True)


class _Montage(keras.callbacks.Callback):
    """Writes ``montages/epochNNNN.png``: one row per frame, image | truth | prediction."""

    def __init__(self, dataset: Any, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self.images, self.truths = _montage_inputs(dataset)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        rows = []
        for x, truth in zip(self.images, self.truths, strict=True):
            prediction = self.model(x[None], training=False)
            if isinstance(prediction, (list, tuple)):
                prediction = prediction[0]
            frame = x[-1] if x.ndim == 4 else x  # the predicted (last) frame of a clip
            panels = [_grey(frame[..., 0]), _classes_image(truth), _classes_image(prediction[0])]
            rows.append(_shrink(np.concatenate(panels, axis=1), max(frame.shape[:2])))
        width = max(r.shape[1] for r in rows)
        montage = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]))) for r in rows])
        path = self.folder / f"epoch{epoch + 1:04d}.png"
        try:
            Image.fromarray(montage).save(path)
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _montage_inputs(dataset: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A few fixed inputs and truths (mask or class channels) from a dataset."""
    images: list[np.ndarray] = []
    truths: list[np.ndarray] = []
    batches = len(dataset)
    for index in np.unique(np.linspace(0, batches - 1, MONTAGE_FRAMES).astype(int)):
        x, y = dataset[int(index)]
        if isinstance(y, dict):  # two heads: show the mask
            y = y["mask"]
        for item in range(len(x)):
            images.append(np.asarray(x[item]))
            truth = np.asarray(y[item])
            # A mask target may carry a weight map as its second channel.
            truths.append(truth[..., :1] if truth.shape[-1] == 2 else truth)
            if len(images) == MONTAGE_FRAMES:
                return images, truths
    return images, truths


def _grey(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [0.5, 99.5])
    scaled = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    return (np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def _classes_image(values: Any) -> np.ndarray:
    """A probability channel as grey levels, or classes (argmax / one-hot / ids) spread to 0-255."""
    values = np.asarray(values, dtype=np.float32)
    if values.shape[-1] == 1:
        level = values[..., 0]
        if level.max() > 1.0:  # sparse class ids
            level = level / level.max()
    else:
        level = np.argmax(values, axis=-1) / (values.shape[-1] - 1)
    return (np.clip(level, 0.0, 1.0) * 255).astype(np.uint8)


def _shrink(row: np.ndarray, panel_side: int) -> np.ndarray:
    """Scale a montage row so that its panels are at most `MONTAGE_PANEL` pixels wide and high."""
    if panel_side <= MONTAGE_PANEL:
        return row
    scale = MONTAGE_PANEL / panel_side
    size = (round(row.shape[1] * scale), round(row.shape[0] * scale))
    return np.asarray(Image.fromarray(row).resize(size, Image.Resampling.BILINEAR))
