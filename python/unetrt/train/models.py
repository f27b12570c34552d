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
  exported ONNX graph has no loop. `build_convlstm_step` builds one time step with the
  states as inputs and outputs (what `unetrt export` writes for the engine). The
  ConvLSTM model predicts the last frame of the clip from its features; the seed
  averaged the decoder output over time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
from keras import layers, ops

from ..contract import INPUT_NAME
from ..errors import ConfigError
from .unet_config import (
    RESNET34_BLOCKS,
    SEED_MODEL_NAMES,
    UNetConfig,
    _convlstm_at,
    _level_dilations,
    alignment,
    config_from_seed_name,
    receptive_field,
)

# The Keras-free description lives in unet_config; its public names are re-exported so
# that the models and their configuration can be imported from one place.
__all__ = [
    "SEED_MODEL_NAMES",
    "BilinearUpsampling2D",
    "ConvLSTM2DStep",
    "ConvLSTM2DUnrolled",
    "ICNR",
    "PixelShuffle2D",
    "StepState",
    "UNetConfig",
    "alignment",
    "build_convlstm_step",
    "build_convlstm_unet",
    "copy_weights",
    "build_model",
    "build_unet",
    "config_from_seed_name",
    "receptive_field",
]


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
class ConvLSTM2DStep(ConvLSTM2DUnrolled):
    """One time step of `ConvLSTM2DUnrolled`: ``[x, h, c] -> [h_next, c_next]``.

    The same weights (a step model copies them from the clip model by layer name). From
    a zero state it computes exactly the unrolled layer's first step: the recurrent
    convolution of zeros and the forget term ``f * 0`` add exact zeros.
    """

    def build(self, input_shape: Any) -> None:
        super().build(tuple(input_shape[0]))

    def call(self, inputs: Any) -> Any:
        x, h, c = inputs
        z = ops.conv(x, self.kernel, padding="same") + self.bias
        z = z + ops.conv(h, self.recurrent_kernel, padding="same")
        i, f, g, o = ops.split(z, 4, axis=-1)
        cell = self.recurrent_activation(f) * c + self.recurrent_activation(i) * self.activation(g)
        return [self.recurrent_activation(o) * self.activation(cell), cell]

    def compute_output_shape(self, input_shape: Any) -> Any:
        b, hh, ww, _ = input_shape[0]
        return [(b, hh, ww, self.filters), (b, hh, ww, self.filters)]


@dataclass(frozen=True)
class StepState:
    """One ConvLSTM layer's state in a step model (`build_convlstm_step`).

    Attributes:
        layer: The ConvLSTM layer's name.
        input: Name of the state input (``<layer>_h`` or ``<layer>_c``).
        output: Name of the state output (``<layer>_h_next`` / ``<layer>_c_next``).
        channels: The layer's filters.
        stride: Frame pixels per state pixel (``2**level``).
    """

    layer: str
    input: str
    output: str
    channels: int
    stride: int


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


