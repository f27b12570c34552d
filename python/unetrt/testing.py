"""Small ONNX models for tests and benchmarks, built with ``onnx.helper``.

Every frame model has one float32 input named ``"image"`` with dynamic batch, height and
width (``"N"``, ``"H"``, ``"W"``) and one float32 output ``"mask"`` in the same layout; the
temporal step model (`convlstm_step_model`) adds state inputs and outputs. Weights are
drawn from a seeded NumPy generator, so a model is the same on every run.

Needs the ``onnx`` package (the ``test`` extra); it is imported here and nowhere else
in the package, so inference never depends on it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .contract import CONTRACT_KEY, ModelContract, StateSpec, check_layout
from .errors import ConfigError, require

if TYPE_CHECKING:
    import onnx

OPSET = 17
# The IR version that goes with opset 17; newer onnx releases default to IR versions that
# older onnxruntime builds refuse to load.
IR_VERSION = 8
INPUT_NAME = "image"
OUTPUT_NAME = "mask"
#: The frame input of `convlstm_step_model` (its prediction is `OUTPUT_NAME`).
STEP_INPUT_NAME = "frame"
#: The (input, output) names of `convlstm_step_model`'s states: hidden state, cell state.
STEP_STATES = (("h", "h_out"), ("c", "c_out"))


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

    def const(self, prefix: str, value: np.ndarray, exact: bool = False) -> str:
        """An initializer named ``prefix`` plus a counter, or exactly ``prefix``."""
        name = prefix if exact else self.name(prefix)
        self.initializers.append(_onnx().numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        return self.nodes_out(op, inputs, 1, **attrs)[0]

    def nodes_out(self, op: str, inputs: list[str], outputs: int, **attrs: Any) -> list[str]:
        """A node with several outputs (``Split``); returns their names."""
        name = self.name(op.lower())
        outs = [name] if outputs == 1 else [f"{name}_{i}" for i in range(outputs)]
        self.nodes.append(_onnx().helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs

    def weights(self, name: str | None, w: np.ndarray, b: np.ndarray) -> list[str]:
        """Weight and bias initializers: ``<name>.weight`` and ``<name>.bias`` if named."""
        if name is None:
            return [self.const("w", w), self.const("b", b)]
        return [self.const(f"{name}.weight", w, True), self.const(f"{name}.bias", b, True)]

    def conv(
        self,
        x: str,
        c_in: int,
        c_out: int,
        kernel: int,
        dilation: int = 1,
        name: str | None = None,
        std: float | None = None,
        bias: np.ndarray | None = None,
    ) -> str:
        """Same-padded convolution with He-initialised weights (activations keep their scale).

        ``name`` names the initializers ``<name>.weight`` and ``<name>.bias`` (else they
        get unique generated names); ``std`` overrides the He standard deviation and
        ``bias`` the small random bias.
        """
        if std is None:
            std = float(np.sqrt(2.0 / (c_in * kernel * kernel)))
        w = self.rng.normal(0.0, std, (c_out, c_in, kernel, kernel)).astype(np.float32)
        if bias is None:
            b = self.rng.normal(0.0, 0.01, c_out).astype(np.float32)
        else:
            b = np.asarray(bias, np.float32)
        pad = dilation * (kernel - 1) // 2
        return self.node(
            "Conv",
            [x, *self.weights(name, w, b)],
            kernel_shape=[kernel, kernel],
            dilations=[dilation, dilation],
            pads=[pad, pad, pad, pad],
        )

    def conv_transpose(self, x: str, c_in: int, c_out: int, name: str | None = None) -> str:
        """2x2 stride-2 transposed convolution (2x upsampling), He weights, zero bias."""
        std = np.sqrt(2.0 / (c_in * 4))
        w = self.rng.normal(0.0, std, (c_in, c_out, 2, 2)).astype(np.float32)
        b = np.zeros(c_out, np.float32)
        return self.node(
            "ConvTranspose", [x, *self.weights(name, w, b)], kernel_shape=[2, 2], strides=[2, 2]
        )

    def conv_relu(self, x: str, c_in: int, c_out: int, kernel: int, dilation: int = 1) -> str:
        return self.node("Relu", [self.conv(x, c_in, c_out, kernel, dilation)])


#: A model input or output: its name, channels and stride (frame pixels per pixel).
_Port = tuple[str, int, int]


def _finish(
    g: _Graph,
    body: Callable[[str], str],
    channels_in: int,
    channels_out: int,
    layout: str,
    name: str,
    contract: ModelContract | None = None,
) -> onnx.ModelProto:
    """Wrap an NCHW body in a frame model whose input and output use ``layout``.

    ``body`` maps the NCHW input tensor name to the NCHW output tensor name. For NHWC the
    body is framed by Transposes, the way tf2onnx exports a Keras model.
    """
    return _assemble(
        g,
        lambda xs: [body(xs[0])],
        [(INPUT_NAME, channels_in, 1)],
        [(OUTPUT_NAME, channels_out, 1)],
        layout,
        name,
        contract,
    )


def _assemble(
    g: _Graph,
    body: Callable[[list[str]], list[str]],
    inputs: Sequence[_Port],
    outputs: Sequence[_Port],
    layout: str,
    name: str,
    contract: ModelContract | None = None,
) -> onnx.ModelProto:
    """Wrap an NCHW body in a model whose inputs and outputs all use ``layout``.

    ``body`` maps the NCHW tensor names of ``inputs`` to those of ``outputs``, in order.
    For NHWC each input and output is framed by a Transpose, the way tf2onnx exports a
    Keras model. Height and width are dynamic: ``"H"`` and ``"W"`` at stride 1, else
    ``"H/<stride>"`` and ``"W/<stride>"``; the batch is ``"N"``.
    """
    onnx = _onnx()
    check_layout(layout)

    def shape(channels: int, stride: int) -> list[Any]:
        h, w = ("H", "W") if stride == 1 else (f"H/{stride}", f"W/{stride}")
        return ["N", h, w, channels] if layout == "NHWC" else ["N", channels, h, w]

    def value_info(port: _Port) -> Any:
        return onnx.helper.make_tensor_value_info(
            port[0], onnx.TensorProto.FLOAT, shape(port[1], port[2])
        )

    if layout == "NHWC":
        xs = [g.node("Transpose", [port[0]], perm=[0, 3, 1, 2]) for port in inputs]
        ys = [g.node("Transpose", [y], perm=[0, 2, 3, 1]) for y in body(xs)]
    else:
        ys = body([port[0] for port in inputs])
    for i, (y, port) in enumerate(zip(ys, outputs, strict=True)):
        node_name = "output" if i == 0 else f"output_{port[0]}"
        g.nodes.append(onnx.helper.make_node("Identity", [y], [port[0]], name=node_name))
    graph = onnx.helper.make_graph(
        g.nodes,
        name,
        [value_info(port) for port in inputs],
        [value_info(port) for port in outputs],
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
            return g.conv_transpose(x, c_in, c_out)
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


def convlstm_step_model(
    filters: int = 4,
    kernel: int = 3,
    layout: str = "NHWC",
    seed: int = 0,
    contract: ModelContract | None = None,
) -> onnx.ModelProto:
    """One time step of a tiny ConvLSTM U-Net: a temporal step model without Loop or Scan.

    Inputs: ``"frame"`` (one channel) and the states ``"h"`` and ``"c"`` of the previous
    step, ``filters`` channels at half the frame's height and width (stride 2); outputs:
    ``"mask"`` (one channel) and the new states ``"h_out"`` and ``"c_out"``, all in
    ``layout`` with dynamic dims. Height and width must be even. In NCHW, with
    ``conv_k`` a same-padded (zeros) ``kernel`` x ``kernel`` convolution::

        e = relu(conv_k(frame))                      # filters channels, full resolution
        p = maxpool_2x2_stride_2(e)
        i, f, g, o = split(conv_k(concat(p, h)))     # 4 * filters channels
        c_out = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h_out = sigmoid(o) * tanh(c_out)
        u = conv_transpose_2x2_stride_2(h_out)       # filters channels, full resolution
        d = relu(conv_k(concat(u, e)))
        mask = sigmoid(conv_1x1(d))

    Concatenations are over channels, in the order written. The initializers are named
    ``<layer>.weight`` and ``<layer>.bias`` (ONNX Conv / ConvTranspose layouts) with
    layers ``encoder`` (e), ``gates``, ``up`` (u), ``decoder`` (d) and ``head`` (mask),
    so a reference can read them. Weights are He-initialised except the gates', drawn with
    standard deviation ``sqrt(1 / fan_in)`` so the gates neither saturate nor stay at 1/2;
    the gate biases are 0 but the forget gate's is +1, so the cell state carries over;
    the head's weights alternate in sign (and its bias is 0), so the mask has values on
    both sides of 1/2. The ``kernel`` x ``kernel`` convolution over ``h`` spreads the
    state by ``(kernel - 1) / 2`` state pixels per step. The receptive field of one step
    is `convlstm_step_radius`.

    Args:
        filters: Channels of the hidden layers and of both states.
        kernel: Odd convolution kernel size.
        layout: ``"NHWC"`` (Transposes around an NCHW body, as tf2onnx exports Keras
            models) or ``"NCHW"``, for all inputs and outputs.
        seed: Seed of the random weights.
        contract: If given, stored as JSON in ``metadata_props["unetrt"]`` (see
            `convlstm_step_contract`).

    Returns:
        The ONNX model.
    """
    if kernel < 1 or kernel % 2 == 0:
        raise ConfigError(f"kernel must be odd, got {kernel}")
    if filters < 1:
        raise ConfigError(f"filters must be at least 1, got {filters}")
    g = _Graph(np.random.default_rng(seed))
    f = filters

    def body(xs: list[str]) -> list[str]:
        frame, h, c = xs
        e = g.node("Relu", [g.conv(frame, 1, f, kernel, name="encoder")])
        p = g.node("MaxPool", [e], kernel_shape=[2, 2], strides=[2, 2])
        gate_bias = np.zeros(4 * f, np.float32)
        gate_bias[f : 2 * f] = 1.0  # the forget gate: remember by default
        gates = g.conv(
            g.node("Concat", [p, h], axis=1),
            2 * f,
            4 * f,
            kernel,
            name="gates",
            std=float(np.sqrt(1.0 / (2 * f * kernel * kernel))),
            bias=gate_bias,
        )
        i, fg, cand, o = g.nodes_out("Split", [gates], 4, axis=1)
        c_new = g.node(
            "Add",
            [
                g.node("Mul", [g.node("Sigmoid", [fg]), c]),
                g.node("Mul", [g.node("Sigmoid", [i]), g.node("Tanh", [cand])]),
            ],
        )
        h_new = g.node("Mul", [g.node("Sigmoid", [o]), g.node("Tanh", [c_new])])
        u = g.conv_transpose(h_new, f, f, name="up")
        d = g.node(
            "Relu", [g.conv(g.node("Concat", [u, e], axis=1), 2 * f, f, kernel, name="decoder")]
        )
        # Alternating signs, so the mask is neither all foreground nor all background.
        signs = np.where(np.arange(f) % 2 == 0, 1.0, -1.0)
        w_head = np.abs(g.rng.normal(0.0, np.sqrt(2.0 / f), f)) * signs
        b_head = np.zeros(1, np.float32)
        head = g.weights("head", w_head.astype(np.float32).reshape(1, f, 1, 1), b_head)
        mask = g.node("Sigmoid", [g.node("Conv", [d, *head], kernel_shape=[1, 1])])
        return [mask, h_new, c_new]

    (h_in, h_out), (c_in, c_out) = STEP_STATES
    return _assemble(
        g,
        body,
        [(STEP_INPUT_NAME, 1, 1), (h_in, f, 2), (c_in, f, 2)],
        [(OUTPUT_NAME, 1, 1), (h_out, f, 2), (c_out, f, 2)],
        layout,
        "convlstm_step",
        contract,
    )


def convlstm_step_radius(kernel: int = 3) -> int:
    """Exact receptive-field radius of one step of `convlstm_step_model`, in frame pixels.

    Over all inputs (frame, ``h``, ``c``) and all outputs (mask, ``h_out``, ``c_out``);
    state pixel ``j`` counts as the frame pixels ``2j`` and ``2j + 1`` it covers. With
    ``r = (kernel - 1) / 2``, follow the index interval an output depends on back, per axis
    (the field is periodic in the position with period 2):

    - ``h_out``/``c_out`` at state pixel ``j`` see the gate convolution's state pixels
      ``j - r .. j + r`` of ``p`` and ``h``, and ``c`` at ``j``. ``p`` at ``j`` pools ``e``
      at ``2j, 2j + 1``, and ``e`` at ``x`` sees frame ``x - r .. x + r``: frame pixels
      ``2j - 3r .. 2j + 1 + 3r``, which are at most ``3r + 1`` from the covered pixels
      ``2j, 2j + 1``; ``h`` covers ``2j - 2r .. 2j + 1 + 2r`` (distance ``2r + 1``); ``c``
      covers ``2j, 2j + 1`` (distance 1).
    - The mask at frame pixel ``x`` sees ``d`` at ``x`` (1x1 head), hence ``u`` and ``e`` at
      ``x - r .. x + r``; ``e`` reaches frame ``x - 2r .. x + 2r``. ``u`` at ``x`` is
      ``h_out`` at ``x // 2``, so the state pixels ``(x - r) // 2 .. (x + r) // 2``, whose
      fields (above) span frame pixels ``2 ((x - r) // 2) - 3r .. 2 ((x + r) // 2) + 1 + 3r``.
      For ``x - r`` even the left end is ``4r`` from ``x``, for ``x - r`` odd ``4r + 1``;
      the right end likewise (``4r + 1`` for ``x + r`` even). Through ``h`` it is
      ``3r + 1``, through ``c`` it is ``r + 1``.

    The largest is frame to mask: ``4r + 1`` (5 for a 3x3 kernel). The contract's halo
    rounds it up to the alignment 2 (`convlstm_step_contract`).

    Args:
        kernel: Odd convolution kernel size.

    Returns:
        The radius: the largest distance between an output pixel and an input pixel that
        influences it.
    """
    if kernel < 1 or kernel % 2 == 0:
        raise ConfigError(f"kernel must be odd, got {kernel}")
    return 4 * ((kernel - 1) // 2) + 1


def convlstm_step_contract(
    filters: int = 4, kernel: int = 3, layout: str = "NHWC"
) -> ModelContract:
    """The contract of `convlstm_step_model` with the same arguments.

    One-channel input, alignment 2 (one pooling), a sigmoid output, ``temporal:
    "stateful"`` with states ``h`` and ``c`` (``filters`` channels, stride 2) and the
    window length 3; the halo is `convlstm_step_radius` rounded up to a multiple of the
    alignment (6 for a 3x3 kernel).
    """
    check_layout(layout)
    alignment = 2
    radius = convlstm_step_radius(kernel)
    return ModelContract(
        channels=1,
        layout=layout,
        alignment=alignment,
        halo=-(-radius // alignment) * alignment,
        output="sigmoid",
        temporal="stateful",
        time_steps=3,
        states=tuple(StateSpec(i, o, filters, 2) for i, o in STEP_STATES),
    )


def save(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Write a model to an ``.onnx`` file."""
    _onnx().save(model, os.fspath(path))
