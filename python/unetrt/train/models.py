"""Keras U-Net and ConvLSTM-U-Net models, described by one frozen `UNetConfig`.

A frame model takes ``(batch, H, W, channels_in)`` and returns, per pixel, a foreground
probability (``output="sigmoid"``), class probabilities (``"softmax"``) or a mask plus a
second one-channel target (``"two_heads"``). H and W may be any multiple of
``alignment(cfg) = 2**pools``. A ConvLSTM model takes a clip ``(batch, T, H, W, C)`` and
predicts its last frame.

The layouts follow the TensorFlow microscopy suite of E. Gómez-de-Mariscal et al.
(github.com/esgomezm/microscopy-dl-suite-tf), whose model names `config_from_seed_name`
accepts. Where we differ from it, on purpose:

- Every block is conv -> batch norm (optional) -> activation; dropout sits between the two
  convolutions of a block. The seed put batch norm after the activation and dropout at
  the end of a block.
- The seed's ``unet`` / ``categorical_unet`` called ``Concatenate([a, b])`` (a layer
  constructor, not a call) and cannot build in TensorFlow 2; we concatenate.
- Transposed convolutions keep the decoder level's width (``filters * 2**level``), as in
  Ronneberger et al.; the seed used twice that.
- The ConvLSTM layers are unrolled over the fixed clip length (`ConvLSTM2DUnrolled`), so
  the spatial size stays dynamic (Keras's ``ConvLSTM2D`` needs a static H, W) and the
  exported ONNX graph has no loop. The ConvLSTM model predicts the last frame of the
  clip from its features; the seed averaged the decoder output over time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
from keras import layers, ops

from ..errors import ConfigError, check_keys

DOWNSAMPLING = ("maxpool", "strided")
UPSAMPLING = ("transpose", "interpolation")
OUTPUTS = ("sigmoid", "softmax", "two_heads")
TEMPORAL = ("none", "convlstm")
CONVLSTM_POSITIONS = ("input", "encoder", "bottleneck")


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
        upsampling: ``"transpose"`` (2x2 stride-2 transposed convolution) or
            ``"interpolation"`` (bilinear 2x upsampling followed by a convolution).
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
        time_steps: Frames per clip (1 for frame models, at least 2 for ConvLSTM ones).
        kernel_initializer: Keras initializer of the convolution kernels.
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
    time_steps: int = 1
    kernel_initializer: str = "he_uniform"

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
        try:
            keras.activations.get(self.activation)
        except ValueError as exc:
            raise ConfigError(f"unknown model activation {self.activation!r}") from exc
        try:
            keras.initializers.get(self.kernel_initializer)
        except ValueError as exc:
            raise ConfigError(
                f"unknown model kernel_initializer {self.kernel_initializer!r}"
            ) from exc

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
    """Input height and width must be multiples of this: ``2**pools``."""
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


def receptive_field(cfg: UNetConfig) -> int:
    """Receptive-field radius in pixels: how far an input pixel can move an output pixel.

    An output pixel depends only on input pixels at most this far away along each axis,
    so a tile with this much context on every side gives the same output as the whole
    frame (the export's ``halo``). The bound follows the deepest path (encoder,
    bottleneck, decoder); a ConvLSTM layer reaches ``time_steps`` times as far as a
    convolution, since its state is convolved once per frame.

    Args:
        cfg: The model architecture.

    Returns:
        The radius in input pixels.
    """
    r = (cfg.kernel_size - 1) // 2
    k = cfg.kernel_size

    def block(level: int, dilations: tuple[int, int]) -> int:
        first = r * cfg.time_steps if _convlstm_at(cfg, level) else r * dilations[0]
        return first + r * dilations[1]

    if cfg.downsampling == "maxpool":
        down = 1  # a pooled pixel stands for its 2x2 window
    else:
        # TensorFlow "same" padding of a stride-2 conv on an even size: k - 2 pixels in
        # all, the smaller half before; the window spans [2i - before, 2i - before + k - 1].
        before = max(k - 2, 0) // 2
        down = max(k - 1 - before, 1 + before)
    up_coarse = 0 if cfg.upsampling == "transpose" else 1  # bilinear reads both neighbours
    up_fine = 0 if cfg.upsampling == "transpose" else r  # the convolution after it

    radius = block(cfg.pools, (1, 1))
    for level in reversed(range(cfg.pools)):
        encoder = block(level, _level_dilations(cfg.dilations[level]))
        decoder = 2 * r + up_fine
        radius = encoder + down + 2 * (radius + up_coarse) + decoder
    return radius


@keras.saving.register_keras_serializable(package="unetrt")
class ConvLSTM2DUnrolled(layers.Layer):
    """A ConvLSTM over a fixed number of frames, unrolled, with dynamic height and width.

    Same weights and arithmetic as ``keras.layers.ConvLSTM2D`` with ``padding="same"``
    (gates i, f, c, o; unit forget bias), so its weights can be copied to and from one.
    Input ``(batch, T, H, W, C)``; output ``(batch, T, H, W, filters)`` with
    ``return_sequences`` or the last state ``(batch, H, W, filters)``.
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int,
        return_sequences: bool = False,
        activation: str = "tanh",
        recurrent_activation: str = "sigmoid",
        kernel_initializer: str = "glorot_uniform",
        recurrent_initializer: str = "orthogonal",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.return_sequences = return_sequences
        self.activation = keras.activations.get(activation)
        self.recurrent_activation = keras.activations.get(recurrent_activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        k, f = self.kernel_size, self.filters
        self.kernel = self.add_weight(
            shape=(k, k, input_shape[-1], 4 * f), initializer=self.kernel_initializer, name="kernel"
        )
        self.recurrent_kernel = self.add_weight(
            shape=(k, k, f, 4 * f), initializer=self.recurrent_initializer, name="recurrent_kernel"
        )

        def unit_forget_bias(shape: tuple[int, ...], dtype: Any = None) -> Any:
            return ops.concatenate(
                [ops.zeros((f,), dtype), ops.ones((f,), dtype), ops.zeros((2 * f,), dtype)]
            )

        self.bias = self.add_weight(shape=(4 * f,), initializer=unit_forget_bias, name="bias")

    def call(self, clip: Any) -> Any:
        frames = clip.shape[1]
        x = ops.conv(clip[:, 0], self.kernel, padding="same") + self.bias
        # The first state is zero, so its recurrent term vanishes.
        i, f, c, o = ops.split(x, 4, axis=-1)
        cell = self.recurrent_activation(i) * self.activation(c)
        h = self.recurrent_activation(o) * self.activation(cell)
        states = [h]
        for t in range(1, frames):
            x = ops.conv(clip[:, t], self.kernel, padding="same") + self.bias
            x = x + ops.conv(h, self.recurrent_kernel, padding="same")
            i, f, c, o = ops.split(x, 4, axis=-1)
            cell = self.recurrent_activation(f) * cell + self.recurrent_activation(
                i
            ) * self.activation(c)
            h = self.recurrent_activation(o) * self.activation(cell)
            states.append(h)
        return ops.stack(states, axis=1) if self.return_sequences else h

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        b, t, hh, ww, _ = input_shape
        if self.return_sequences:
            return (b, t, hh, ww, self.filters)
        return (b, hh, ww, self.filters)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            return_sequences=self.return_sequences,
            activation=keras.activations.serialize(self.activation),
            recurrent_activation=keras.activations.serialize(self.recurrent_activation),
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            recurrent_initializer=keras.initializers.serialize(self.recurrent_initializer),
        )
        return config