@keras.saving.register_keras_serializable(package="unetrt")
class PixelShuffle2D(layers.Layer):
    """Depth to space (``tf.nn.depth_to_space``, ONNX ``DepthToSpace``): channel
    ``(i * scale + j) * C + c`` of a pixel becomes channel ``c`` of its sub-pixel
    ``(i, j)`` in a `scale` times larger map (Shi et al. 2016)."""

    def __init__(self, scale: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, x: Any) -> Any:
        import tensorflow as tf

        return tf.nn.depth_to_space(x, self.scale)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        b, h, w, c = input_shape
        r = self.scale
        return (b, None if h is None else h * r, None if w is None else w * r, (c or 0) // r**2)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(scale=self.scale)
        return config


@keras.saving.register_keras_serializable(package="unetrt")
class ICNR(keras.initializers.Initializer):
    """ICNR initialization (Aitken et al. 2017) of the convolution before a
    `PixelShuffle2D`: every sub-pixel gets the same kernel, so at the start the shuffle
    is a nearest-neighbour upsampling of one convolution (no checkerboard)."""

    def __init__(self, scale: int = 2, initializer: Any = "he_uniform") -> None:
        self.scale = scale
        self.initializer = keras.initializers.get(initializer)

    def __call__(self, shape: tuple[int, ...], dtype: Any = None) -> Any:
        *kernel, channels_in, channels_out = shape
        blocks = self.scale**2
        base = self.initializer((*kernel, channels_in, channels_out // blocks), dtype=dtype)
        return ops.tile(base, (1,) * (len(shape) - 1) + (blocks,))

    def get_config(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "initializer": keras.initializers.serialize(self.initializer),
        }


# A feature map flows through the builder as a list: one tensor per frame of the clip in a
# ConvLSTM model's encoder (each layer applied to every frame with shared weights), one
# tensor otherwise.
Frames = list[Any]


class _Builder:
    """Builds the network; with ``step`` the ConvLSTM layers are single steps whose
    states become extra inputs and outputs (collected in `inputs`, `outputs`, `states`)."""

    def __init__(self, cfg: UNetConfig, step: bool = False) -> None:
        self.cfg = cfg
        self.step = step
        self.level = 0
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self.states: list[StepState] = []

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
        if self.step:
            return [self.convlstm_step(x[0], filters, name)]
        layer = ConvLSTM2DUnrolled(
            filters, self.cfg.kernel_size, return_sequences=not last_only, name=name
        )
        y = layer(ops.stack(x, axis=1))
        if last_only:
            return [y]
        return [y[:, t] for t in range(len(x))]

    def convlstm_step(self, x: Any, filters: int, name: str) -> Any:
        h = keras.Input((None, None, filters), name=f"{name}_h")
        c = keras.Input((None, None, filters), name=f"{name}_c")
        h_next, c_next = ConvLSTM2DStep(filters, self.cfg.kernel_size, name=name)([x, h, c])
        for state, tensor, value in (("h", h, h_next), ("c", c, c_next)):
            self.inputs.append(tensor)
            self.outputs.append(layers.Identity(name=f"{name}_{state}_next")(value))
            self.states.append(
                StepState(name, f"{name}_{state}", f"{name}_{state}_next", filters, 2**self.level)
            )
        return h_next

    def block(
        self, x: Frames, level: int, name: str, dilations: tuple[int, int], recurrent: bool
    ) -> Frames:
        cfg = self.cfg
        self.level = level
        filters = cfg.filters * 2**level
        if recurrent:
            # The last ConvLSTM of the encoder hands only the clip's last frame on.
            last_only = level == cfg.pools or cfg.convlstm_position == "input"
            h = self.convlstm(x, filters, f"{name}_convlstm", last_only)
            if cfg.convlstm_residual:
                if last_only:
                    x = x[-1:]
                conv = self.conv(x, filters, f"{name}_conv1", dilation=dilations[0])
                proj = layers.Conv2D(
                    filters, 1, kernel_initializer="zeros", name=f"{name}_convlstm_proj"
                )
                x = [
                    layers.Add(
                        name=f"{name}_convlstm_add_{t}" if len(h) > 1 else f"{name}_convlstm_add"
                    )([c, proj(y)])
                    for t, (c, y) in enumerate(zip(conv, h, strict=True))
                ]
            else:
                x = h
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

    def upsample(self, x: Any, factor: int, filters: int, name: str) -> Any:
        """`x` made `factor` (a power of two) times larger by ``cfg.upsampling``: one
        transposed convolution or pixel shuffle with `filters` outputs; repeated 2x
        bilinear steps (the channels unchanged, no convolution yet) for interpolation."""
        cfg = self.cfg
        if cfg.upsampling == "transpose":
            return layers.Conv2DTranspose(
                filters,
                factor,
                strides=factor,
                padding="same",
                kernel_initializer=cfg.kernel_initializer,
                name=f"{name}_transpose",
            )(x)
        if cfg.upsampling == "pixel_shuffle":
            x = layers.Conv2D(
                filters * factor**2,
                1,
                kernel_initializer=ICNR(factor, cfg.kernel_initializer),
                name=f"{name}_shuffle_conv",
            )(x)
            x = layers.Activation(cfg.activation, name=f"{name}_shuffle_act")(x)
            return PixelShuffle2D(factor, name=f"{name}_shuffle")(x)
        steps = factor.bit_length() - 1
        for i in range(steps):
            x = BilinearUpsampling2D(name=f"{name}_resize" if steps == 1 else f"{name}_resize{i}")(
                x
            )
        return x

    def up_to(self, x: Any, filters: int, name: str) -> Any:
        """2x upsampling to `filters` channels (bilinear interpolation then a convolution)."""
        y = self.upsample(x, 2, filters, name)
        if self.cfg.upsampling == "interpolation":
            y = self.conv([y], filters, f"{name}_conv")[0]
        return y

    def up(self, x: Any, level: int) -> Any:
        return self.up_to(x, self.cfg.filters * 2**level, f"up{level}")

    def attention_gate(self, x: Any, g: Any, level: int) -> Any:
        """An additive attention gate (Oktay et al. 2018, in the form of the Keras U-Net
        collection): the skip `x` weighted per pixel by ``sigmoid(psi(relu(theta(x) +
        phi(g))))``, 1x1 convolutions all, the gating signal `g` being the decoder's
        upsampled features at the skip's size (so no coefficient map needs resampling)."""
        cfg = self.cfg
        if cfg.attention_filters is not None:
            inter = cfg.attention_filters * 2**level
        else:
            inter = max(cfg.filters * 2**level // 2, 1)
        name, init = f"att{level}", cfg.kernel_initializer
        theta = layers.Conv2D(
            inter, 1, use_bias=False, kernel_initializer=init, name=f"{name}_theta"
        )(x)
        phi = layers.Conv2D(inter, 1, kernel_initializer=init, name=f"{name}_phi")(g)
        joint = layers.Add(name=f"{name}_add")([theta, phi])
        joint = layers.Activation("relu", name=f"{name}_relu")(joint)
        psi = layers.Conv2D(1, 1, activation="sigmoid", name=f"{name}_psi")(joint)
        return layers.Multiply(name=f"{name}_gate")([x, psi])  # broadcast over channels

    def network(self, x: Frames) -> Any:
        cfg = self.cfg
        if cfg.architecture == "unet3plus":
            return self.unet3plus(x)
        if cfg.architecture == "resnet34_unet":
            return self.resnet34_unet(x[0])
        if cfg.architecture == "multires_unet":
            return self.multires_unet(x[0])
        skips = []
        for level in range(cfg.pools):
            dilations = _level_dilations(cfg.dilations[level])
            x = self.block(x, level, f"enc{level}", dilations, _convlstm_at(cfg, level))
            skips.append(x[-1])  # the last frame's features feed the decoder
            x = self.down(x, level)
        (y,) = self.block(x, cfg.pools, "bottleneck", (1, 1), _convlstm_at(cfg, cfg.pools))
        for level in reversed(range(cfg.pools)):
            skip = skips[level]
            y = self.up(y, level)
            if cfg.architecture == "attention_unet":
                skip = self.attention_gate(skip, y, level)
            y = layers.Concatenate(name=f"dec{level}_concat")([skip, y])
            (y,) = self.block([y], level, f"dec{level}", (1, 1), recurrent=False)
        return self.head(y)

    def unet3plus(self, x: Frames) -> Any:
        """UNet3+ (Huang et al. 2020): the U-Net's encoder; decoder level ``i`` fuses one
        branch from every level: encoder levels above it max-pooled down, its own encoder
        level, and the deeper decoder levels (the bottleneck first) upsampled, each
        through a convolution to ``unet3plus_filters`` channels. (Its deep supervision
        and classification-guided module are left out: the latter pools over the whole
        frame, which no tile can compute.)"""
        cfg = self.cfg
        width = cfg.unet3plus_filters or cfg.filters
        encoder = []
        for level in range(cfg.pools):
            x = self.block(x, level, f"enc{level}", _level_dilations(cfg.dilations[level]), False)
            encoder.append(x[0])
            x = self.down(x, level)
        (bottom,) = self.block(x, cfg.pools, "bottleneck", (1, 1), False)
        encoder.append(bottom)
        decoder = {cfg.pools: bottom}
        for i in reversed(range(cfg.pools)):
            branches = []
            for j in range(cfg.pools + 1):
                if j < i:
                    name = f"dec{i}_from_enc{j}"
                    source = layers.MaxPooling2D(2 ** (i - j), name=f"{name}_pool")(encoder[j])
                elif j == i:
                    name, source = f"dec{i}_from_enc{j}", encoder[j]
                else:
                    name = f"dec{i}_from_dec{j}"
                    source = self.upsample(decoder[j], 2 ** (j - i), width, name)
                branches.append(self.conv([source], width, name)[0])
            fused = layers.Concatenate(name=f"dec{i}_concat")(branches)
            decoder[i] = self.conv([fused], width * (cfg.pools + 1), f"dec{i}_fuse")[0]
        return self.head(decoder[0])

    def multires_block(self, x: Any, filters: int, name: str) -> Any:
        """MultiResUNet's block (Ibtehaz and Rahman 2020): three chained convolutions
        (1/6, 1/3 and 1/2 of ``1.67 * filters`` channels: 3x3, 5x5 and 7x7 fields)
        concatenated, plus a 1x1 shortcut, with batch norm (always, as in the paper)."""
        width = 1.67 * filters
        sizes = [max(int(width * share), 1) for share in (0.167, 0.333, 0.5)]
        shortcut = self.resnet_conv(x, sum(sizes), 1, f"{name}_shortcut", act=False)
        chain, y = [], x
        for i, size in enumerate(sizes):
            y = self.resnet_conv(y, size, self.cfg.kernel_size, f"{name}_conv{i + 1}")
            chain.append(y)
        y = layers.Concatenate(name=f"{name}_chain")(chain)
        y = layers.BatchNormalization(name=f"{name}_chain_bn")(y)
        y = layers.Add(name=f"{name}_add")([y, shortcut])
        y = layers.Activation(self.cfg.activation, name=f"{name}_act")(y)
        return layers.BatchNormalization(name=f"{name}_bn")(y)

    def res_path(self, x: Any, filters: int, length: int, name: str) -> Any:
        """MultiResUNet's residual path on a skip connection: `length` residual units
        (a 3x3 convolution beside a 1x1 shortcut), fewer for the deeper levels."""
        for i in range(length):
            unit = f"{name}_{i + 1}"
            shortcut = self.resnet_conv(x, filters, 1, f"{unit}_shortcut", act=False)
            y = self.resnet_conv(x, filters, self.cfg.kernel_size, f"{unit}_conv")
            y = layers.Add(name=f"{unit}_add")([y, shortcut])
            y = layers.Activation(self.cfg.activation, name=f"{unit}_act")(y)
            x = layers.BatchNormalization(name=f"{unit}_bn")(y)
        return x

    def multires_unet(self, frame: Any) -> Any:
        """MultiResUNet: MultiRes blocks instead of the U-Net's pairs of convolutions,
        residual paths of ``pools - level`` units on the skip connections."""
        cfg = self.cfg
        x, skips = frame, []
        for level in range(cfg.pools):
            x = self.multires_block(x, cfg.filters * 2**level, f"enc{level}")
            skips.append(
                self.res_path(x, cfg.filters * 2**level, cfg.pools - level, f"path{level}")
            )
            x = self.down([x], level)[0]
        y = self.multires_block(x, cfg.filters * 2**cfg.pools, "bottleneck")
        for level in reversed(range(cfg.pools)):
            y = self.up(y, level)
            y = layers.Concatenate(name=f"dec{level}_concat")([skips[level], y])
            y = self.multires_block(y, cfg.filters * 2**level, f"dec{level}")
        return self.head(y)

    def resnet_conv(
        self, x: Any, filters: int, kernel: int, name: str, strides: int = 1, act: bool = True
    ) -> Any:
        x = layers.Conv2D(
            filters,
            kernel,
            strides=strides,
            padding="same",
            use_bias=False,
            kernel_initializer=self.cfg.kernel_initializer,
            name=name,
        )(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.Activation(self.cfg.activation, name=f"{name}_act")(x) if act else x

    def basic_block(self, x: Any, filters: int, strides: int, name: str) -> Any:
        """ResNet's basic block: two 3x3 convolutions with batch norm, plus the input
        (through a strided 1x1 convolution where the size or the width changes)."""
        y = self.resnet_conv(x, filters, 3, f"{name}_conv1", strides)
        y = self.resnet_conv(y, filters, 3, f"{name}_conv2", act=False)
        shortcut = x
        if strides != 1 or x.shape[-1] != filters:
            shortcut = self.resnet_conv(x, filters, 1, f"{name}_proj", strides, act=False)
        y = layers.Add(name=f"{name}_add")([y, shortcut])
        return layers.Activation(self.cfg.activation, name=f"{name}_act")(y)

    def resnet34_unet(self, frame: Any) -> Any:
        """A ResNet34 encoder (layers ``stem_*`` and ``stage*``, as torchvision's with
        ``filters`` for its 64) cut after ``pools`` downsamplings, a middle block of two
        convolutions, and a decoder that upsamples (pixel shuffle by default, as fastai's
        DynamicUnet), concatenates the encoder's features of that size (the frame itself
        last) and convolves twice per level."""
        cfg = self.cfg
        f = cfg.filters
        x = self.resnet_conv(frame, f, 7, "stem_conv", strides=2)
        skips = [frame, x]  # strides 1 and 2
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
        for stage, blocks in enumerate(RESNET34_BLOCKS[: cfg.pools - 1]):
            for b in range(blocks):
                strides = 2 if stage > 0 and b == 0 else 1
                x = self.basic_block(x, f * 2**stage, strides, f"stage{stage + 1}_block{b + 1}")
            skips.append(x)
        skips.pop()  # the deepest features go on through the middle, not across
        width = int(x.shape[-1])
        y = self.conv([x], 2 * width, "middle_conv1")
        (y,) = self.conv(y, width, "middle_conv2")
        for level in reversed(range(cfg.pools)):
            filters = f * 2 ** max(level - 2, 0)  # the encoder's width at that size
            y = self.up_to(y, filters, f"up{level}")
            y = layers.Concatenate(name=f"dec{level}_concat")([skips[level], y])
            y = self.conv([y], filters, f"dec{level}_conv1")
            (y,) = self.conv(y, filters, f"dec{level}_conv2")
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
    frame = keras.Input((None, None, cfg.channels_in), name=INPUT_NAME)
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


def build_convlstm_step(cfg: UNetConfig) -> tuple[keras.Model, list[StepState]]:
    """Build one time step of the ConvLSTM-U-Net `build_convlstm_unet` describes.

    Inputs ``frame`` and, per ConvLSTM layer, its previous state ``<layer>_h`` and
    ``<layer>_c`` (NHWC at the layer's stride); outputs the mask (as `build_unet`), then
    the new states ``<layer>_h_next`` and ``<layer>_c_next``. Run from zero states over
    frames ``t-T+1 .. t`` it computes what the clip model computes for that clip; its
    layers are named as the clip model's, so `copy_weights` fills it from a trained one.

    Returns:
        The uncompiled step model and its states, in input order.

    Raises:
        ConfigError: If `cfg` describes a frame model.
    """
    if cfg.temporal != "convlstm":
        raise ConfigError(f"build_convlstm_step builds step models; got temporal={cfg.temporal!r}")
    frame = keras.Input((None, None, cfg.channels_in), name=INPUT_NAME)
    builder = _Builder(cfg, step=True)
    prediction = builder.network([frame])
    heads = list(prediction) if isinstance(prediction, (list, tuple)) else [prediction]
    model = keras.Model(
        [frame, *builder.inputs], [*heads, *builder.outputs], name="convlstm_unet_step"
    )
    return model, builder.states


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Copy the weights of every layer of `target` from the layer of `source` with its
    name (a step model from its clip model).

    Raises:
        ConfigError: If a layer with weights in `target` has no counterpart in `source`.
    """
    for layer in target.layers:
        if not layer.weights:
            continue
        try:
            layer.set_weights(source.get_layer(layer.name).get_weights())
        except ValueError as exc:
            raise ConfigError(f"cannot copy the weights of layer {layer.name!r}: {exc}") from exc


def build_model(cfg: UNetConfig) -> keras.Model:
    """Build the model `cfg` describes: `build_unet` or `build_convlstm_unet`."""
    return build_convlstm_unet(cfg) if cfg.temporal == "convlstm" else build_unet(cfg)
