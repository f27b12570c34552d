"""Small ONNX models for tests and benchmarks, built with ``onnx.helper``.

Every model has one float32 input named ``"image"`` with dynamic batch, height and
width (``"N"``, ``"H"``, ``"W"``) and one float32 output ``"mask"`` in the same layout.
Weights are drawn from a seeded NumPy generator, so a model is the same on every run.

Needs the ``onnx`` package (the ``test`` extra); it is imported here and nowhere else
in the package, so inference never depends on it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from .contract import CONTRACT_KEY, ModelContract, check_layout
from .errors import ConfigError, require

if TYPE_CHECKING:
    import onnx

OPSET = 17
# The IR version that goes with opset 17; newer onnx releases default to IR versions that
# older onnxruntime builds refuse to load.
IR_VERSION = 8
INPUT_NAME = "image"
OUTPUT_NAME = "mask"


def _onnx() -> Any:
    return require("onnx", "test")


class _Graph:
    """Accumulates nodes and initializers, naming tensors uniquely."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def const(self, prefix: str, value: np.ndarray) -> str:
        name = self.name(prefix)
        self.initializers.append(_onnx().numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        out = self.name(op.lower())
        self.nodes.append(_onnx().helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, c_in: int, c_out: int, kernel: int, dilation: int = 1) -> str:
        """Same-padded convolution with He-initialised weights (activations keep their scale)."""
        std = np.sqrt(2.0 / (c_in * kernel * kernel))
        w = self.rng.normal(0.0, std, (c_out, c_in, kernel, kernel)).astype(np.float32)
        b = self.rng.normal(0.0, 0.01, c_out).astype(np.float32)
        pad = dilation * (kernel - 1) // 2
        return self.node(
            "Conv",
            [x, self.const("w", w), self.const("b", b)],
            kernel_shape=[kernel, kernel],
            dilations=[dilation, dilation],
            pads=[pad, pad, pad, pad],
        )

    def conv_relu(self, x: str, c_in: int, c_out: int, kernel: int, dilation: int = 1) -> str:
        return self.node("Relu", [self.conv(x, c_in, c_out, kernel, dilation)])


def _finish(
    g: _Graph,
    body: Any,
    channels_in: int,
    channels_out: int,
    layout: str,
    name: str,
    contract: ModelContract | None = None,
) -> onnx.ModelProto:
    """Wrap an NCHW body in a model whose input and output use ``layout``.

    ``body`` maps the NCHW input tensor name to the NCHW output tensor name. For NHWC the
    body is framed by Transposes, the way tf2onnx exports a Keras model.
    """
    onnx = _onnx()
    check_layout(layout)
    if layout == "NHWC":
        x = g.node("Transpose", [INPUT_NAME], perm=[0, 3, 1, 2])
        y = g.node("Transpose", [body(x)], perm=[0, 2, 3, 1])
        in_shape: list[Any] = ["N", "H", "W", channels_in]
        out_shape: list[Any] = ["N", "H", "W", channels_out]
    else:
        y = body(INPUT_NAME)
        in_shape = ["N", channels_in, "H", "W"]
        out_shape = ["N", channels_out, "H", "W"]
    g.nodes.append(onnx.helper.make_node("Identity", [y], [OUTPUT_NAME], name="output"))
    graph = onnx.helper.make_graph(
        g.nodes,
        name,
        [onnx.helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, in_shape)],
        [onnx.helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT, out_shape)],
        initializer=g.initializers,
    )
    model = onnx.helper.make_model(
        graph,
        opset_imports=[onnx.helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="unetrt.testing",
    )
    if contract is not None:
        onnx.helper.set_model_props(model, {CONTRACT_KEY: contract.to_json()})
    onnx.checker.check_model(model, full_check=True)
    return model


def affine_model(
    scale: float, offset: float, channels: int = 1, layout: str = "NHWC"
) -> onnx.ModelProto:
    """A "network" computing ``y = scale * x + offset`` elementwise (an exact oracle).

    Args:
        scale: Multiplier (stored as float32).
        offset: Added after the multiplication (stored as float32).
        channels: Input and output channels.
        layout: ``"NHWC"`` or ``"NCHW"`` for both input and output.

    Returns:
        The ONNX model; its output equals ``np.float32(scale) * x + np.float32(offset)``.
    """
    g = _Graph(np.random.default_rng(0))

    def body(x: str) -> str:
        scaled = g.node("Mul", [x, g.const("scale", np.array(scale, np.float32))])
        return g.node("Add", [scaled, g.const("offset", np.array(offset, np.float32))])

    return _finish(g, body, channels, channels, layout, "affine")


def conv_stack_model(
    kernel_sizes: tuple[int, ...] = (3, 3),
    dilations: tuple[int, ...] | None = None,
    channels: int = 1,
    filters: int = 4,
    layout: str = "NHWC",
    seed: int = 0,
) -> onnx.ModelProto:
    """Plain same-padded convolutions with ReLU, then a 1x1 convolution and a sigmoid.

    Its receptive-field radius is known exactly: see `conv_stack_radius`. No pooling, so
    any input size works (alignment 1).

    Args:
        kernel_sizes: Odd kernel size of each convolution.
        dilations: Dilation of each convolution (default all 1).
        channels: Input channels.
        filters: Channels of every hidden convolution.
        layout: ``"NHWC"`` or ``"NCHW"``.
        seed: Seed of the random weights.

    Returns:
        The ONNX model, one output channel.
    """
    dilations = dilations or (1,) * len(kernel_sizes)
    if len(dilations) != len(kernel_sizes):
        raise ConfigError(
            f"need one dilation per kernel, got {len(dilations)} dilations "
            f"for {len(kernel_sizes)} kernels"
        )
    if any(k < 1 or k % 2 == 0 for k in kernel_sizes):
        raise ConfigError(f"kernel sizes must be odd, got {kernel_sizes}")
    g = _Graph(np.random.default_rng(seed))

    def body(x: str) -> str:
        c_in = channels
        for k, d in zip(kernel_sizes, dilations, strict=True):
            x = g.conv_relu(x, c_in, filters, k, d)
            c_in = filters
        return g.node("Sigmoid", [g.conv(x, c_in, 1, 1)])

    return _finish(g, body, channels, 1, layout, "conv_stack")


def conv_stack_radius(
    kernel_sizes: tuple[int, ...], dilations: tuple[int, ...] | None = None
) -> int:
    """Exact receptive-field radius of `conv_stack_model`: ``sum(d * (k - 1) / 2)``."""
    dilations = dilations or (1,) * len(kernel_sizes)
    return sum(d * (k - 1) // 2 for k, d in zip(kernel_sizes, dilations, strict=True))


def unet_model(
    filters: int = 32,
    pools: int = 3,
    kernel: int = 3,
    channels_in: int = 1,
    classes: int = 1,
    upsampling: str = "transpose",
    layout: str = "NHWC",
    output: str = "sigmoid",
    seed: int = 0,
    contract: ModelContract | None = None,
) -> onnx.ModelProto:
    """A U-Net shaped like the seed project's, with random He-initialised weights.

    Per level: two ``kernel`` x ``kernel`` convolutions with ReLU; 2x2 max pooling down;
    a 2x2 stride-2 transposed convolution (or nearest-neighbour resize) up, concatenated
    with the skip connection, then two convolutions again; filters double per level. A
    final 1x1 convolution gives ``classes`` channels, followed by the ``output`` activation.
    Height and width must be multiples of ``2**pools``.

    Args:
        filters: Filters of the first level.
        pools: Number of poolings (alignment is ``2**pools``).
        kernel: Odd convolution kernel size.
        channels_in: Input channels.
        classes: Output channels.
        upsampling: ``"transpose"`` (ConvTranspose 2x2, stride 2) or ``"nearest"`` (Resize).
        layout: ``"NHWC"`` (Transposes around an NCHW body, as tf2onnx exports Keras
            models) or ``"NCHW"``.
        output: ``"sigmoid"``, ``"softmax"`` (over channels) or ``"logits"`` (none).
        seed: Seed of the random weights.
        contract: If given, stored as JSON in ``metadata_props["unetrt"]``.

    Returns:
        The ONNX model.
    """
    if upsampling not in ("transpose", "nearest"):
        raise ConfigError(f"upsampling must be 'transpose' or 'nearest', got {upsampling!r}")
    if output not in ("sigmoid", "softmax", "logits"):
        raise ConfigError(f"output must be 'sigmoid', 'softmax' or 'logits', got {output!r}")
    if kernel < 1 or kernel % 2 == 0:
        raise ConfigError(f"kernel must be odd, got {kernel}")
    if pools < 1:
        raise ConfigError(f"pools must be at least 1, got {pools}")
    g = _Graph(np.random.default_rng(seed))

    def up(x: str, c_in: int, c_out: int) -> str:
        if upsampling == "transpose":
            std = np.sqrt(2.0 / (c_in * 4))
            w = g.rng.normal(0.0, std, (c_in, c_out, 2, 2)).astype(np.float32)
            b = np.zeros(c_out, np.float32)
            return g.node(
                "ConvTranspose",
                [x, g.const("w", w), g.const("b", b)],
                kernel_shape=[2, 2],
                strides=[2, 2],
            )
        scales = g.const("scales", np.array([1, 1, 2, 2], np.float32))
        resized = g.node("Resize", [x, "", scales], mode="nearest")
        return g.conv_relu(resized, c_in, c_out, 1)

    def body(x: str) -> str:
        skips = []
        c_in = channels_in
        for level in range(pools):
            c = filters * 2**level
            x = g.conv_relu(g.conv_relu(x, c_in, c, kernel), c, c, kernel)
            skips.append((x, c))
            x = g.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
            c_in = c
        c = filters * 2**pools
        x = g.conv_relu(g.conv_relu(x, c_in, c, kernel), c, c, kernel)
        for skip, c_skip in reversed(skips):
            x = g.node("Concat", [up(x, c, c_skip), skip], axis=1)
            x = g.conv_relu(g.conv_relu(x, 2 * c_skip, c_skip, kernel), c_skip, c_skip, kernel)
            c = c_skip
        x = g.conv(x, c, classes, 1)
        if output == "sigmoid":
            return g.node("Sigmoid", [x])
        if output == "softmax":
            return g.node("Softmax", [x], axis=1)
        return x

    return _finish(g, body, channels_in, classes, layout, "unet", contract)


def unet_receptive_radius(pools: int = 3, kernel: int = 3) -> int:
    """Exact receptive-field radius of `unet_model`, in input pixels.

    Pooling makes the field depend on a pixel's position modulo ``2**pools``; this is the
    largest radius over all positions (the halo a tile needs). Computed by following the
    index interval an output pixel depends on back through the deepest path (the skip
    paths see a subset of it): convolutions widen it by ``(kernel - 1) / 2`` per side at
    their level, upsampling maps pixel ``i`` to ``i // 2``, pooling maps ``i`` to
    ``2i, 2i + 1``. Upsampling by transposed convolution or by nearest resize followed by
    a 1x1 convolution give the same field.

    Args:
        pools: Number of poolings.
        kernel: Odd convolution kernel size.

    Returns:
        The radius: the largest distance between an output pixel and an input pixel that
        influences it.
    """
    r = (kernel - 1) // 2
    radius = 0
    # Far from the borders the field is periodic in the output position with this period.
    for p in range(2**pools):
        lo, hi = p - 2 * r, p + 2 * r  # the decoder's two convolutions at full resolution
        for _ in range(pools - 1):  # up one level, then that level's decoder convolutions
            lo, hi = lo // 2 - 2 * r, hi // 2 + 2 * r
        lo, hi = lo // 2 - 2 * r, hi // 2 + 2 * r  # up to the bottleneck, its convolutions
        for _ in range(pools):  # pool back down, then that level's encoder convolutions
            lo, hi = 2 * lo - 2 * r, 2 * hi + 1 + 2 * r
        radius = max(radius, p - lo, hi - p)
    return radius


def save(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Write a model to an ``.onnx`` file."""
    _onnx().save(model, os.fspath(path))