@keras.saving.register_keras_serializable(package="unetrt")
class BilinearUpsampling2D(layers.Layer):
    """2x bilinear upsampling (half-pixel centres, edges clamped) for any height and width.

    Same output as ``keras.layers.UpSampling2D(2, interpolation="bilinear")``, whose
    resize cannot be traced with a dynamic height and width; built from slices, so the
    ONNX graph needs no Resize.
    """

    def call(self, x: Any) -> Any:
        return self._double(self._double(x, axis=1), axis=2)

    @staticmethod
    def _double(x: Any, axis: int) -> Any:
        def take(start: int | None, stop: int | None) -> Any:
            index = [slice(None)] * 4
            index[axis] = slice(start, stop)
            return x[tuple(index)]

        before = ops.concatenate([take(None, 1), take(None, -1)], axis=axis)  # x[i - 1]
        after = ops.concatenate([take(1, None), take(-1, None)], axis=axis)  # x[i + 1]
        even, odd = 0.75 * x + 0.25 * before, 0.75 * x + 0.25 * after
        pairs = ops.stack([even, odd], axis=axis + 1)
        shape = ops.shape(x)
        new_shape = [-1, shape[1], shape[2], x.shape[3]]
        new_shape[axis] = shape[axis] * 2
        return ops.reshape(pairs, new_shape)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        b, h, w, c = input_shape
        return (b, None if h is None else 2 * h, None if w is None else 2 * w, c)


