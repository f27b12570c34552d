"""The training configuration: one JSON object, validated once.

Key names follow the seed suite (E. Gómez-de-Mariscal et al.,
github.com/esgomezm/microscopy-dl-suite-tf) so its configuration files load, plus our
own keys for data layout, validation, augmentation and reproducibility. Every key is
documented in ``docs/training-config.md``. Where we differ from the seed, on purpose:

- Unknown or misspelled keys are errors (the seed turned any JSON key into an
  attribute and silently ignored what it did not read); the closest valid key is
  suggested. Seed keys that only matter to its inference, TensorBoard or models we do
  not have are accepted with a warning naming them (`IGNORED_SEED_KEYS`).
- Keys the seed read but then overrode are honoured: ``model_pools`` for ``unet``
  (fixed at 4 there), ``datagen_sampling_pdf`` for validation patches (fixed at 5000),
  the augmentation ranges (hard-coded there), ``newinfer_normalization`` (documented,
  but the code read ``normalization``; both are accepted here).
- Seed strings ``"None"``, ``"True"`` and ``"False"`` mean null, true and false (the
  seed tested ``"False"`` as a non-empty, hence true, string).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..channels import ChannelCode, parse_codes
from ..errors import ConfigError
from ..normalize import Normalization
from .augment import AugmentConfig
from .names import DATA_LAYOUTS, TARGETS
from .sampling import PatchSampler

if TYPE_CHECKING:
    from .losses import SegmentationLoss
    from .unet_config import UNetConfig

VAL_MODES = ("frames", "patches")
LR_SCHEDULES = ("plateau", "cosine")
#: Steps per epoch at least, when ``train_steps_per_epoch`` is not set: with a handful of
#: annotated frames one pass over them is a few steps, too few to judge an epoch by.
MIN_STEPS_PER_EPOCH = 16
#: Keys a built-in model's weights fix (``train_pretrained_weights: "default"``): taken
#: from the model when a configuration leaves them out, refused when it contradicts them.
PRETRAINED_KEYS = (
    "cnn_name", "model_n_filters", "model_pools", "model_kernel_size", "model_dilation_rate",
    "model_activation", "batch_norm", "upsampling", "downsampling", "convlstm_position",
    "time_steps", "model_lossfunction", "newinfer_normalization", "newinfer_uneven_illumination",
)  # fmt: skip
#: The architecture fields a ConvLSTM model adds to a frame model (`UNetConfig`).
TEMPORAL_FIELDS = ("temporal", "convlstm_position", "convlstm_residual", "time_steps")
#: A key starting with this is a comment (`unetrt train --write-config` writes them).
COMMENT_PREFIX = "//"

#: Seed keys with another name here: seed key -> our key.
ALIASES = {
    "OUTPUTPATH": "output_dir",
    "TRAINPATH": "data_train_images",
    "VALPATH": "data_val_images",
    "model_time_windows": "time_steps",
    "normalization": "newinfer_normalization",
}

#: Seed keys accepted and ignored (with a warning), and why.
IGNORED_SEED_KEYS = {
    "TESTPATH": "testing is `unetrt segment` / `unetrt evaluate`",
    "PATH2VIDEOS": "testing is `unetrt segment` / `unetrt evaluate`",
    "newinfer_data": "inference is `unetrt segment`",
    "newinfer_output_folder_name": "inference is `unetrt segment`",
    "newinfer_epoch_process_test": "inference is `unetrt segment`",
    "callbacks_tb_update_freq": "unetrt training writes no TensorBoard logs",
    "callbacks_save_best_only": "unetrt training decides which checkpoints it keeps",
    "model_metrics": "unetrt training chooses its metrics",
    "model_mobile_alpha": "MobileNet models are not supported",
    "train_load_from_frozen": "MobileNet models are not supported",
    "model_loss_tips": "tip-detection models are not supported",
    "datagen_tips_factor": "tip-detection models are not supported",
    "datagen_sigma": "tip-detection models are not supported",
}

_BINARY_LOSSES = ("binary_crossentropy", "dice", "bce_dice", "weighted_bce", "weighted_bce_dice")
_WEIGHTED_LOSSES = ("weighted_bce", "weighted_bce_dice")
_SEED_STRINGS = {"none": None, "true": True, "false": False}
#: cnn_name spellings of the seed: "None" meant its plain U-Net; its README says
#: "unet_lstm" for the model its code calls "lstm" (here "lstm_unet").
_SEED_MODEL_SPELLINGS = {"None": "unet", "unet_lstm": "lstm_unet"}
_NULLABLE_SEED_KEYS = (
    "train_pretrained_weights",
    "model_seed_initializer",
    "train_seed_initializer",
    "newinfer_padding",
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; see ``docs/training-config.md`` for each key.

    Build it with `load_config`. Paths are strings, made absolute relative to the
    configuration file when loaded from one.
    """

    # data (ours)
    data_train_images: str
    data_train_masks: str | None = None
    data_format: str = "folders"
    data_val_images: str | None = None
    data_val_masks: str | None = None
    data_val_fraction: float = 0.0
    data_val_mode: str = "frames"
    data_exclude_frames: tuple[int, ...] | str = ()
    data_channels: tuple[Any, ...] | None = None
    output_dir: str = "unetrt-run"
    seed: int = 0
    # model (seed)
    cnn_name: str = "unet"
    model_n_filters: int = 16
    model_pools: int = 3
    model_kernel_size: int = 3
    model_dilation_rate: int | None = None
    model_dropout: float = 0.0
    model_activation: str = "relu"
    model_last_activation: str | None = None
    model_padding: str = "same"
    model_kernel_initializer: str = "he_uniform"
    model_lossfunction: str = "binary_crossentropy"
    model_category_weights: tuple[float, ...] | None = None
    model_lr: float = 1e-4
    model_seed_initializer: int | None = None
    # model (ours)
    batch_norm: bool = False
    upsampling: str | None = None
    downsampling: str | None = None
    convlstm_position: str | None = None
    convlstm_residual: bool = False
    time_steps: int | None = None
    model_attention_filters: int | None = None
    model_unet3plus_filters: int | None = None
    model_encoder_weights: str | None = None
    model_loss_params: dict[str, Any] = field(default_factory=dict)
    # training (seed)
    train_max_epochs: int = 100
    train_pretrained_weights: str | None = None
    train_seed_initializer: int | None = None
    callbacks_save_freq: str | int = "epoch"
    callbacks_patience: int = 10
    model_train_decoder_only: bool = False
    # training (ours)
    train_steps_per_epoch: int | None = None
    train_max_minutes: float | None = None
    train_lr_schedule: str = "plateau"
    train_warmup_steps: int = 0
    callbacks_min_steps: int = 0
    # data generation (seed)
    datagen_patch_batch: int = 1
    datagen_batch_size: int = 4
    datagen_dim_size: tuple[int, int] = (256, 256)
    datagen_sampling_pdf: float = 1.0
    datagen_type: str = "segmentation"
    # data generation (ours)
    datagen_foreground_probability: float | None = None
    datagen_contour_width: int = 2
    datagen_border_weights: bool = False
    datagen_border_w0: float = 10.0
    datagen_border_sigma: float = 5.0
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)
    # normalization and inference (seed)
    newinfer_normalization: str | dict[str, Any] = "mean"
    newinfer_uneven_illumination: bool | float = False
    newinfer_padding: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        _check_types(self)
        _check_values(self)
        if self.time_steps is None:
            object.__setattr__(self, "time_steps", 5 if self.is_clip_model else 1)
        _check_consistency(self)

    # ------------------------------------------------------------------ derived
    @property
    def is_clip_model(self) -> bool:
        """Whether the model reads clips of ``time_steps`` frames (a ConvLSTM model)."""
        return "lstm" in self.cnn_name

    @property
    def builtin_weights(self) -> str | None:
        """The built-in model whose weights training starts from, if any."""
        from ..models import BUILTIN_WEIGHTS

        name = self.train_pretrained_weights
        return name if name in BUILTIN_WEIGHTS and not Path(name).exists() else None

    def steps_per_epoch(self, frames: int) -> int:
        """Batches per epoch for `frames` annotated training frames: the configured
        number, or one pass over the frames but at least `MIN_STEPS_PER_EPOCH`."""
        if self.train_steps_per_epoch is not None:
            return self.train_steps_per_epoch
        return max(math.ceil(frames / self.datagen_batch_size), MIN_STEPS_PER_EPOCH)

    @property
    def channel_codes(self) -> tuple[ChannelCode, ...]:
        """The parsed ``data_channels`` (empty: grey frames as they are)."""
        return parse_codes(self.data_channels)

    @property
    def alignment(self) -> int:
        """Frame sizes the model accepts are multiples of this (``2**model_pools``)."""
        return 2**self.model_pools

    @property
    def data_seed(self) -> int:
        """Seed of patch sampling and augmentation (``train_seed_initializer`` or ``seed``)."""
        return self.seed if self.train_seed_initializer is None else self.train_seed_initializer

    @property
    def weights_seed(self) -> int:
        """Seed of the weight initialization (``model_seed_initializer`` or ``seed``)."""
        return self.seed if self.model_seed_initializer is None else self.model_seed_initializer

    @property
    def loss_name(self) -> str:
        """The canonical loss name (seed spellings such as ``sparse_cce`` resolved)."""
        loss = self.loss()
        return "two_heads" if isinstance(loss, dict) else loss.loss

    @property
    def target_encoding(self) -> str:
        """How batches encode the target for the loss (one of `unetrt.train.names.ENCODINGS`).

        ``"mask"``: foreground (batch, H, W, 1), plus the border weight map as a second
        channel with ``datagen_border_weights``; ``"sparse"``: class ids (batch, H, W,
        1); ``"one_hot"``: (batch, H, W, classes); ``"two_heads"``: ``{"mask":
        foreground, "target": contours}``.
        """
        name = self.loss_name
        if name in _BINARY_LOSSES:
            return "mask"
        if name == "sparse_categorical_crossentropy":
            return "sparse"
        return "one_hot" if name == "categorical_crossentropy" else "two_heads"

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names, background first (as in the model contract)."""
        if self.datagen_type == "contours" and self.target_encoding in ("sparse", "one_hot"):
            return ("background", "cell", "contour")
        return ("background", "foreground")

    @property
    def normalization(self) -> Normalization:
        """The intensity normalization shared by training and inference."""
        spec = self.newinfer_normalization
        if isinstance(spec, dict):
            base = Normalization.from_dict(spec)
        else:
            base = Normalization(method=spec.lower())
        illumination = self.newinfer_uneven_illumination
        if illumination is True:
            sigma: float | None = SEED_ILLUMINATION_SIGMA
        elif illumination is False:
            sigma = None
        else:
            sigma = float(illumination)
        if sigma is not None and base.illumination_sigma is not None:
            raise ConfigError(
                "illumination correction is set twice: newinfer_uneven_illumination and "
                "newinfer_normalization.illumination_sigma; keep one"
            )
        return base if sigma is None else dataclasses.replace(base, illumination_sigma=sigma)

    @property
    def halo(self) -> int | None:
        """Inference halo in pixels from ``newinfer_padding`` (None: from the model)."""
        return None if self.newinfer_padding is None else max(self.newinfer_padding)

    @property
    def sampler(self) -> PatchSampler:
        """The patch-centre sampler of ``datagen_sampling_pdf`` / ``..._probability``."""
        return PatchSampler(self.datagen_sampling_pdf, self.datagen_foreground_probability)

    # ------------------------------------------------------------------ conversions
    def model_config(self) -> UNetConfig:
        """The architecture: the seed preset of ``cnn_name`` with our keys applied.

        Raises:
            ConfigError: If the keys describe no valid model.
        """
        from .unet_config import SEED_MODEL_NAMES, config_from_seed_name

        if self.cnn_name not in SEED_MODEL_NAMES:
            close = difflib.get_close_matches(self.cnn_name, SEED_MODEL_NAMES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"config key 'cnn_name' must be one of {SEED_MODEL_NAMES}, "
                f"got {self.cnn_name!r}{hint}"
            )
        encoding = self.target_encoding
        output = {"mask": "sigmoid", "two_heads": "two_heads"}.get(encoding, "softmax")
        overrides: dict[str, Any] = {
            "filters": self.model_n_filters,
            "pools": self.model_pools,
            "kernel_size": self.model_kernel_size,
            "dropout": self.model_dropout,
            "activation": self.model_activation,
            "kernel_initializer": self.model_kernel_initializer,
            "batch_norm": self.batch_norm,
            "output": output,
            "classes": len(self.classes),
            "channels_in": len(self.channel_codes) or 1,
        }
        optional = {
            "dilation": self.model_dilation_rate,
            "upsampling": self.upsampling,
            "downsampling": self.downsampling,
            "convlstm_position": self.convlstm_position,
            "attention_filters": self.model_attention_filters,
            "unet3plus_filters": self.model_unet3plus_filters,
        }
        overrides.update({k: v for k, v in optional.items() if v is not None})
        if self.is_clip_model:
            overrides["time_steps"] = self.time_steps
            overrides["convlstm_residual"] = self.convlstm_residual
        return config_from_seed_name(self.cnn_name, **overrides)

    def loss(self) -> SegmentationLoss | dict[str, SegmentationLoss]:
        """The Keras loss of ``model_lossfunction`` with its parameters.

        ``model_category_weights`` become the class weights of a categorical loss, or
        the two head weights of ``multiple_output``.

        Raises:
            ConfigError: On an unknown loss or parameter.
        """
        from .losses import get_loss

        params = dict(self.model_loss_params)
        weights = self.model_category_weights
        if weights is not None:
            probe = get_loss(self.model_lossfunction)
            if isinstance(probe, dict):
                params["weights"] = weights
            elif probe.loss in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
                params["class_weights"] = weights
            else:
                raise ConfigError(
                    f"model_category_weights {list(weights)} need a categorical loss or "
                    f"multiple_output; model_lossfunction is {self.model_lossfunction!r}"
                )
        return get_loss(self.model_lossfunction, **params)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form with our key names (what `load_config` reads back)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, AugmentConfig):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


#: Sigma (pixels) of the seed's illumination correction: OpenCV's Gaussian blur with a
#: 501-pixel kernel and sigma 0 uses 0.3 * ((501 - 1) / 2 - 1) + 0.8.
SEED_ILLUMINATION_SIGMA = 75.5


# ---------------------------------------------------------------------- validation
def _fail(key: str, value: object, expected: str) -> ConfigError:
    return ConfigError(f"config key {key!r} must be {expected}, got {value!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_types(c: TrainConfig) -> None:
    strings = (
        "data_train_images", "data_format", "data_val_mode", "output_dir", "cnn_name",
        "model_activation", "model_padding", "model_kernel_initializer",
        "model_lossfunction", "datagen_type",
    )  # fmt: skip
    optional_strings = (
        "data_train_masks", "data_val_images", "data_val_masks", "model_last_activation",
        "upsampling", "downsampling", "convlstm_position", "train_pretrained_weights",
        "model_encoder_weights",
    )  # fmt: skip
    if not isinstance(c.train_lr_schedule, str):
        raise _fail("train_lr_schedule", c.train_lr_schedule, "a string")
    ints = (
        "seed", "model_n_filters", "model_pools", "model_kernel_size", "train_max_epochs",
        "callbacks_patience", "datagen_patch_batch", "datagen_batch_size",
        "datagen_contour_width", "train_warmup_steps", "callbacks_min_steps",
    )  # fmt: skip
    optional_ints = (
        "model_dilation_rate", "model_seed_initializer", "train_seed_initializer", "time_steps",
        "train_steps_per_epoch", "model_attention_filters", "model_unet3plus_filters",
    )  # fmt: skip
    numbers = (
        "data_val_fraction", "model_dropout", "model_lr", "datagen_sampling_pdf",
        "datagen_border_w0", "datagen_border_sigma",
    )  # fmt: skip
    for key in strings:
        if not isinstance(getattr(c, key), str):
            raise _fail(key, getattr(c, key), "a string")
    for key in optional_strings:
        if getattr(c, key) is not None and not isinstance(getattr(c, key), str):
            raise _fail(key, getattr(c, key), "a string or null")
    for key in ints:
        if not _is_int(getattr(c, key)):
            raise _fail(key, getattr(c, key), "an integer")
    for key in optional_ints:
        if getattr(c, key) is not None and not _is_int(getattr(c, key)):
            raise _fail(key, getattr(c, key), "an integer or null")
    for key in numbers:
        if not _is_number(getattr(c, key)):
            raise _fail(key, getattr(c, key), "a number")
    minutes = c.train_max_minutes
    if minutes is not None and not (_is_number(minutes) and minutes > 0):
        raise _fail("train_max_minutes", minutes, "a positive number of minutes or null")
    p = c.datagen_foreground_probability
    if p is not None and not _is_number(p):
        raise _fail("datagen_foreground_probability", p, "a number or null")
    for key in (
        "batch_norm",
        "datagen_border_weights",
        "model_train_decoder_only",
        "convlstm_residual",
    ):
        if not isinstance(getattr(c, key), bool):
            raise _fail(key, getattr(c, key), "true or false")
    frames = c.data_exclude_frames
    if not isinstance(frames, str) and not (
        isinstance(frames, tuple) and all(_is_int(f) and f >= 0 for f in frames)
    ):
        raise _fail("data_exclude_frames", frames, "a list of frame numbers or a folder of masks")
    size = c.datagen_dim_size
    if not (isinstance(size, tuple) and len(size) == 2 and all(_is_int(s) for s in size)):
        raise _fail("datagen_dim_size", size, "[rows, cols] (two integers)")
    weights = c.model_category_weights
    if weights is not None and not (
        isinstance(weights, tuple) and weights and all(_is_number(w) and w >= 0 for w in weights)
    ):
        raise _fail("model_category_weights", weights, "a list of non-negative numbers or null")
    if not isinstance(c.model_loss_params, dict):
        raise _fail("model_loss_params", c.model_loss_params, "a JSON object")
    if not isinstance(c.augmentation, AugmentConfig):
        raise _fail("augmentation", c.augmentation, "an augmentation object")
    save = c.callbacks_save_freq
    if save != "epoch" and not (isinstance(save, int) and not isinstance(save, bool) and save > 0):
        raise _fail("callbacks_save_freq", save, '"epoch" or a positive number of batches')
    norm = c.newinfer_normalization
    if not isinstance(norm, (str, dict)):
        raise _fail("newinfer_normalization", norm, "a method name or a normalization object")
    light = c.newinfer_uneven_illumination
    if not (isinstance(light, bool) or (_is_number(light) and light > 0)):
        raise _fail("newinfer_uneven_illumination", light, "true, false or a blur sigma in pixels")
    pad = c.newinfer_padding
    if pad is not None and not (
        isinstance(pad, tuple) and len(pad) == 2 and all(_is_int(v) and v >= 0 for v in pad)
    ):
        raise _fail("newinfer_padding", pad, "[rows, cols] (two integers >= 0) or null")


def _check_values(c: TrainConfig) -> None:
    def at_least(key: str, low: int) -> None:
        if getattr(c, key) < low:
            raise _fail(key, getattr(c, key), f">= {low}")

    for key in (
        "model_n_filters", "train_max_epochs", "callbacks_patience", "datagen_patch_batch",
        "datagen_batch_size", "datagen_contour_width",
    ):  # fmt: skip
        at_least(key, 1)
    if not 1 <= c.model_pools <= 8:
        raise _fail("model_pools", c.model_pools, "in [1, 8]")
    if c.model_kernel_size < 1 or c.model_kernel_size % 2 == 0:
        raise _fail("model_kernel_size", c.model_kernel_size, "an odd integer >= 1")
    if c.model_dilation_rate is not None:
        at_least("model_dilation_rate", 1)
    if c.time_steps is not None:
        at_least("time_steps", 1)
    if c.train_steps_per_epoch is not None:
        at_least("train_steps_per_epoch", 1)
    for key in ("train_warmup_steps", "callbacks_min_steps"):
        at_least(key, 0)
    if not 0.0 <= c.model_dropout < 1.0:
        raise _fail("model_dropout", c.model_dropout, "in [0, 1)")
    if not 0.0 < c.model_lr < 1.0:
        raise _fail("model_lr", c.model_lr, "in (0, 1)")
    for key in ("datagen_border_w0", "datagen_border_sigma"):
        if not getattr(c, key) > 0:
            raise _fail(key, getattr(c, key), "> 0")
    choices: dict[str, tuple[str, ...]] = {
        "data_format": DATA_LAYOUTS,
        "data_val_mode": VAL_MODES,
        "datagen_type": TARGETS,
        "model_padding": ("same",),
        "train_lr_schedule": LR_SCHEDULES,
    }
    for key, allowed in choices.items():
        if getattr(c, key) not in allowed:
            raise _fail(key, getattr(c, key), f"one of {allowed}")
    if c.model_last_activation not in (None, "sigmoid", "softmax"):
        raise _fail(
            "model_last_activation",
            c.model_last_activation,
            '"sigmoid" or "softmax" (the model must output probabilities) or null',
        )
    if any(s < 1 or s % c.alignment for s in c.datagen_dim_size):
        raise _fail(
            "datagen_dim_size",
            list(c.datagen_dim_size),
            f"positive multiples of 2**model_pools = {c.alignment}",
        )
    if c.datagen_foreground_probability is not None and c.datagen_sampling_pdf != 1.0:
        raise ConfigError(
            "set either datagen_sampling_pdf (the seed's foreground weight) or "
            "datagen_foreground_probability, not both"
        )
    PatchSampler(c.datagen_sampling_pdf, c.datagen_foreground_probability)  # validates
    if isinstance(c.newinfer_normalization, str):
        from ..normalize import METHODS

        if c.newinfer_normalization.lower() not in METHODS:
            raise _fail(
                "newinfer_normalization",
                c.newinfer_normalization,
                f"one of {METHODS} (any case) or a normalization object",
            )
    _ = c.normalization  # building it validates the normalization keys
    _ = c.channel_codes  # and parsing them the channel codes


def _check_consistency(c: TrainConfig) -> None:
    if c.is_clip_model and c.time_steps < 2:  # type: ignore[operator]
        raise _fail("time_steps", c.time_steps, f">= 2 for the ConvLSTM model {c.cnn_name!r}")
    if c.convlstm_residual and not c.is_clip_model:
        raise _fail(
            "convlstm_residual", True, "false for a frame model (it needs cnn_name 'lstm_unet')"
        )
    if not c.is_clip_model and c.time_steps != 1:
        raise ConfigError(
            f"time_steps {c.time_steps} needs a ConvLSTM model (cnn_name 'lstm_unet'); "
            f"{c.cnn_name!r} segments single frames"
        )
    encoding = c.target_encoding
    if c.datagen_type == "contours" and encoding == "mask":
        raise ConfigError(
            f"datagen_type 'contours' needs a categorical loss or multiple_output; "
            f"{c.model_lossfunction!r} learns a foreground mask"
        )
    if c.datagen_type != "contours" and encoding == "two_heads":
        raise ConfigError(
            "model_lossfunction 'multiple_output' learns a mask and the cell contours: "
            "set datagen_type to 'contours'"
        )
    if c.datagen_border_weights and c.loss_name not in _WEIGHTED_LOSSES:
        raise ConfigError(
            f"datagen_border_weights feeds a weight map to a weighted loss "
            f"({', '.join(_WEIGHTED_LOSSES)}); model_lossfunction is {c.model_lossfunction!r}"
        )
    expected = {"mask": "sigmoid", "two_heads": "sigmoid"}.get(encoding, "softmax")
    if c.model_last_activation not in (None, expected):
        raise ConfigError(
            f"model_last_activation {c.model_last_activation!r} does not fit "
            f"model_lossfunction {c.model_lossfunction!r}, which needs {expected!r}"
        )
    weights = c.model_category_weights
    expected_count = 2 if encoding == "two_heads" else len(c.classes)
    if weights is not None and len(weights) != expected_count:
        raise _fail(
            "model_category_weights", list(weights), f"{expected_count} numbers, background first"
        )
    if c.data_val_fraction and c.data_val_images is not None:
        raise ConfigError("set data_val_images or data_val_fraction, not both")
    if c.model_encoder_weights is not None and c.cnn_name != "resnet34_unet":
        raise _fail(
            "model_encoder_weights",
            c.model_encoder_weights,
            "null unless cnn_name is 'resnet34_unet'",
        )
    pretrained = (c.train_pretrained_weights, c.model_encoder_weights)
    if c.model_train_decoder_only and pretrained == (None, None):
        raise ConfigError(
            "model_train_decoder_only trains the decoder of a pretrained encoder: set "
            'train_pretrained_weights (e.g. "default") or model_encoder_weights'
        )
    if c.train_warmup_steps and c.train_lr_schedule != "cosine":
        raise ConfigError('train_warmup_steps goes with train_lr_schedule "cosine"')
    model = c.model_config()
    if c.builtin_weights is not None:
        _check_builtin_architecture(c, model)


def _check_builtin_architecture(c: TrainConfig, model: UNetConfig) -> None:
    """Refuse a configuration whose architecture or normalization differs from the
    built-in model it starts from, naming each difference."""
    from ..models import builtin_weights

    name = c.builtin_weights
    assert name is not None
    _, keys = builtin_weights(name)
    shipped = load_config({"data_train_images": ".", **keys})
    want = shipped.model_config()
    # A ConvLSTM model may start from a frame model: the layers they share are copied.
    free = {"dropout"}
    if model.temporal != "none" and want.temporal == "none":
        free |= set(TEMPORAL_FIELDS)
    differences = [
        f"{f.name} {getattr(model, f.name)!r} (the {name} model has {getattr(want, f.name)!r})"
        for f in dataclasses.fields(want)
        if f.name not in free and getattr(model, f.name) != getattr(want, f.name)
    ]
    if c.normalization != shipped.normalization:
        differences.append(
            f"normalization {c.normalization.to_dict()} (the {name} model has "
            f"{shipped.normalization.to_dict()})"
        )
    if differences:
        raise ConfigError(
            f"train_pretrained_weights {name!r} is a different model than the configuration "
            f"describes: {'; '.join(differences)}. Leave these keys out to take the {name} "
            "model's own"
        )


# ---------------------------------------------------------------------- loading
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_PATH_KEYS = (
    "data_train_images",
    "data_train_masks",
    "data_val_images",
    "data_val_masks",
    "output_dir",
    "train_pretrained_weights",
    "model_encoder_weights",
)


def _suggest(key: str) -> str:
    valid = [*_FIELDS, *ALIASES, *IGNORED_SEED_KEYS]
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(key.lower(), [v.lower() for v in valid], n=1)
        close = [v for v in valid if close and v.lower() == close[0]]
    return f"; did you mean {close[0]!r}?" if close else ""


def load_config(source: str | Path | dict[str, Any]) -> TrainConfig:
    """Load and validate a training configuration.

    Args:
        source: Path to a JSON file, or the parsed JSON object. Relative paths in a
            file are taken relative to the file's folder.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: On unreadable JSON, unknown keys (naming the closest valid key),
            wrong types or values (naming the key and the value), or keys that
            contradict each other.
    """
    base: Path | None = None
    if isinstance(source, dict):
        data = dict(source)
    else:
        path = Path(source)
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read training config {path}: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"training config {path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"training config {path} must hold a JSON object")
        base = path.resolve().parent
    values: dict[str, Any] = {}
    ignored = []
    for key, value in data.items():
        if key.startswith(COMMENT_PREFIX):
            continue
        if key in IGNORED_SEED_KEYS:
            ignored.append(f"{key} ({IGNORED_SEED_KEYS[key]})")
            continue
        name = ALIASES.get(key, key)
        if name not in _FIELDS:
            raise ConfigError(f"unknown config key {key!r}{_suggest(key)}")
        if name in values:
            raise ConfigError(f"config key {name!r} is given twice (also as {key!r})")
        values[name] = value
    if ignored:
        warnings.warn(
            "training config: ignoring seed-suite keys " + "; ".join(ignored),
            UserWarning,
            stacklevel=2,
        )
    if "data_train_images" not in values:
        raise ConfigError("config key 'data_train_images' (or the seed's 'TRAINPATH') is missing")
    if "TRAINPATH" in data and "data_format" not in values:
        values["data_format"] = "seed_csv"
    pretrained = values.get("train_pretrained_weights")
    if isinstance(pretrained, str) and _builtin(pretrained, base):
        from ..models import builtin_weights

        _, keys = builtin_weights(pretrained)  # its architecture, where the file is silent
        values = {**{k: v for k, v in keys.items() if k in PRETRAINED_KEYS}, **values}
    return TrainConfig(**{k: _convert(k, v, base) for k, v in values.items()})


def _builtin(name: str, base: Path | None) -> bool:
    """Whether ``train_pretrained_weights`` names a built-in model, not a file."""
    from ..models import BUILTIN_WEIGHTS

    return name in BUILTIN_WEIGHTS and not ((base or Path()) / name).exists()


def _convert(key: str, value: Any, base: Path | None) -> Any:
    """JSON value -> field value: seed strings, lists to tuples, paths made absolute."""
    seed_string = isinstance(value, str) and value.lower() in _SEED_STRINGS
    if seed_string and key in (*_NULLABLE_SEED_KEYS, "newinfer_uneven_illumination"):
        value = _SEED_STRINGS[value.lower()]
    if key == "model_train_decoder_only" and value in (0, 1) and not isinstance(value, bool):
        return bool(value)  # the seed writes 0 / 1
    if key == "cnn_name" and value in _SEED_MODEL_SPELLINGS:
        return _SEED_MODEL_SPELLINGS[value]
    if key == "augmentation":
        return AugmentConfig.from_dict(value)
    if key == "model_kernel_size" and isinstance(value, list):
        if len(value) != 2 or value[0] != value[1]:
            raise _fail(key, value, "one odd integer or [k, k] (square kernels only)")
        return value[0]
    if key == "data_exclude_frames" and isinstance(value, str) and base is not None:
        return str(base / value)
    if isinstance(value, list):
        return tuple(value)
    if key == "train_pretrained_weights" and isinstance(value, str) and _builtin(value, base):
        return value
    if key in _PATH_KEYS and isinstance(value, str) and base is not None:
        return str(base / value)
    return value
