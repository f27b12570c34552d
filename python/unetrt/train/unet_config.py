"""`UNetConfig`: what describes a U-Net or ConvLSTM-U-Net, without importing Keras.

The Keras models are built from it in `unetrt.train.models`; this module holds what a
training configuration, the exporter and the tests need without the train extra: the
configuration itself, its alignment and receptive field, and the seed model names.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, check_keys

DOWNSAMPLING = ("maxpool", "strided")
UPSAMPLING = ("transpose", "interpolation", "pixel_shuffle")
OUTPUTS = ("sigmoid", "softmax", "two_heads")
TEMPORAL = ("none", "convlstm")
CONVLSTM_POSITIONS = ("input", "encoder", "bottleneck")
#: Network families: the U-Net (and ConvLSTM-U-Net), the attention U-Net (Oktay et al.
#: 2018), UNet3+ (Huang et al. 2020), a ResNet34 encoder with a U-Net decoder (the
#: fastai DynamicUnet layout) and MultiResUNet (Ibtehaz and Rahman 2020).
ARCHITECTURES = ("unet", "attention_unet", "unet3plus", "resnet34_unet", "multires_unet")
#: Basic blocks per stage of the ResNet34 encoder.
RESNET34_BLOCKS = (3, 4, 6, 3)


@dataclass(frozen=True)
class UNetConfig:
    """The architecture of a U-Net or ConvLSTM-U-Net.

    Attributes:
        pools: Depth: the number of 2x downsamplings (input sizes must be multiples of
            ``2**pools``).
        filters: Filters of the first level; level ``p`` has ``filters * 2**p``.
        kernel_size: Odd spatial kernel size of every convolution.
        dilation: Dilation of the encoder convolutions, one int for all levels or one per
            level (``pools`` values). A level with dilation ``d > 1`` is the seed's dilated
            block: its two convolutions use ``d`` and ``2 * d``. The bottleneck and the
            decoder are never dilated.
        dropout: Dropout rate, one float for every level or a schedule of ``pools + 1``
            rates (encoder levels then bottleneck); decoder level ``p`` uses rate ``p``.
        batch_norm: Batch normalization after every convolution.
        activation: Keras activation of the hidden layers (``"relu"``, ``"elu"``, ...).
        downsampling: ``"maxpool"`` (2x2 max pooling) or ``"strided"`` (a stride-2
            convolution, the seed's ``*_fc`` models).
        upsampling: ``"transpose"`` (2x2 stride-2 transposed convolution),
            ``"interpolation"`` (bilinear 2x upsampling followed by a convolution) or
            ``"pixel_shuffle"`` (a 1x1 convolution to 4x the channels, ICNR-initialized,
            then depth-to-space: no checkerboard artifacts at the start of training).
        output: ``"sigmoid"`` (one foreground-probability channel), ``"softmax"``
            (``classes`` probability channels) or ``"two_heads"`` (two one-channel
            sigmoid outputs, ``"mask"`` and ``"target"``).
        classes: Number of classes, background included (2 for ``"sigmoid"`` and
            ``"two_heads"``).
        channels_in: Input channels per frame.
        temporal: ``"none"`` (frame model) or ``"convlstm"`` (clip model).
        convlstm_position: Where ConvLSTM layers replace the first convolution of a
            block: ``"input"`` (the first block only), ``"encoder"`` (every encoder
            block and the bottleneck, as the seed's ``UNetLSTM``) or ``"bottleneck"``.
        convlstm_residual: The ConvLSTM is added beside the block's first convolution
            instead of replacing it: ``conv1(x) + proj(convlstm(x))``, ``proj`` a 1x1
            convolution initialized to zero. Started from a frame model's weights, the
            ConvLSTM model then computes exactly the frame model, and training adds the
            temporal context to it.
        time_steps: Frames per clip (1 for frame models, at least 2 for ConvLSTM ones).
        kernel_initializer: Keras initializer of the convolution kernels.
        architecture: The network family (`ARCHITECTURES`). ``"unet"``: the U-Net
            above (frame or ConvLSTM). ``"attention_unet"``: the U-Net with an attention
            gate on every skip connection. ``"unet3plus"``: an encoder as the U-Net's and
            UNet3+'s full-scale decoder (every decoder level sees every encoder level
            and every deeper decoder level). ``"resnet34_unet"``: a ResNet34 encoder
            (7x7 stride-2 stem, 3x3 max pooling, stages of 3, 4, 6, 3 basic blocks with
            ``filters``, ``2 * filters``, ...) cut after ``pools`` downsamplings (5: the
            whole ResNet34), a middle block and a U-Net decoder. ``"multires_unet"``:
            MultiResUNet (MultiRes blocks, residual paths on the skip connections; batch
            norm always, no dropout). Only ``"unet"`` can be temporal.
        attention_filters: Channels inside the attention gates of level 0 (doubling per
            level); None: half the skip connection's channels.
        unet3plus_filters: Channels of each of UNet3+'s full-scale branches (a decoder
            level has ``(pools + 1) * unet3plus_filters``); None: ``filters``.
    """

    pools: int = 3
    filters: int = 16
    kernel_size: int = 3
    dilation: int | tuple[int, ...] = 1
    dropout: float | tuple[float, ...] = 0.0
    batch_norm: bool = False
    activation: str = "relu"
    downsampling: str = "maxpool"
    upsampling: str = "transpose"
    output: str = "sigmoid"
    classes: int = 2
    channels_in: int = 1
    temporal: str = "none"
    convlstm_position: str = "bottleneck"
    convlstm_residual: bool = False
    time_steps: int = 1
    kernel_initializer: str = "he_uniform"
    architecture: str = "unet"
    attention_filters: int | None = None
    unet3plus_filters: int | None = None

    def __post_init__(self) -> None:
        def positive_int(name: str, value: object) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"model {name} must be a positive integer, got {value!r}")

        def one_of(name: str, value: object, allowed: tuple[str, ...]) -> None:
            if value not in allowed:
                raise ConfigError(f"model {name} must be one of {allowed}, got {value!r}")

        for name in ("pools", "filters", "kernel_size", "classes", "channels_in", "time_steps"):
            positive_int(name, getattr(self, name))
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"model kernel_size must be odd, got {self.kernel_size}")
        one_of("downsampling", self.downsampling, DOWNSAMPLING)
        one_of("upsampling", self.upsampling, UPSAMPLING)
        one_of("output", self.output, OUTPUTS)
        one_of("temporal", self.temporal, TEMPORAL)
        one_of("convlstm_position", self.convlstm_position, CONVLSTM_POSITIONS)
        if not isinstance(self.batch_norm, bool):
            raise ConfigError(f"model batch_norm must be true or false, got {self.batch_norm!r}")
        for d in self.dilations:
            positive_int("dilation", d)
        for rate in self.dropouts:
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
                raise ConfigError(f"model dropout rates must be in [0, 1), got {self.dropout!r}")
        if self.output == "softmax" and self.classes < 2:
            raise ConfigError(f"a softmax model needs at least 2 classes, got {self.classes}")
        if self.output != "softmax" and self.classes != 2:
            raise ConfigError(
                f"a {self.output!r} model segments foreground from background (classes=2), "
                f"got classes={self.classes}; use output='softmax' for more classes"
            )
        if self.temporal == "none" and self.time_steps != 1:
            raise ConfigError(
                f"a frame model (temporal='none') has time_steps=1, got {self.time_steps}"
            )
        if self.temporal == "convlstm" and self.time_steps < 2:
            raise ConfigError(
                f"a ConvLSTM model needs time_steps >= 2 frames per clip, got {self.time_steps}"
            )
        one_of("architecture", self.architecture, ARCHITECTURES)
        for name in ("attention_filters", "unet3plus_filters"):
            if getattr(self, name) is not None:
                positive_int(name, getattr(self, name))
        self._check_architecture()
        _check_keras_names(self.activation, self.kernel_initializer)

    def _check_architecture(self) -> None:
        """The fields each architecture has (an unused field set is an error, not ignored)."""
        arch = self.architecture
        if arch != "unet" and self.temporal != "none":
            raise ConfigError(f"only the 'unet' architecture can be temporal, not {arch!r}")
        if arch != "attention_unet" and self.attention_filters is not None:
            raise ConfigError(f"attention_filters is for 'attention_unet', not {arch!r}")
        if arch != "unet3plus" and self.unet3plus_filters is not None:
            raise ConfigError(f"unet3plus_filters is for 'unet3plus', not {arch!r}")
        if arch in ("resnet34_unet", "multires_unet") and any(self.dropouts):
            raise ConfigError(f"{arch} has no dropout; set model_dropout to 0")
        if arch in ("resnet34_unet", "multires_unet") and set(self.dilations) != {1}:
            raise ConfigError(f"{arch} has no dilated convolutions, got dilation={self.dilation}")
        if arch != "resnet34_unet":
            return
        if not 2 <= self.pools <= len(RESNET34_BLOCKS) + 1:
            raise ConfigError(
                f"resnet34_unet has 2 to {len(RESNET34_BLOCKS) + 1} downsamplings (5: the "
                f"whole ResNet34), got pools={self.pools}"
            )
        fixed = {"kernel_size": 3, "downsampling": "maxpool"}
        for name, value in fixed.items():
            if getattr(self, name) != value:
                raise ConfigError(
                    f"resnet34_unet has ResNet34's own {name} ({value!r}), "
                    f"got {getattr(self, name)!r}"
                )

    @property
    def dilations(self) -> tuple[int, ...]:
        """Dilation of each encoder level (``pools`` values)."""
        if isinstance(self.dilation, tuple):
            if len(self.dilation) != self.pools:
                raise ConfigError(
                    f"model dilation needs one value per level ({self.pools}), "
                    f"got {self.dilation!r}"
                )
            return self.dilation
        return (self.dilation,) * self.pools

    @property
    def dropouts(self) -> tuple[float, ...]:
        """Dropout rate of each level, bottleneck last (``pools + 1`` values)."""
        if isinstance(self.dropout, tuple):
            if len(self.dropout) != self.pools + 1:
                raise ConfigError(
                    f"model dropout schedule needs pools + 1 = {self.pools + 1} rates "
                    f"(levels, then bottleneck), got {self.dropout!r}"
                )
            return self.dropout
        return (self.dropout,) * (self.pools + 1)

    def replace(self, **changes: Any) -> UNetConfig:
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        """Build from the plain-JSON form, rejecting unknown keys.

        Raises:
            ConfigError: On unknown keys or invalid values.
        """
        known = (f.name for f in dataclasses.fields(cls))
        data = check_keys(data, "model config", known, ConfigError)
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
        }
        return cls(**values)


def alignment(cfg: UNetConfig) -> int:
    """Input height and width must be multiples of this: ``2**pools`` (every
    architecture downsamples ``pools`` times by 2)."""
    return int(2**cfg.pools)


def _level_dilations(d: int) -> tuple[int, int]:
    return (d, 2 * d) if d > 1 else (1, 1)


def _convlstm_at(cfg: UNetConfig, level: int) -> bool:
    """Whether the first convolution of `level` (``pools`` = bottleneck) is a ConvLSTM."""
    if cfg.temporal != "convlstm":
        return False
    if cfg.convlstm_position == "input":
        return level == 0
    if cfg.convlstm_position == "bottleneck":
        return level == cfg.pools
    return True


def receptive_field(cfg: UNetConfig, steps: int | None = None) -> int:
    """Receptive-field radius in pixels: how far an input pixel can move an output pixel.

    An output pixel depends only on input pixels at most this far away along each axis,
    so a tile with this much context on every side gives the same output as the whole
    frame (the export's ``halo``). The bound follows the deepest path (encoder,
    bottleneck, decoder); a ConvLSTM layer run over ``steps`` frames reaches ``steps``
    times as far as a convolution, since its state is convolved once per frame.

    Args:
        cfg: The model architecture.
        steps: Frames the ConvLSTM layers run over: ``cfg.time_steps`` (the clip model,
            the default), or 1 for one step of the step model, whose field over all its
            inputs (frame and states) is the frame path's: the state's recurrent
            convolution has the size and level of the input convolution it sits beside.

    Returns:
        The radius in input pixels.

    Raises:
        ConfigError: For architectures other than ``"unet"``: their field is bounded from
            the exported graph (`unetrt.onnxgraph.receptive_field`), not in closed form.
    """
    if cfg.architecture != "unet":
        raise ConfigError(
            f"the {cfg.architecture!r} architecture has no closed-form receptive field; "
            f"it is bounded from the exported ONNX graph"
        )
    r = (cfg.kernel_size - 1) // 2
    k = cfg.kernel_size
    steps = cfg.time_steps if steps is None else steps

    def block(level: int, dilations: tuple[int, int]) -> int:
        first = r * dilations[0]
        if _convlstm_at(cfg, level):
            # Beside the first convolution (residual) or instead of it.
            first = max(r * steps, first) if cfg.convlstm_residual else r * steps
        return first + r * dilations[1]

    if cfg.downsampling == "maxpool":
        down = 1  # a pooled pixel stands for its 2x2 window
    else:
        # TensorFlow "same" padding of a stride-2 conv on an even size: k - 2 pixels in
        # all, the smaller half before; the window spans [2i - before, 2i - before + k - 1].
        before = max(k - 2, 0) // 2
        down = max(k - 1 - before, 1 + before)
    # A transposed convolution or a pixel shuffle reads one coarse pixel per fine pixel;
    # bilinear upsampling reads both neighbours, and a convolution follows it.
    bilinear = cfg.upsampling == "interpolation"
    up_coarse = 1 if bilinear else 0
    up_fine = r if bilinear else 0

    radius = block(cfg.pools, (1, 1))
    for level in reversed(range(cfg.pools)):
        encoder = block(level, _level_dilations(cfg.dilations[level]))
        decoder = 2 * r + up_fine
        radius = encoder + down + 2 * (radius + up_coarse) + decoder
    return radius


def _check_keras_names(activation: str, initializer: str) -> None:
    """Check Keras names where Keras is installed (it knows them; without the train extra
    nothing can be built from them anyway, so the rest of the checks still run)."""
    if importlib.util.find_spec("keras") is None:
        return
    import keras

    try:
        keras.activations.get(activation)
    except ValueError as exc:
        raise ConfigError(f"unknown model activation {activation!r}") from exc
    try:
        keras.initializers.get(initializer)
    except ValueError as exc:
        raise ConfigError(f"unknown model kernel_initializer {initializer!r}") from exc


def _seed_ramp(pools: int, rate: float) -> tuple[float, ...]:
    # categorical_unet_*: rate * (p + 1) at level p; the bottleneck reused the last
    # level's rate * pools (a leaked loop variable).
    return tuple(rate * (p + 1) for p in range(pools)) + (rate * pools,)


def _seed_unet_schedule(pools: int, rate: float) -> tuple[float, ...]:
    # unet / categorical_unet: 1, 1, 2, 2 times the rate at levels 0-3, 3 times at the
    # bottleneck (their depth was fixed at 4; deeper levels continue the pattern).
    return tuple(rate * (1 + p // 2) for p in range(pools)) + (rate * (1 + pools // 2),)


def _constant_schedule(pools: int, rate: float) -> tuple[float, ...]:
    return (rate,) * (pools + 1)


def _seed_lstm_schedule(pools: int, rate: float) -> tuple[float, ...]:
    # UNetLSTM: rate * p at encoder level p, (pools - 1) * rate at the bottleneck.
    return tuple(rate * p for p in range(pools)) + (rate * (pools - 1),)


_SEED_PRESETS: dict[str, tuple[dict[str, Any], Callable[[int, float], tuple[float, ...]]]] = {
    "unet": (
        {"pools": 4, "upsampling": "interpolation", "output": "sigmoid"},
        _seed_unet_schedule,
    ),
    "categorical_unet": (
        {"pools": 4, "upsampling": "interpolation", "output": "softmax"},
        _seed_unet_schedule,
    ),
    "categorical_unet_transpose": ({"pools": 3, "output": "softmax"}, _seed_ramp),
    "categorical_unet_fc": (
        {"pools": 3, "downsampling": "strided", "output": "softmax"},
        _seed_ramp,
    ),
    "categorical_unet_fc_dil": (
        {"pools": 3, "downsampling": "strided", "dilation": 2, "output": "softmax"},
        _seed_ramp,
    ),
    "lstm_unet": (
        {
            "pools": 3,
            "upsampling": "interpolation",
            "output": "softmax",
            "temporal": "convlstm",
            "convlstm_position": "encoder",
            "time_steps": 5,
        },
        _seed_lstm_schedule,
    ),
    # Not seed models: the other architectures of the projects unetrt grew from.
    "attention_unet": ({"pools": 4, "architecture": "attention_unet"}, _constant_schedule),
    "unet3plus": (
        {"pools": 4, "upsampling": "interpolation", "architecture": "unet3plus"},
        _constant_schedule,
    ),
    "resnet34_unet": (
        {"pools": 5, "upsampling": "pixel_shuffle", "architecture": "resnet34_unet"},
        _constant_schedule,
    ),
    "multires_unet": ({"pools": 4, "architecture": "multires_unet"}, _constant_schedule),
}

SEED_MODEL_NAMES: tuple[str, ...] = tuple(_SEED_PRESETS)
"""Model names (``cnn_name``) that `config_from_seed_name` accepts: the seed suite's, then
``attention_unet``, ``unet3plus`` and ``resnet34_unet``."""


def config_from_seed_name(name: str, **overrides: Any) -> UNetConfig:
    """The `UNetConfig` closest to a model of the seed suite.

    ``unet`` and ``categorical_unet`` are the seed's fixed 4-level U-Nets (nearest
    upsampling without a convolution there, bilinear plus a convolution here), with one
    sigmoid channel or two softmax classes. ``categorical_unet_transpose`` uses
    transposed convolutions, ``categorical_unet_fc`` also strided-convolution
    downsampling, ``categorical_unet_fc_dil`` also dilated encoder blocks (the seed's
    extra first convolution before them is left out). ``lstm_unet`` is the seed's
    ``UNetLSTM``: ConvLSTM layers in every encoder block and the bottleneck, 5-frame
    clips. The seed's ``"model_dropout"`` grows with depth; a float ``dropout`` override
    is spread over the levels the same way. ``attention_unet`` and ``unet3plus`` (4
    levels), ``resnet34_unet`` (the whole ResNet34: 5 downsamplings, pixel-shuffle
    upsampling) and ``multires_unet`` (4 levels) are the other architectures
    (`ARCHITECTURES`); their dropout is the same at every level.

    Args:
        name: A seed model name (see `SEED_MODEL_NAMES`).
        **overrides: `UNetConfig` fields to change, e.g. ``filters=32, dropout=0.1``.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: On an unknown name, an unknown field, or an invalid value.
    """
    if name not in _SEED_PRESETS:
        raise ConfigError(
            f"unknown seed model name {name!r}; valid names: {', '.join(SEED_MODEL_NAMES)}"
        )
    known = {f.name for f in dataclasses.fields(UNetConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(
            f"unknown model fields {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
        )
    preset, schedule = _SEED_PRESETS[name]
    values = {**preset, **overrides}
    rate = values.get("dropout", 0.0)
    if isinstance(rate, (int, float)) and not isinstance(rate, bool):
        values["dropout"] = schedule(values["pools"], float(rate))
    return UNetConfig(**values)