# A feature map flows through the builder as a list: one tensor per frame of the clip in a
# ConvLSTM model's encoder (each layer applied to every frame with shared weights), one
# tensor otherwise.
Frames = list[Any]


class _Builder:
    def __init__(self, cfg: UNetConfig) -> None:
        self.cfg = cfg

    def per_frame(self, layer: Callable[[Any], Any], x: Frames) -> Frames:
        return [layer(frame) for frame in x]

    def conv(
        self, x: Frames, filters: int, name: str, dilation: int = 1, strides: int = 1
    ) -> Frames:
        cfg = self.cfg
        x = self.per_frame(
            layers.Conv2D(
                filters,
                cfg.kernel_size,
                strides=strides,
                dilation_rate=dilation,
                padding="same",
                use_bias=not cfg.batch_norm,
                kernel_initializer=cfg.kernel_initializer,
                name=name,
            ),
            x,
        )
        if cfg.batch_norm:
            x = self.per_frame(layers.BatchNormalization(name=f"{name}_bn"), x)
        return self.per_frame(layers.Activation(cfg.activation, name=f"{name}_act"), x)

    def convlstm(self, x: Frames, filters: int, name: str, last_only: bool) -> Frames:
        layer = ConvLSTM2DUnrolled(
            filters, self.cfg.kernel_size, return_sequences=not last_only, name=name
        )
        y = layer(ops.stack(x, axis=1))
        if last_only:
            return [y]
        return [y[:, t] for t in range(len(x))]

    def block(
        self, x: Frames, level: int, name: str, dilations: tuple[int, int], recurrent: bool
    ) -> Frames:
        cfg = self.cfg
        filters = cfg.filters * 2**level
        if recurrent:
            # The last ConvLSTM of the encoder hands only the clip's last frame on.
            last_only = level == cfg.pools or cfg.convlstm_position == "input"
            x = self.convlstm(x, filters, f"{name}_convlstm", last_only)
        else:
            x = self.conv(x, filters, f"{name}_conv1", dilation=dilations[0])
        rate = cfg.dropouts[level]
        if rate > 0:
            x = self.per_frame(layers.Dropout(rate, name=f"{name}_dropout"), x)
        return self.conv(x, filters, f"{name}_conv2", dilation=dilations[1])

    def down(self, x: Frames, level: int) -> Frames:
        if self.cfg.downsampling == "maxpool":
            return self.per_frame(layers.MaxPooling2D(2, name=f"down{level}_pool"), x)
        filters = self.cfg.filters * 2**level
        return self.conv(x, filters, f"down{level}_conv", strides=2)

    def up(self, x: Any, level: int) -> Any:
        cfg = self.cfg
        filters = cfg.filters * 2**level
        if cfg.upsampling == "transpose":
            return layers.Conv2DTranspose(
                filters,
                2,
                strides=2,
                padding="same",
                kernel_initializer=cfg.kernel_initializer,
                name=f"up{level}_transpose",
            )(x)
        x = BilinearUpsampling2D(name=f"up{level}_resize")(x)
        return self.conv([x], filters, f"up{level}_conv")[0]

    def network(self, x: Frames) -> Any:
        cfg = self.cfg
        skips = []
        for level in range(cfg.pools):
            dilations = _level_dilations(cfg.dilations[level])
            x = self.block(x, level, f"enc{level}", dilations, _convlstm_at(cfg, level))
            skips.append(x[-1])  # the last frame's features feed the decoder
            x = self.down(x, level)
        (y,) = self.block(x, cfg.pools, "bottleneck", (1, 1), _convlstm_at(cfg, cfg.pools))
        for level in reversed(range(cfg.pools)):
            y = self.up(y, level)
            y = layers.Concatenate(name=f"dec{level}_concat")([skips[level], y])
            (y,) = self.block([y], level, f"dec{level}", (1, 1), recurrent=False)
        return self.head(y)

    def head(self, x: Any) -> Any:
        cfg = self.cfg
        if cfg.output == "softmax":
            logits = layers.Conv2D(cfg.classes, 1, name="logits")(x)
            return layers.Softmax(name="mask", dtype="float32")(logits)
        mask_logits = layers.Conv2D(1, 1, name="logits")(x)
        mask = layers.Activation("sigmoid", name="mask", dtype="float32")(mask_logits)
        if cfg.output == "sigmoid":
            return mask
        target_logits = layers.Conv2D(1, 1, name="target_logits")(x)
        target = layers.Activation("sigmoid", name="target", dtype="float32")(target_logits)
        return [mask, target]


def build_unet(cfg: UNetConfig) -> keras.Model:
    """Build a frame U-Net.

    Args:
        cfg: The architecture; ``cfg.temporal`` must be ``"none"``.

    Returns:
        An uncompiled model with input ``"frame"`` of shape ``(None, None, channels_in)``
        and output ``"mask"`` (``(H, W, 1)`` sigmoid or ``(H, W, classes)`` softmax), or
        the outputs ``["mask", "target"]`` for ``"two_heads"``.

    Raises:
        ConfigError: If `cfg` describes a ConvLSTM model.
    """
    if cfg.temporal != "none":
        raise ConfigError(f"build_unet builds frame models; got temporal={cfg.temporal!r}")
    frame = keras.Input((None, None, cfg.channels_in), name="frame")
    return keras.Model(frame, _Builder(cfg).network([frame]), name="unet")


def build_convlstm_unet(cfg: UNetConfig) -> keras.Model:
    """Build a ConvLSTM-U-Net that segments the last frame of a clip.

    The encoder runs on every frame of the clip with shared weights; the ConvLSTM layers
    (see ``cfg.convlstm_position``) carry information across frames, and the decoder
    sees the last frame's features only.

    Args:
        cfg: The architecture; ``cfg.temporal`` must be ``"convlstm"``.

    Returns:
        An uncompiled model with input ``"clip"`` of shape
        ``(time_steps, None, None, channels_in)`` and the outputs of `build_unet`.

    Raises:
        ConfigError: If `cfg` describes a frame model.
    """
    if cfg.temporal != "convlstm":
        raise ConfigError(f"build_convlstm_unet builds clip models; got temporal={cfg.temporal!r}")
    clip = keras.Input((cfg.time_steps, None, None, cfg.channels_in), name="clip")
    frames = [clip[:, t] for t in range(cfg.time_steps)]
    return keras.Model(clip, _Builder(cfg).network(frames), name="convlstm_unet")


def build_model(cfg: UNetConfig) -> keras.Model:
    """Build the model `cfg` describes: `build_unet` or `build_convlstm_unet`."""
    return build_convlstm_unet(cfg) if cfg.temporal == "convlstm" else build_unet(cfg)


def _seed_ramp(pools: int, rate: float) -> tuple[float, ...]:
    # categorical_unet_*: rate * (p + 1) at level p; the bottleneck reused the last
    # level's rate * pools (a leaked loop variable).
    return tuple(rate * (p + 1) for p in range(pools)) + (rate * pools,)


def _seed_unet_schedule(pools: int, rate: float) -> tuple[float, ...]:
    # unet / categorical_unet: 1, 1, 2, 2 times the rate at levels 0-3, 3 times at the
    # bottleneck (their depth was fixed at 4; deeper levels continue the pattern).
    return tuple(rate * (1 + p // 2) for p in range(pools)) + (rate * (1 + pools // 2),)


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
}

SEED_MODEL_NAMES: tuple[str, ...] = tuple(_SEED_PRESETS)
"""Model names of the seed suite (its ``cnn_name``) that `config_from_seed_name` accepts."""


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
    is spread over the levels the same way.

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
