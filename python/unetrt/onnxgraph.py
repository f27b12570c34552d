"""Read an ONNX model's graph without the ``onnx`` package, and bound its receptive field.

Inference must not depend on ``onnx``, so this module reads the protobuf wire format
itself, for exactly the messages we need (field numbers from ``onnx/onnx.proto``, cited
where they are used). `read_metadata` reads ``metadata_props`` and skips the graph;
`read_graph` returns the nodes, the graph inputs and outputs, and the initializers
(dims always, values only for small tensors: big weights are only ever needed for their
shape).

`receptive_field` derives, from the graph alone, an upper bound of how far an input
pixel can influence an output pixel: the halo a tile needs. The impulse probe of
`unetrt.model` measures the same thing by running the model, but it can only see
influence that the probe image happens to switch on (ReLUs silent around a random image
hide part of the field), so it underestimates trained networks.

Method. The bound is over the graph's *structure*: a pixel influences another if some
path of the graph reads it, whatever the weights. It is worked out per spatial axis
(height, width) in three steps:

1. Shapes and values. The graph is followed forward for one concrete input size
   (640 x 896, odd multiples of 128, or the model's fixed size), computing every
   tensor's shape, and the values of small tensors computed from constants and
   ``Shape`` ops: exporters (tf2onnx, PyTorch) compute crops, pads and resize sizes at
   run time from the shapes of image tensors, and those values are needed. Every tensor
   that depends on the image gets axis labels saying which of its axes is the frame's
   height and which its width; they follow Transposes, squeezes and Reshapes that keep
   a spatial axis whole or interleave it (a stack ``(H, 2)`` read as ``2H``), and an op
   that mixes a spatial axis as a whole (global pooling, a reduction or softmax over
   space, a reshape scattering it, control flow, an op not known here) makes the bound
   unknown: the caller falls back to the probe.
2. Jumps. Each image tensor has, per spatial axis, a jump ``j``: input pixels per
   tensor pixel (convolution and pooling strides multiply it, transposed convolutions,
   resizes and depth-to-space divide it; it is a fraction after upsampling by 3/2).
   Tensors combined elementwise must have equal jumps; outputs must have jump 1 and the
   input's size. The sampling grid (the alignment tile origins need) is the least
   common multiple ``P`` of the jumps' numerators: shifting the input by ``P`` pixels
   shifts every tensor by a whole number of its pixels, so the dependency pattern
   repeats with period ``P``.
3. Hulls. For each output position ``q`` of one period, the interval (hull) of pixels
   of every tensor that output pixel ``q`` depends on is followed backwards through the
   graph, exactly in integers: a window op (convolution or pooling with kernel ``k``,
   dilation ``d``, stride ``s``, begin pad ``pb``) needs input ``[a*s - pb,
   b*s - pb + (k-1)*d]`` for output ``[a, b]``; a transposed convolution gives output
   ``o`` the inputs ``i`` with ``i*s - o`` in ``[pb - (k-1)*d, pb]``, so it needs
   ``[ceil((a + pb - (k-1)*d) / s), floor((b + pb) / s)]``; a resize reads the pixels
   its interpolation kernel reaches around the mapped coordinate ``x = o/scale + c``
   (``c`` from the coordinate mode; nearest: the one pixel its rounding picks; linear
   and cubic: the pixels closer than 1 and 2, widened by ``1/scale`` with
   antialiasing); Pad and Slice shift; a concatenation along a spatial axis shifts
   each part to its offset; an interleaving reshape reads pixel ``o`` from ``o // 2``
   like depth-to-space; pointwise ops pass the hull through; tensors read by several
   ops take the union. At the input, the hull of output pixel ``q`` is
   ``[a, b]``, and the bound is ``max(q - a, b - q)`` over the period, over height and
   width. Where a begin pad is ambiguous (ConvTranspose with ``auto_pad`` SAME and an
   odd total pad, where runtimes have disagreed), both choices are covered.

The hull is exact for the structure of convolutions, pooling, transposed convolutions
and resizes (not a relaxation): for the U-Nets of `unetrt.testing` and of
`unetrt.train.models` it equals their analytic radius. Concatenations along a spatial
axis and interleaving reshapes are covered part by part at every position, a slight
over-estimate (32 for 29 measured, for a bilinear upsampling built from slices). It
ignores the frame border, which only removes influence. Tensors computed only from
shapes carry no pixel influence.

Cost: one pass over the nodes in Python and a few array operations per node and axis;
a few milliseconds for a 300-node U-Net.
"""

from __future__ import annotations

import math
import os
import struct
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelError

#: Tensors with at most this many elements get their values decoded.
MAX_VALUES = 1024
#: Spatial size the graph is followed at when the input's is dynamic: odd multiples of 128,
#: the largest alignment `unetrt.model` probes, so every pooling level divides evenly.
ANALYSIS_SIZE = (640, 896)
#: Opset assumed when a model declares none for the default domain.
DEFAULT_OPSET = 21
#: Largest period (sampling grid) followed; beyond it the jumps are not those of a U-Net.
MAX_PERIOD = 1 << 16
# Values computed from constants are kept up to this many elements (shape arithmetic).
_MAX_FOLDED = 1 << 20

# ------------------------------------------------------------------------ data model


@dataclass(frozen=True)
class Tensor:
    """An initializer or constant tensor.

    Attributes:
        dims: Its shape.
        data_type: ONNX ``TensorProto.DataType`` (1 float32, 6 int32, 7 int64, 11 double...).
        values: The values as an array of shape ``dims``, for tensors of at most
            `MAX_VALUES` elements of a numeric type stored in the file; ``None`` otherwise
            (big weights, external data, strings).
    """

    dims: tuple[int, ...]
    data_type: int
    values: np.ndarray | None = None


@dataclass(frozen=True)
class Subgraph:
    """An attribute holding graphs (the body of Loop, Scan, If); only counted."""

    graphs: int


@dataclass(frozen=True)
class Node:
    """One operator of the graph.

    Attributes:
        op_type: E.g. ``"Conv"``.
        name: The node name (may be empty).
        domain: Operator domain (``""`` for standard ONNX).
        inputs: Input tensor names (``""`` for an omitted optional input).
        outputs: Output tensor names.
        attributes: Attribute values: int, float, str, `Tensor`, tuples of those, a
            `Subgraph` for GRAPH/GRAPHS, ``None`` for kinds not decoded.
    """

    op_type: str
    name: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict[str, Any]


Dim = int | str | None


@dataclass(frozen=True)
class Graph:
    """The main graph of a model.

    Attributes:
        nodes: Operators, in the file's (topological) order.
        inputs: Graph inputs that are not initializers.
        outputs: Graph outputs.
        initializers: Initializer tensors by name.
        shapes: Declared shapes of the graph inputs and outputs: per dim an int, a
            symbolic name, or ``None``; missing for non-tensor values.
        opsets: Opset version per operator domain (``""`` is standard ONNX).
    """

    nodes: tuple[Node, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    initializers: dict[str, Tensor]
    shapes: dict[str, tuple[Dim, ...]] = field(default_factory=dict)
    opsets: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class HaloBound:
    """An upper bound of a model's receptive-field radius, from its graph.

    Attributes:
        radius: The bound in input pixels, or ``None`` when the graph holds something
            it cannot bound (then probe the model instead).
        reason: How it was obtained, or what prevented it, in words.
        alignment: The sampling grid of the graph (least common multiple of the jumps;
            ``2**pools`` for a U-Net), ``None`` with the radius.
    """

    radius: int | None
    reason: str
    alignment: int | None = None


# ------------------------------------------------------------------ protobuf wire format


class _WireError(Exception):
    """The bytes are not a well-formed protobuf message."""

    def __init__(self, message: str, truncated: bool = False) -> None:
        super().__init__(message)
        self.truncated = truncated


_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_S64 = 1 << 64
_S63 = 1 << 63


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise _WireError("a number runs past the end of its message", end == len(buf))
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _WireError("a varint is longer than 10 bytes")


def _fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(field, wire type, x, y)`` for each field of the message in ``buf[pos:end]``.

    For varints ``x`` is the value; for fixed-size and length-delimited fields the
    payload is ``buf[x:y]`` (not copied: skipping a field costs nothing).
    """
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _WireError("field number 0")
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, 0
            continue
        if wire == _LEN:
            size, pos = _varint(buf, pos, end)
            stop = pos + size
        elif wire == _I64:
            stop = pos + 8
        elif wire == _I32:
            stop = pos + 4
        else:  # 3 and 4 are proto2 groups, never used by ONNX; 6 and 7 do not exist
            raise _WireError(f"wire type {wire} in field {number}")
        if stop > end:
            raise _WireError(f"field {number} runs past the end of its message", end == len(buf))
        yield number, wire, pos, stop
        pos = stop


def _signed(value: int) -> int:
    """Two's complement: negative int32/int64 values are sign-extended to 64 bits."""
    return value - _S64 if value >= _S63 else value


def _expect(wire: int, wanted: int, number: int, message: str) -> None:
    if wire != wanted:
        raise _WireError(f"{message} field {number} has wire type {wire}, expected {wanted}")


def _string(buf: bytes, x: int, y: int) -> str:
    return buf[x:y].decode("utf-8", errors="replace")


def _ints(buf: bytes, wire: int, x: int, y: int) -> list[int]:
    """A repeated integer field's values in one record: unpacked (varint) or packed."""
    if wire == _VARINT:
        return [_signed(x)]
    if wire != _LEN:
        raise _WireError(f"an integer list has wire type {wire}")
    out = []
    pos = x
    while pos < y:
        value, pos = _varint(buf, pos, y)
        out.append(_signed(value))
    return out


def _floats(buf: bytes, wire: int, x: int, y: int, double: bool) -> np.ndarray:
    """A repeated float/double field's values in one record: unpacked or packed."""
    size = 8 if double else 4
    if wire == (_I64 if double else _I32) or (wire == _LEN and (y - x) % size == 0):
        return np.frombuffer(buf, "<f8" if double else "<f4", (y - x) // size, x)
    raise _WireError(f"a float list has wire type {wire} and {y - x} bytes")


# TensorProto.DataType -> (dtype of raw_data, typed field holding it, dtype to decode it as)
_DTYPES: dict[int, tuple[str, int, str]] = {
    1: ("<f4", 4, "<f4"),  # FLOAT: float_data = 4
    2: ("u1", 5, "u1"),  # UINT8: int32_data = 5
    3: ("i1", 5, "i1"),  # INT8
    4: ("<u2", 5, "<u2"),  # UINT16
    5: ("<i2", 5, "<i2"),  # INT16
    6: ("<i4", 5, "<i4"),  # INT32
    7: ("<i8", 7, "<i8"),  # INT64: int64_data = 7
    9: ("?", 5, "?"),  # BOOL
    11: ("<f8", 10, "<f8"),  # DOUBLE: double_data = 10
    12: ("<u4", 11, "<u4"),  # UINT32: uint64_data = 11
    13: ("<u8", 11, "<u8"),  # UINT64
}


def _tensor(buf: bytes, x: int, y: int) -> tuple[str, Tensor]:
    """Parse a TensorProto; returns its name and the tensor."""
    dims: list[int] = []
    data_type = 0
    name = ""
    raw: tuple[int, int] | None = None
    typed: dict[int, list[tuple[int, int, int]]] = {}
    external = False
    for number, wire, a, b in _fields(buf, x, y):
        if number == 1:  # repeated int64 dims = 1
            dims.extend(_ints(buf, wire, a, b))
        elif number == 2:  # int32 data_type = 2
            _expect(wire, _VARINT, number, "TensorProto")
            data_type = _signed(a)
        elif number == 8:  # string name = 8
            name = _string(buf, a, b)
        elif number == 9:  # bytes raw_data = 9
            raw = (a, b)
        elif number in (4, 5, 7, 10, 11):  # float_data, int32_data, int64_data, double, uint64
            typed.setdefault(number, []).append((wire, a, b))
        elif number == 14:  # DataLocation data_location = 14 (EXTERNAL = 1)
            external = a == 1
    return name, Tensor(tuple(dims), data_type, _values(buf, dims, data_type, raw, typed, external))


def _values(
    buf: bytes,
    dims: list[int],
    data_type: int,
    raw: tuple[int, int] | None,
    typed: dict[int, list[tuple[int, int, int]]],
    external: bool,
) -> np.ndarray | None:
    count = math.prod(dims)
    kind = _DTYPES.get(data_type)
    if external or kind is None or count > MAX_VALUES or count < 0:
        return None
    raw_dtype, number, dtype = kind
    if raw is not None:
        itemsize = np.dtype(raw_dtype).itemsize
        if raw[1] - raw[0] != count * itemsize:
            raise _WireError(
                f"a tensor of {count} elements has {raw[1] - raw[0]} bytes of raw data"
            )
        values = np.frombuffer(buf, raw_dtype, count, raw[0])
    else:
        records = typed.get(number, [])
        if number in (4, 10):
            parts = [_floats(buf, w, a, b, number == 10) for w, a, b in records]
            values = np.concatenate(parts) if parts else np.zeros(0, dtype)
        else:
            ints = [v for w, a, b in records for v in _ints(buf, w, a, b)]
            if number == 11:  # uint64_data holds unsigned values; undo _signed
                ints = [v % _S64 for v in ints]
            values = np.array(ints, dtype=np.int64 if number != 11 else np.uint64)
        if values.size != count:
            raise _WireError(f"a tensor of {count} elements holds {values.size} values")
    return np.array(values.astype(dtype, copy=False).reshape(dims))


# AttributeProto.AttributeType
_FLOAT, _INT, _STRING, _TENSOR, _GRAPH = 1, 2, 3, 4, 5
_FLOATS, _INTS, _STRINGS, _TENSORS, _GRAPHS = 6, 7, 8, 9, 10


def _attribute(buf: bytes, x: int, y: int) -> tuple[str, Any]:
    """Parse an AttributeProto into ``(name, value)``."""
    name = ""
    kind = 0
    f: float | None = None
    i: int | None = None
    s: str | None = None
    t: Tensor | None = None
    g = 0
    floats: list[float] = []
    ints: list[int] = []
    strings: list[str] = []
    tensors: list[Tensor] = []
    graphs = 0
    for number, wire, a, b in _fields(buf, x, y):
        if number == 1:  # string name = 1
            name = _string(buf, a, b)
        elif number == 20:  # AttributeType type = 20
            kind = _signed(a)
        elif number == 2:  # float f = 2
            _expect(wire, _I32, number, "AttributeProto")
            f = float(struct.unpack_from("<f", buf, a)[0])
        elif number == 3:  # int64 i = 3
            _expect(wire, _VARINT, number, "AttributeProto")
            i = _signed(a)
        elif number == 4:  # bytes s = 4
            s = _string(buf, a, b)
        elif number == 5:  # TensorProto t = 5
            t = _tensor(buf, a, b)[1]
        elif number == 6:  # GraphProto g = 6
            g = 1
        elif number == 7:  # repeated float floats = 7
            floats.extend(float(v) for v in _floats(buf, wire, a, b, False))
        elif number == 8:  # repeated int64 ints = 8
            ints.extend(_ints(buf, wire, a, b))
        elif number == 9:  # repeated bytes strings = 9
            strings.append(_string(buf, a, b))
        elif number == 10:  # repeated TensorProto tensors = 10
            tensors.append(_tensor(buf, a, b)[1])
        elif number == 11:  # repeated GraphProto graphs = 11
            graphs += 1
    if kind == 0:  # written before the type field existed: the field present tells
        present = [(f, _FLOAT), (i, _INT), (s, _STRING), (t, _TENSOR)]
        kind = next((k for v, k in present if v is not None), 0)
        lists = [(floats, _FLOATS), (ints, _INTS), (strings, _STRINGS), (tensors, _TENSORS)]
        kind = kind or next((k for v, k in lists if v), 0)
        kind = kind or (_GRAPH if g else _GRAPHS if graphs else 0)
    value: Any = {
        _FLOAT: f if f is not None else 0.0,
        _INT: i if i is not None else 0,
        _STRING: s if s is not None else "",
        _TENSOR: t,
        _GRAPH: Subgraph(1),
        _FLOATS: tuple(floats),
        _INTS: tuple(ints),
        _STRINGS: tuple(strings),
        _TENSORS: tuple(tensors),
        _GRAPHS: Subgraph(graphs),
    }.get(kind)
    return name, value


def _node(buf: bytes, x: int, y: int) -> Node:
    inputs: list[str] = []
    outputs: list[str] = []
    name = op_type = domain = ""
    attributes: dict[str, Any] = {}
    for number, _wire, a, b in _fields(buf, x, y):
        if number == 1:  # repeated string input = 1
            inputs.append(_string(buf, a, b))
        elif number == 2:  # repeated string output = 2
            outputs.append(_string(buf, a, b))
        elif number == 3:  # string name = 3
            name = _string(buf, a, b)
        elif number == 4:  # string op_type = 4
            op_type = _string(buf, a, b)
        elif number == 7:  # string domain = 7
            domain = _string(buf, a, b)
        elif number == 5:  # repeated AttributeProto attribute = 5
            key, value = _attribute(buf, a, b)
            attributes[key] = value
    return Node(op_type, name, domain, tuple(inputs), tuple(outputs), attributes)


def _value_info(buf: bytes, x: int, y: int) -> tuple[str, tuple[Dim, ...] | None]:
    """Parse a ValueInfoProto into its name and, for a tensor, its declared shape."""
    name = ""
    shape: tuple[Dim, ...] | None = None
    for number, _wire, a, b in _fields(buf, x, y):
        if number == 1:  # string name = 1
            name = _string(buf, a, b)
        elif number == 2:  # TypeProto type = 2
            for n2, _w2, a2, b2 in _fields(buf, a, b):
                if n2 != 1:  # TypeProto.Tensor tensor_type = 1
                    continue
                for n3, _w3, a3, b3 in _fields(buf, a2, b2):
                    if n3 == 2:  # TensorShapeProto shape = 2
                        shape = tuple(
                            _dim(buf, a4, b4) for n4, _w4, a4, b4 in _fields(buf, a3, b3) if n4 == 1
                        )  # repeated Dimension dim = 1
    return name, shape


def _dim(buf: bytes, x: int, y: int) -> Dim:
    value: Dim = None
    for number, wire, a, b in _fields(buf, x, y):
        if number == 1 and wire == _VARINT:  # int64 dim_value = 1
            value = _signed(a)
        elif number == 2:  # string dim_param = 2
            value = _string(buf, a, b)
    return value


def _graph(buf: bytes, x: int, y: int, opsets: dict[str, int]) -> Graph:
    nodes: list[Node] = []
    inputs: list[str] = []
    outputs: list[str] = []
    initializers: dict[str, Tensor] = {}
    shapes: dict[str, tuple[Dim, ...]] = {}
    for number, wire, a, b in _fields(buf, x, y):
        if number in (1, 5, 11, 12, 15):
            _expect(wire, _LEN, number, "GraphProto")
        if number == 1:  # repeated NodeProto node = 1
            nodes.append(_node(buf, a, b))
        elif number == 5:  # repeated TensorProto initializer = 5
            name, tensor = _tensor(buf, a, b)
            initializers[name] = tensor
        elif number == 15:  # repeated SparseTensorProto sparse_initializer = 15
            name, tensor = _sparse(buf, a, b)
            initializers[name] = tensor
        elif number in (11, 12):  # repeated ValueInfoProto input = 11, output = 12
            name, shape = _value_info(buf, a, b)
            (inputs if number == 11 else outputs).append(name)
            if shape is not None:
                shapes[name] = shape
    # Before IR version 4 initializers were also listed as inputs (as their defaults).
    graph_inputs = tuple(n for n in inputs if n not in initializers)
    return Graph(tuple(nodes), graph_inputs, tuple(outputs), initializers, shapes, opsets)


def _sparse(buf: bytes, x: int, y: int) -> tuple[str, Tensor]:
    """A SparseTensorProto: its name (from values) and dims; values are not decoded."""
    name, data_type, dims = "", 0, []
    for number, wire, a, b in _fields(buf, x, y):
        if number == 1:  # TensorProto values = 1
            name, values = _tensor(buf, a, b)
            data_type = values.data_type
        elif number == 3:  # repeated int64 dims = 3
            dims.extend(_ints(buf, wire, a, b))
    return name, Tensor(tuple(dims), data_type, None)


@dataclass
class _Model:
    metadata: dict[str, str]
    opsets: dict[str, int]
    graph: tuple[int, int] | None


def _model(buf: bytes) -> _Model:
    """Parse the top level of a ModelProto, keeping the graph as a byte range."""
    ir_version = None
    metadata: dict[str, str] = {}
    opsets: dict[str, int] = {}
    graph = None
    for number, wire, a, b in _fields(buf, 0, len(buf)):
        if number == 1:  # int64 ir_version = 1
            _expect(wire, _VARINT, number, "ModelProto")
            ir_version = a
        elif number == 7:  # GraphProto graph = 7
            _expect(wire, _LEN, number, "ModelProto")
            graph = (a, b)
        elif number == 8:  # repeated OperatorSetIdProto opset_import = 8
            _expect(wire, _LEN, number, "ModelProto")
            domain, version = "", 0
            for n2, w2, a2, b2 in _fields(buf, a, b):
                if n2 == 1:  # string domain = 1
                    domain = _string(buf, a2, b2)
                elif n2 == 2 and w2 == _VARINT:  # int64 version = 2
                    version = _signed(a2)
            opsets[domain] = version
        elif number == 14:  # repeated StringStringEntryProto metadata_props = 14
            _expect(wire, _LEN, number, "ModelProto")
            key = value = ""
            for n2, _w2, a2, b2 in _fields(buf, a, b):
                if n2 == 1:  # string key = 1
                    key = _string(buf, a2, b2)
                elif n2 == 2:  # string value = 2
                    value = _string(buf, a2, b2)
            metadata[key] = value
        elif number in (2, 3, 4, 6) and wire != _LEN:  # producer_name, version, domain, doc
            raise _WireError(f"ModelProto field {number} has wire type {wire}")
    if ir_version is None:
        raise _WireError("no IR version")
    if graph is None:
        raise _WireError("no graph")
    return _Model(metadata, opsets, graph)


def _load(model: str | os.PathLike[str] | bytes) -> tuple[bytes, str]:
    if isinstance(model, bytes | bytearray | memoryview):
        return bytes(model), "the model"
    path = Path(model)
    label = f"model file {path}"
    try:
        return path.read_bytes(), label
    except FileNotFoundError:
        raise ModelError(f"{label} does not exist") from None
    except IsADirectoryError:
        raise ModelError(f"{label} is a directory, not an .onnx file") from None
    except OSError as exc:
        raise ModelError(f"cannot read {label}: {exc.strerror or exc}") from None


def _parse(model: str | os.PathLike[str] | bytes, what: Callable[[bytes, _Model], Any]) -> Any:
    buf, label = _load(model)
    try:
        return what(buf, _model(buf))
    except _WireError as exc:
        if exc.truncated:
            raise ModelError(
                f"{label} is truncated ({len(buf)} bytes): {exc}; copy or export it again"
            ) from None
        if not buf:
            raise ModelError(f"{label} is empty, not an ONNX model") from None
        raise ModelError(f"{label} is not an ONNX model (invalid protobuf: {exc})") from None


def read_metadata(model: str | os.PathLike[str] | bytes) -> dict[str, str]:
    """Read a model's ``metadata_props`` without parsing its graph.

    Args:
        model: An ``.onnx`` file or its bytes.

    Returns:
        The metadata entries, key to value.

    Raises:
        ModelError: If the file is missing, unreadable, truncated or not an ONNX model.
    """
    return dict(_parse(model, lambda buf, m: m.metadata))


def read_graph(model: str | os.PathLike[str] | bytes) -> Graph:
    """Read a model's main graph: nodes, inputs, outputs and initializers.

    Args:
        model: An ``.onnx`` file or its bytes.

    Returns:
        The graph; see `Graph`.

    Raises:
        ModelError: If the file is missing, unreadable, truncated or not an ONNX model.
    """

    def graph(buf: bytes, m: _Model) -> Graph:
        assert m.graph is not None
        return _graph(buf, m.graph[0], m.graph[1], m.opsets)

    result: Graph = _parse(model, graph)
    return result


# --------------------------------------------------------------- receptive-field bound


class _Refuse(Exception):
    """The graph holds something whose reach cannot be bounded; the message says what."""


_EMPTY = 1 << 40  # an empty hull is (+_EMPTY, -_EMPTY): it vanishes in unions
IntArray = np.ndarray
Hull = tuple[IntArray, IntArray]


class _AxisMap:
    """Maps the hull of output pixels ``[a, b]`` along one axis to the input pixels read."""

    factor: Fraction  # input tensor pixels per output tensor pixel
    moves = True  # whether it reads other pixels than its own (for the reason's op count)

    def __call__(self, a: IntArray, b: IntArray) -> Hull:
        raise NotImplementedError


class _Identity(_AxisMap):
    factor = Fraction(1)
    moves = False

    def __call__(self, a: IntArray, b: IntArray) -> Hull:
        return a, b


_IDENTITY = _Identity()


class _Window(_AxisMap):
    """Output pixel ``o`` reads input ``o*stride - pad + [0, span]``; the pad is a range."""

    def __init__(self, stride: int, pad_lo: int, pad_hi: int, span: int) -> None:
        self.factor = Fraction(stride)
        self.stride, self.pad_lo, self.pad_hi, self.span = stride, pad_lo, pad_hi, span
        self.moves = (stride, pad_lo, pad_hi, span) != (1, 0, 0, 0)

    def __call__(self, a: IntArray, b: IntArray) -> Hull:
        return a * self.stride - self.pad_hi, b * self.stride - self.pad_lo + self.span


def _shift(offset: int, step: int = 1) -> _Window:
    """Output pixel ``o`` reads input ``offset + o*step`` (Slice, Pad, Split)."""
    return _Window(step, -offset, -offset, 0)


class _Transposed(_AxisMap):
    """Transposed convolution: output ``o`` reads inputs ``i`` with ``i*s - o`` in
    ``[pad - span, pad]``; the pad is a range."""

    def __init__(self, stride: int, pad_lo: int, pad_hi: int, span: int) -> None:
        self.factor = Fraction(1, stride)
        self.stride, self.pad_lo, self.pad_hi, self.span = stride, pad_lo, pad_hi, span

    def __call__(self, a: IntArray, b: IntArray) -> Hull:
        return -((self.span - self.pad_lo - a) // self.stride), (b + self.pad_hi) // self.stride


class _Resample(_AxisMap):
    """Resize: output ``o`` maps to ``x = o / scale + c``, ``c`` in ``[c_lo, c_hi]``.

    ``nearest`` is a rounding mode (or ``"either"``: floor or ceil, for the old
    Upsample and Resize-10 whose rounding runtimes differ on); otherwise the kernel
    reads the pixels closer to ``x`` than ``support``.
    """

    def __init__(
        self,
        scale: Fraction,
        c_lo: Fraction,
        c_hi: Fraction,
        nearest: str | None,
        support: Fraction,
    ) -> None:
        self.factor = 1 / scale
        self.scale, self.c_lo, self.c_hi = scale, c_lo, c_hi
        self.nearest, self.support = nearest, support

    def _lo(self, x: Fraction) -> int:
        if self.nearest is None:
            return math.floor(x - self.support) + 1
        if self.nearest in ("floor", "either"):
            return math.floor(x)
        if self.nearest == "ceil":
            return math.ceil(x)
        half = Fraction(1, 2)  # round_prefer_floor: ceil(x - 1/2); prefer_ceil: floor(x + 1/2)
        return math.ceil(x - half) if self.nearest == "round_prefer_floor" else math.floor(x + half)

    def _hi(self, x: Fraction) -> int:
        if self.nearest is None:
            return math.ceil(x + self.support) - 1
        if self.nearest == "floor":
            return math.floor(x)
        if self.nearest in ("ceil", "either"):
            return math.ceil(x)
        half = Fraction(1, 2)
        return math.ceil(x - half) if self.nearest == "round_prefer_floor" else math.floor(x + half)

    def __call__(self, a: IntArray, b: IntArray) -> Hull:
        lo, hi = a.copy(), b.copy()
        for k in range(a.size):
            lo[k] = self._lo(int(a[k]) / self.scale + self.c_lo)
            hi[k] = self._hi(int(b[k]) / self.scale + self.c_hi)
        return lo, hi


@dataclass
class _Edge:
    out: str
    src: str
    maps: dict[str, _AxisMap]


Shape = tuple[int, ...]
Labels = tuple[str | None, ...]

_SPATIAL = ("height", "width")
_CONTROL_FLOW = {"If", "Loop", "Scan", "SequenceMap"}
_UNARY = {
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "BatchNormalization", "Cast",
    "CastLike", "Ceil", "Celu", "Cos", "Cosh", "DequantizeLinear", "Dropout", "Elu", "Erf",
    "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish", "Identity", "IsInf", "IsNaN",
    "LeakyRelu", "Log", "Mish", "Neg", "Not", "QuantizeLinear", "Reciprocal", "Relu",
    "Round", "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Softplus", "Softsign",
    "Sqrt", "Swish", "Tan", "Tanh", "ThresholdedRelu", "LRN",
}  # fmt: skip
_ELEMENTWISE = {
    "Add", "And", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Clip", "Div", "Equal",
    "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Max", "Mean", "Min", "Mod", "Mul",
    "Or", "Pow", "PRelu", "Sub", "Sum", "Where", "Xor",
}  # fmt: skip
_REDUCE = {
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare",
}  # fmt: skip
# Inputs of unary ops that are parameters (the CastLike target only lends its type).
_NO_INFLUENCE = {"CastLike": (1,)}
# Ops whose reach is counted in the reason.
_COUNTED = {
    "Conv", "ConvInteger", "QLinearConv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool",
    "Resize", "Upsample", "DepthToSpace", "SpaceToDepth",
}  # fmt: skip


def _axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise _Refuse(f"axis {axis} out of range for rank {rank}")
    return axis % rank


def _slice_range(dim: int, start: int, end: int, step: int) -> tuple[int, int, int]:
    """Effective start, end and length of a Slice along one axis (ONNX rules)."""
    if step == 0:
        raise _Refuse("Slice with step 0")
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return start, end, max(0, -((start - end) // step) if step > 0 else -((end - start) // -step))


def _reshape_target(shape: Shape, target: Sequence[int], allowzero: bool) -> Shape:
    out = [
        shape[i] if d == 0 and not allowzero and i < len(shape) else int(d)
        for i, d in enumerate(target)
    ]
    total = math.prod(shape)
    if out.count(-1) > 1:
        raise _Refuse("Reshape with more than one -1")
    if -1 in out:
        rest = math.prod(d for d in out if d != -1)
        if rest == 0 or total % rest:
            raise _Refuse(f"cannot reshape {list(shape)} to {list(target)}")
        out[out.index(-1)] = total // rest
    if math.prod(out) != total:
        raise _Refuse(f"cannot reshape {list(shape)} to {list(target)}")
    return tuple(out)


def _regroup(
    shape: Shape, labels: Labels, out: Shape, what: str
) -> tuple[Labels, dict[str, _AxisMap]]:
    """Labels of a reshaped tensor, and how its spatial axes read the input's.

    Dims are matched in groups of equal products. A spatial axis kept whole keeps its
    pixels; one merged with the (non-spatial) dims after it, ``(H, b) -> H*b``, is read
    like depth-to-space (pixel ``o`` from ``o // b``: how a stack interleaves two
    images); one split as ``H*b -> (H, b)`` like space-to-depth. Any other regrouping
    of a spatial axis scatters its pixels over the frame and is refused.
    """
    result: list[str | None] = [None] * len(out)
    maps: dict[str, _AxisMap] = {}
    i = j = 0
    while True:
        while i < len(shape) and shape[i] == 1:
            if labels[i]:
                raise _Refuse(f"{what} drops the {labels[i]} axis")
            i += 1
        while j < len(out) and out[j] == 1:
            j += 1
        if i == len(shape) or j == len(out):
            break
        group_in, group_out = [i], [j]
        p, r = shape[i], out[j]
        i, j = i + 1, j + 1
        while p != r:
            if p < r and i < len(shape):
                p, i = p * shape[i], i + 1
                group_in.append(i - 1)
            elif r < p and j < len(out):
                r, j = r * out[j], j + 1
                group_out.append(j - 1)
            else:
                raise _Refuse(f"{what}: sizes {list(shape)} and {list(out)} do not match")
        kept_in = [k for k in group_in if shape[k] != 1]
        kept_out = [k for k in group_out if out[k] != 1]
        spatial = [lb for lb in (labels[k] for k in kept_in) if lb]
        if not spatial:
            continue
        label = spatial[0]
        outer = labels[kept_in[0]] == label and len(spatial) == 1
        if outer and len(kept_out) == 1:  # kept whole, or (H, b) -> H*b
            block = math.prod(shape[k] for k in kept_in[1:])
            maps[label] = _IDENTITY if block == 1 else _Transposed(block, 0, 0, block - 1)
            result[kept_out[0]] = label
        elif outer and len(kept_in) == 1:  # H*b -> (H, b)
            block = math.prod(out[k] for k in kept_out[1:])
            maps[label] = _Window(block, 0, 0, block - 1)
            result[kept_out[0]] = label
        else:
            raise _Refuse(f"{what} scatters the {label} axis over others")
    if any(labels[k] for k in range(i, len(shape))):
        raise _Refuse(f"{what} drops a spatial axis")
    return tuple(result), maps


def _pads_and_sizes(
    node: Node,
    sizes: Shape,
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> list[tuple[int, int, int]]:
    """Per spatial axis of a convolution or pooling: (begin pad, end pad, output size)."""
    n = len(kernel)
    auto = node.attributes.get("auto_pad", "NOTSET")
    pads = list(node.attributes.get("pads", (0,) * (2 * n)))
    ceil_mode = bool(node.attributes.get("ceil_mode", 0))
    result = []
    for i in range(n):
        size, k, s, d = sizes[i], kernel[i], strides[i], dilations[i]
        extent = (k - 1) * d + 1
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            out = -(-size // s)
            total = max((out - 1) * s + extent - size, 0)
            begin = total // 2 if auto == "SAME_UPPER" else total - total // 2
            result.append((begin, total - begin, out))
            continue
        begin, end = (0, 0) if auto == "VALID" else (pads[i], pads[i + n])
        span = size + begin + end - extent
        out = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (out - 1) * s >= size + begin:  # a window may not start in the pad
            out -= 1
        result.append((begin, end, out))
    return result


class _Analysis:
    """Follows the graph forward for one input size; see the module docstring."""

    def __init__(self, graph: Graph, image: str, spatial_axes: tuple[int, int]) -> None:
        self.graph = graph
        self.opset = graph.opsets.get("", graph.opsets.get("ai.onnx", DEFAULT_OPSET))
        self.image = image
        self.shapes: dict[str, Shape] = {}
        self.values: dict[str, np.ndarray] = {}
        self.labels: dict[str, Labels] = {}  # image-dependent tensors only
        self.jumps: dict[str, dict[str, Fraction]] = {}
        self.edges: list[_Edge] = []
        self.ops: Counter[str] = Counter()
        # Tensors downstream of something unboundable, with the reason; an output among
        # them makes the bound unknown, a branch that reaches no output does not matter.
        self.tainted: dict[str, str] = {}
        self._new: dict[str, tuple[Shape, Labels]] = {}
        self._new_edges: list[_Edge] = []
        self._inputs(spatial_axes)

    # ---------------------------------------------------------------- set-up
    def _inputs(self, spatial_axes: tuple[int, int]) -> None:
        declared = self.graph.shapes.get(self.image)
        if declared is None or len(declared) != 4:
            raise _Refuse(
                f"input '{self.image}' is not a 4-D image tensor (shape "
                f"{list(declared) if declared is not None else 'unknown'})"
            )
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in declared]
        symbols: dict[str, int] = {}
        for axis, size in zip(spatial_axes, ANALYSIS_SIZE, strict=True):
            d = declared[axis]
            shape[axis] = d if isinstance(d, int) and d > 0 else size
            if isinstance(d, str):
                symbols[d] = shape[axis]
        labels: list[str | None] = [None] * 4
        for axis, label in zip(spatial_axes, _SPATIAL, strict=True):
            labels[axis] = label
        self.shapes[self.image] = tuple(shape)
        self.labels[self.image] = tuple(labels)
        self.jumps[self.image] = dict.fromkeys(_SPATIAL, Fraction(1))
        for name in self.graph.inputs:
            if name == self.image:
                continue
            # Other inputs (recurrent state, say) are not the image; give their dynamic
            # dims the image's sizes where the names or positions say they are the same.
            other = self.graph.shapes.get(name)
            if other is None:
                continue
            dims = []
            for axis, d in enumerate(other):
                if isinstance(d, int) and d >= 0:
                    dims.append(d)
                elif isinstance(d, str) and d in symbols:
                    dims.append(symbols[d])
                elif len(other) == 4 and axis in spatial_axes:
                    dims.append(self.shapes[self.image][axis])
                else:
                    dims.append(1)
            self.shapes[name] = tuple(dims)
        for name, tensor in self.graph.initializers.items():
            self.shapes[name] = tensor.dims
            if tensor.values is not None:
                self.values[name] = tensor.values

    # ------------------------------------------------------------- accessors
    def shape(self, name: str) -> Shape:
        shape = self.shapes.get(name)
        if shape is None:
            raise _Refuse(f"the shape of '{name}' cannot be known from the graph alone")
        return shape

    def value(self, name: str, what: str) -> np.ndarray:
        value = self.values.get(name)
        if value is None:
            raise _Refuse(f"its {what} ('{name}') cannot be known from the graph alone")
        return value

    def ints(self, node: Node, index: int, attr: str, what: str) -> list[int] | None:
        """An integer list given as input ``index`` (newer opsets) or attribute ``attr``."""
        if index < len(node.inputs) and node.inputs[index]:
            return [int(v) for v in self.value(node.inputs[index], what).reshape(-1)]
        value = node.attributes.get(attr)
        return None if value is None else [int(v) for v in np.atleast_1d(value)]

    def lab(self, name: str) -> Labels:
        labels = self.labels.get(name)
        return labels if labels is not None else (None,) * len(self.shape(name))

    def emit(self, name: str, shape: Sequence[int], labels: Sequence[str | None]) -> None:
        if name:
            self._new[name] = (tuple(int(d) for d in shape), tuple(labels))

    def edge(self, out: str, src: str, maps: dict[str, _AxisMap] | None = None) -> None:
        """Output ``out`` reads ``src``: through ``maps`` per spatial axis (default: as is)."""
        if not out or src not in self.labels:
            return
        if maps is None:
            maps = {label: _IDENTITY for label in self.labels[src] if label}
        self._new_edges.append(_Edge(out, src, maps))

    # --------------------------------------------------------------- forward
    def run(self) -> None:
        for node in self.graph.nodes:
            self._run_node(node)

    def _taint(self, node: Node, reason: str) -> None:
        for name in node.outputs:
            if name:
                self.tainted[name] = reason

    def _run_node(self, node: Node) -> None:
        op = node.op_type
        where = f"{op} '{node.name or (node.outputs[0] if node.outputs else '')}'"
        if op in _CONTROL_FLOW or any(isinstance(v, Subgraph) for v in node.attributes.values()):
            # A subgraph may read any tensor of the outer graph, image ones included.
            self._taint(node, f"{where} runs a subgraph (control flow)")
            return
        if op in ("Shape", "Size"):  # shapes carry no pixel influence
            if node.inputs[0] in self.shapes:
                self._shape_op(node)
            return
        tainted = next((self.tainted[n] for n in node.inputs if n in self.tainted), None)
        if tainted is not None:
            self._taint(node, tainted)
            return
        image = [n for n in node.inputs if n in self.labels]
        if node.domain not in ("", "ai.onnx"):
            if image:
                self._taint(node, f"{where} of domain '{node.domain}' is not an ONNX standard op")
            return
        if not image:
            folded = self._fold(node)
            if folded is not None:
                for name, value in zip(node.outputs, folded, strict=False):
                    if name:
                        self.values[name] = value
                        self.shapes[name] = tuple(value.shape)
                return
        handler = _HANDLERS.get(op)
        self._new, self._new_edges = {}, []
        try:
            if handler is None:
                raise _Refuse("not an op the analysis knows")
            handler(self, node)
        except _Refuse as exc:
            if image:
                self._taint(node, f"{where}: {exc}")
            return  # a shape computation we cannot follow; refused if an image op needs it
        if image:
            try:
                self._commit(node, where, image)
            except _Refuse as exc:
                self._taint(node, str(exc))
                return
        for name, (shape, _labels) in self._new.items():
            self.shapes[name] = shape

    def _commit(self, node: Node, where: str, image: list[str]) -> None:
        read = {e.src for e in self._new_edges}
        skipped = [n for i, n in enumerate(node.inputs) if n in image and n not in read]
        skipped = [
            n for n in skipped if node.inputs.index(n) not in _NO_INFLUENCE.get(node.op_type, ())
        ]
        if skipped:
            raise _Refuse(f"{where} takes '{skipped[0]}' from the image in a way it cannot bound")
        for e in self._new_edges:
            lost = {label for label in self.labels[e.src] if label} - set(e.maps)
            if lost:
                raise _Refuse(f"{where} loses track of the {sorted(lost)[0]} axis")
        counted = False
        for name, (_shape, labels) in self._new.items():
            jumps: dict[str, Fraction] = {}
            for label in (lb for lb in labels if lb):
                found = {
                    self.jumps[e.src][label] * e.maps[label].factor
                    for e in self._new_edges
                    if e.out == name and label in e.maps
                }
                if len(found) != 1:
                    steps = ", ".join(sorted(str(j) for j in found)) or "none"
                    raise _Refuse(
                        f"{where} combines tensors at different resolutions along the {label} "
                        f"axis (input pixels per pixel: {steps})"
                    )
                jumps[label] = found.pop()
            self.labels[name] = labels
            self.jumps[name] = jumps
            counted = True
        self.edges.extend(self._new_edges)
        if counted and node.op_type in _COUNTED:
            self.ops[node.op_type] += 1
        elif counted and any(m.moves for e in self._new_edges for m in e.maps.values()):
            self.ops[node.op_type] += 1  # a Pad, Slice, Concat or Reshape that moves pixels

    def _shape_op(self, node: Node) -> None:
        shape = self.shapes[node.inputs[0]]
        if node.op_type == "Size":
            value = np.array(math.prod(shape), np.int64)
        else:
            start = int(node.attributes.get("start", 0))
            end = node.attributes.get("end")
            value = np.array(shape[start : None if end is None else int(end)], np.int64)
        self.values[node.outputs[0]] = value
        self.shapes[node.outputs[0]] = tuple(value.shape)

    def _fold(self, node: Node) -> list[np.ndarray] | None:
        values = [self.values.get(n) if n else None for n in node.inputs]
        if any(v is None for n, v in zip(node.inputs, values, strict=True) if n):
            return None
        try:
            result = _fold(node, values, self.opset)
        except (ValueError, TypeError, IndexError, ArithmeticError, _Refuse):
            return None
        if result is None or any(v.size > _MAX_FOLDED for v in result):
            return None
        return result

    # -------------------------------------------------------------- backward
    def bound(self, considered: Sequence[str]) -> HaloBound:
        for name in considered:
            if name in self.tainted:
                raise _Refuse(f"{self.tainted[name]} (on the way to output '{name}')")
        outputs = [o for o in considered if o in self.labels]
        if not outputs:
            return HaloBound(0, "graph bound 0 px: no output depends on the image", 1)
        in_shape = self.shapes[self.image]
        in_labels = self.labels[self.image]
        for name in outputs:
            labels, shape = self.labels[name], self.shapes[name]
            for label in _SPATIAL:
                if label not in labels:
                    raise _Refuse(f"output '{name}' has no {label} axis (shape {list(shape)})")
                jump = self.jumps[name][label]
                if jump != 1:
                    raise _Refuse(
                        f"output '{name}' is at {jump} input pixels per pixel along the {label} "
                        "axis, not at the input's resolution"
                    )
                size_out = shape[labels.index(label)]
                size_in = in_shape[in_labels.index(label)]
                if size_out != size_in:
                    raise _Refuse(
                        f"output '{name}' has {size_out} pixels along the {label} axis for "
                        f"{size_in} input pixels"
                    )
        radii: dict[str, int] = {}
        alignment = 1
        for label in _SPATIAL:
            period = 1
            for jumps in self.jumps.values():
                if label in jumps:
                    period = math.lcm(period, jumps[label].numerator)
            if period > MAX_PERIOD:
                raise _Refuse(f"the sampling grid along the {label} axis is {period} pixels")
            alignment = math.lcm(alignment, period)
            radii[label] = self._reach(outputs, label, period)
        radius = max(radii.values())
        ops = ", ".join(f"{n} {op}" for op, n in sorted(self.ops.items(), key=lambda kv: -kv[1]))
        axes = (
            ""
            if len(set(radii.values())) == 1
            else (f" (height {radii['height']}, width {radii['width']})")
        )
        return HaloBound(
            radius,
            f"graph bound {radius} px{axes} over {ops or 'pointwise ops only'}; "
            f"sampling grid {alignment} px",
            alignment,
        )

    def _reach(self, outputs: list[str], label: str, period: int) -> int:
        q = np.arange(period, dtype=np.int64)
        need: dict[str, Hull] = {name: (q.copy(), q.copy()) for name in outputs}
        for e in reversed(self.edges):
            hull = need.get(e.out)
            if hull is None or label not in e.maps:
                continue
            empty = hull[0] > hull[1]
            a, b = e.maps[label](*hull)
            empty |= a > b
            a = np.where(empty, _EMPTY, a)
            b = np.where(empty, -_EMPTY, b)
            old = need.get(e.src)
            need[e.src] = (a, b) if old is None else (np.minimum(old[0], a), np.maximum(old[1], b))
        hull = need.get(self.image)
        if hull is None:
            return 0
        a, b = hull
        reach = np.maximum(q - a, b - q)[a <= b]
        return int(reach.max()) if reach.size else 0


# ------------------------------------------------------------------------ op handlers


def _h_unary(an: _Analysis, node: Node) -> None:
    x = node.inputs[0]
    if node.op_type == "BatchNormalization" and node.attributes.get("training_mode", 0):
        raise _Refuse("BatchNormalization in training mode averages over the frame")
    if node.op_type == "LRN" and an.lab(x)[1]:
        raise _Refuse("LRN along a spatial axis")
    for i, name in enumerate(node.inputs[1:], 1):
        if name in an.labels and i not in _NO_INFLUENCE.get(node.op_type, ()):
            raise _Refuse(f"its parameter '{name}' is computed from the image")
    for out in node.outputs:
        an.emit(out, an.shape(x), an.lab(x))
        an.edge(out, x)


def _broadcast(
    an: _Analysis, names: Sequence[str], extra: Shape | None = None
) -> tuple[Shape, Labels]:
    shapes = [an.shape(n) for n in names]
    if extra is not None:
        shapes.append(extra)
    rank = max(len(s) for s in shapes)
    out: list[int] = []
    labels: list[str | None] = []
    for k in range(rank, 0, -1):
        dims = [s[-k] if k <= len(s) else 1 for s in shapes]
        size = 0 if 0 in dims else max(dims)
        if any(d not in (1, size) for d in dims):
            raise _Refuse(f"cannot broadcast shapes {[list(s) for s in shapes]}")
        label = None
        for n, s in zip(names, shapes, strict=False):
            if n not in an.labels or k > len(s):
                continue
            mine = an.labels[n][-k]
            if mine and s[-k] != size:
                raise _Refuse(f"broadcasts the {mine} axis")
            if mine and label and mine != label:
                raise _Refuse(f"combines the {label} axis with the {mine} axis")
            label = label or mine
        out.append(size)
        labels.append(label)
    return tuple(out), tuple(labels)


def _h_elementwise(an: _Analysis, node: Node) -> None:
    names = [n for n in node.inputs if n]
    shape, labels = _broadcast(an, names)
    an.emit(node.outputs[0], shape, labels)
    for n in names:
        an.edge(node.outputs[0], n)


def _h_softmax(an: _Analysis, node: Node) -> None:
    x = node.inputs[0]
    labels = an.lab(x)
    axis = _axis(int(node.attributes.get("axis", -1 if an.opset >= 13 else 1)), len(labels))
    # Before opset 13 the input was flattened to 2-D at ``axis``: all later axes are mixed.
    mixed = [axis] if an.opset >= 13 else list(range(axis, len(labels)))
    _refuse_spatial(labels, mixed, f"{node.op_type.lower()} over")
    _h_unary(an, node)


def _refuse_spatial(labels: Labels, axes: Sequence[int], what: str) -> None:
    for axis in axes:
        if labels[axis]:
            raise _Refuse(f"{what} the {labels[axis]} axis mixes the whole frame")


def _h_normalization(an: _Analysis, node: Node) -> None:
    x = node.inputs[0]
    labels = an.lab(x)
    rank = len(labels)
    op = node.op_type
    if op in ("InstanceNormalization", "GroupNormalization"):
        axes = list(range(2, rank))
    elif op == "MeanVarianceNormalization":
        axes = [_axis(a, rank) for a in node.attributes.get("axes", (0, 2, 3))]
    elif op == "LpNormalization":
        axes = [_axis(int(node.attributes.get("axis", -1)), rank)]
    else:  # LayerNormalization: over the axes from ``axis`` on
        axes = list(range(_axis(int(node.attributes.get("axis", -1)), rank), rank))
    _refuse_spatial(labels, axes, "normalizing over")
    for i, name in enumerate(node.inputs[1:], 1):
        if name in an.labels:
            raise _Refuse(f"its parameter {i} is computed from the image")
    for k, out in enumerate(node.outputs):
        if k == 0:
            an.emit(out, an.shape(x), labels)
        else:  # LayerNormalization's mean and inverse deviation
            an.emit(out, [1 if a in axes else d for a, d in enumerate(an.shape(x))], labels)
        an.edge(out, x)


def _h_transpose(an: _Analysis, node: Node) -> None:
    x = node.inputs[0]
    shape, labels = an.shape(x), an.lab(x)
    perm = node.attributes.get("perm") or tuple(reversed(range(len(shape))))
    an.emit(node.outputs[0], [shape[p] for p in perm], [labels[p] for p in perm])
    an.edge(node.outputs[0], x)


def _h_reshape(an: _Analysis, node: Node) -> None:
    x = node.inputs[0]
    shape = an.shape(x)
    if node.op_type == "Reshape":
        target = [int(v) for v in an.value(node.inputs[1], "target shape").reshape(-1)]
        out = _reshape_target(shape, target, bool(node.attributes.get("allowzero", 0)))
    else:  # Flatten
        axis = int(node.attributes.get("axis", 1))
        axis = axis + len(shape) if axis < 0 else axis
        out = (math.prod(shape[:axis]), math.prod(shape[axis:]))
    labels, maps = _regroup(shape, an.lab(x), out, node.op_type)
    an.emit(node.outputs[0], out, labels)
    an.edge(node.outputs[0], x, maps)


def _h_squeeze(an: _Analysis, node: Node) -> None:
    x = node.inputs[0]
    shape, labels = an.shape(x), an.lab(x)
    axes = an.ints(node, 1, "axes", "axes")
    if node.op_type == "Squeeze":
        drop = (
            {_axis(a, len(shape)) for a in axes}
            if axes
            else {a for a, d in enumerate(shape) if d == 1}
        )
        for a in drop:
            if shape[a] != 1 or labels[a]:
                raise _Refuse(f"cannot squeeze axis {a} of size {shape[a]}")
        keep = [a for a in range(len(shape)) if a not in drop]
        an.emit(node.outputs[0], [shape[a] for a in keep], [labels[a] for a in keep])
    else:
        if not axes:
            raise _Refuse("Unsqueeze without axes")
        rank = len(shape) + len(axes)
        new = {_axis(a, rank) for a in axes}
        dims: list[int] = []
        labs: list[str | None] = []
        it = iter(range(len(shape)))
        for a in range(rank):
            if a in new:
                dims.append(1)
                labs.append(None)
            else:
                k = next(it)
                dims.append(shape[k])
                labs.append(labels[k])
        an.emit(node.outputs[0], dims, labs)
    an.edge(node.outputs[0], x)


def _h_concat(an: _Analysis, node: Node) -> None:
    names = [n for n in node.inputs if n]
    shapes = [an.shape(n) for n in names]
    rank = len(shapes[0])
    axis = _axis(int(node.attributes.get("axis", 0)), rank)
    labels: list[str | None] = [None] * rank
    for n, s in zip(names, shapes, strict=True):
        if len(s) != rank or any(s[a] != shapes[0][a] for a in range(rank) if a != axis):
            raise _Refuse(f"concatenates tensors of shapes {[list(t) for t in shapes]}")
        for a, label in enumerate(an.lab(n)):
            if label and labels[a] not in (None, label):
                raise _Refuse(f"combines the {labels[a]} axis with the {label} axis")
            labels[a] = labels[a] or label
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    an.emit(node.outputs[0], out, labels)
    offset = 0
    along = labels[axis]
    for n, s in zip(names, shapes, strict=True):
        if along and n in an.labels:
            # Along a spatial axis each part is shifted to its offset; the bound covers
            # every part, at every position (it cannot know where one ends).
            maps: dict[str, _AxisMap] = {lb: _IDENTITY for lb in an.labels[n] if lb}
            maps[along] = _shift(-offset)
            an.edge(node.outputs[0], n, maps)
        else:
            an.edge(node.outputs[0], n)
        offset += s[axis]


def _h_split(an: _Analysis, node: Node) -> None:
    x = node.inputs[0]
    shape, labels = an.shape(x), an.lab(x)
    axis = _axis(int(node.attributes.get("axis", 0)), len(shape))
    split = an.ints(node, 1, "split", "split sizes")
    n = len(node.outputs)
    if not split:
        parts = int(node.attributes.get("num_outputs", n))
        chunk = -(-shape[axis] // parts)
        split = [min(chunk, shape[axis] - k * chunk) for k in range(parts)]
    offset = 0
    for out, size in zip(node.outputs, split, strict=False):
        dims = list(shape)
        dims[axis] = size
        an.emit(out, dims, labels)
        label = labels[axis]
        if label:
            maps: dict[str, _AxisMap] = {lb: _IDENTITY for lb in labels if lb}
            maps[label] = _shift(offset)
            an.edge(out, x, maps)
        else:
            an.edge(out, x)
        offset += size


def _h_slice(an: _Analysis, node: Node) -> None:
    x = node.inputs[0]
    shape, labels = an.shape(x), an.lab(x)
    if an.opset < 10:
        starts = list(node.attributes.get("starts", ()))
        ends = list(node.attributes.get("ends", ()))
        axes = list(node.attributes.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts = an.ints(node, 1, "", "starts") or []
        ends = an.ints(node, 2, "", "ends") or []
        axes = an.ints(node, 3, "", "axes") or list(range(len(starts)))
        steps = an.ints(node, 4, "", "steps") or [1] * len(starts)
    out = list(shape)
    maps: dict[str, _AxisMap] = {lb: _IDENTITY for lb in labels if lb}
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        a = _axis(axis, len(shape))
        begin, _end, out[a] = _slice_range(shape[a], start, end, step)
        label = labels[a]
        if label:
            if step < 0:
                raise _Refuse(f"reverses the {label} axis")
            maps[label] = _shift(begin, step)
    an.emit(node.outputs[0], out, labels)
    an.edge(node.outputs[0], x, maps)


def _h_pad(an: _Analysis, node: Node) -> None:
    x = node.inputs[0]
    shape, labels = an.shape(x), an.lab(x)
    rank = len(shape)
    pads = an.ints(node, 1, "pads", "pads") or [0] * (2 * rank)
    axes = an.ints(node, 3, "", "axes") or list(range(rank))
    if len(node.inputs) > 2 and node.inputs[2] in an.labels:
        raise _Refuse("its pad value is computed from the image")
    n = len(axes)
    out = list(shape)
    maps: dict[str, _AxisMap] = {lb: _IDENTITY for lb in labels if lb}
    for k, axis in enumerate(axes):
        a = _axis(axis, rank)
        begin, end = pads[k], pads[k + n]
        out[a] += begin + end
        label = labels[a]
        if label:
            if node.attributes.get("mode", "constant") == "wrap" and (begin or end):
                raise _Refuse(f"wraps the {label} axis around")
            maps[label] = _shift(-begin)
    an.emit(node.outputs[0], out, labels)
    an.edge(node.outputs[0], x, maps)


def _kernel_of(an: _Analysis, node: Node, weight: str | None) -> list[int]:
    kernel = node.attributes.get("kernel_shape")
    if kernel is None and weight is not None:
        kernel = an.shape(weight)[2:]
    if kernel is None:
        raise _Refuse("no kernel shape")
    return [int(k) for k in kernel]


def _spatial_maps(
    an: _Analysis, node: Node, x: str, build: Callable[[int], _AxisMap]
) -> dict[str, _AxisMap]:
    """Maps for the spatial axes (2, 3, ...) of an NCHW op; batch and channels must not be."""
    labels = an.lab(x)
    for a in (0, 1):
        if labels[a]:
            raise _Refuse(f"its {'batch' if a == 0 else 'channel'} axis is the frame's {labels[a]}")
    return {label: build(a - 2) for a, label in enumerate(labels) if a >= 2 and label}


def _h_conv(an: _Analysis, node: Node) -> None:
    op = node.op_type
    x = node.inputs[0]
    pool = op.endswith("Pool")
    w = None if pool else node.inputs[3 if op == "QLinearConv" else 1]
    if any(n in an.labels for n in node.inputs[1:]):
        raise _Refuse("its weights are computed from the image")
    shape = an.shape(x)
    kernel = _kernel_of(an, node, w)
    n = len(kernel)
    strides = list(node.attributes.get("strides", (1,) * n))
    dilations = list(node.attributes.get("dilations", (1,) * n))
    spatial = _pads_and_sizes(node, shape[2:], kernel, strides, dilations)
    channels = shape[1] if w is None else an.shape(w)[0]
    out = [shape[0], channels, *(o for _b, _e, o in spatial)]
    maps = _spatial_maps(
        an,
        node,
        x,
        lambda i: _Window(strides[i], spatial[i][0], spatial[i][0], (kernel[i] - 1) * dilations[i]),
    )
    for name in node.outputs[:2]:  # MaxPool's second output holds the argmax indices
        an.emit(name, out, an.lab(x))
        an.edge(name, x, maps)


def _h_pool(an: _Analysis, node: Node) -> None:
    _h_conv(an, node)


def _h_global_pool(an: _Analysis, node: Node) -> None:
    x = node.inputs[0]
    labels = an.lab(x)
    _refuse_spatial(labels, range(2, len(labels)), "pooling over")
    shape = an.shape(x)
    an.emit(node.outputs[0], [*shape[:2], *(1 for _ in shape[2:])], labels)
    an.edge(node.outputs[0], x)


def _h_reduce(an: _Analysis, node: Node) -> None:
    x = node.inputs[0]
    shape, labels = an.shape(x), an.lab(x)
    rank = len(shape)
    keep = bool(node.attributes.get("keepdims", 1))
    if node.op_type in ("ArgMax", "ArgMin"):
        axes = [_axis(int(node.attributes.get("axis", 0)), rank)]
    else:
        given = an.ints(node, 1, "axes", "axes")
        if given:
            axes = [_axis(a, rank) for a in given]
        elif node.attributes.get("noop_with_empty_axes", 0):
            axes = []
        else:
            axes = list(range(rank))
    _refuse_spatial(labels, axes, "reducing over")
    dims = [1 if a in axes else d for a, d in enumerate(shape) if keep or a not in axes]
    labs = [lb for a, lb in enumerate(labels) if keep or a not in axes]
    an.emit(node.outputs[0], dims, labs)
    an.edge(node.outputs[0], x)


def _h_conv_transpose(an: _Analysis, node: Node) -> None:
    x, w = node.inputs[0], node.inputs[1]
    if any(n in an.labels for n in node.inputs[1:]):
        raise _Refuse("its weights are computed from the image")
    shape = an.shape(x)
    kernel = _kernel_of(an, node, w)
    n = len(kernel)
    attrs = node.attributes
    strides = list(attrs.get("strides", (1,) * n))
    dilations = list(attrs.get("dilations", (1,) * n))
    extra = list(attrs.get("output_padding", (0,) * n))
    pads = list(attrs.get("pads", (0,) * (2 * n)))
    auto = attrs.get("auto_pad", "NOTSET")
    wanted = list(attrs.get("output_shape", ()))
    wanted = wanted[-n:] if wanted else []
    sizes, begins = [], []
    for i in range(n):
        size, s, extent = shape[2 + i], strides[i], (kernel[i] - 1) * dilations[i] + 1
        natural = s * (size - 1) + extra[i] + extent
        if wanted or auto in ("SAME_UPPER", "SAME_LOWER"):
            out = wanted[i] if wanted else size * s
            total = natural - out
            # The spec puts the odd pixel of the begin pad by auto_pad; runtimes have not
            # always agreed, so allow both.
            begins.append((total // 2, total - total // 2))
        else:
            b, e = (0, 0) if auto == "VALID" else (pads[i], pads[i + n])
            out = natural - b - e
            begins.append((b, b))
        sizes.append(out)
    group = int(attrs.get("group", 1))
    out_shape = [shape[0], an.shape(w)[1] * group, *sizes]
    maps = _spatial_maps(
        an,
        node,
        x,
        lambda i: _Transposed(
            strides[i], min(begins[i]), max(begins[i]), (kernel[i] - 1) * dilations[i]
        ),
    )
    an.emit(node.outputs[0], out_shape, an.lab(x))
    an.edge(node.outputs[0], x, maps)


def _h_resize(an: _Analysis, node: Node) -> None:
    x = node.inputs[0]
    shape, labels = an.shape(x), an.lab(x)
    rank = len(shape)
    attrs = node.attributes
    old = node.op_type == "Upsample" or an.opset < 11
    if any(n in an.labels for n in node.inputs[1:]):
        raise _Refuse("its scales or sizes are computed from the image values")
    scales: list[float] | None = None
    sizes: list[int] | None = None
    if old:
        if len(node.inputs) > 1 and node.inputs[1]:
            scales = [float(v) for v in an.value(node.inputs[1], "scales").reshape(-1)]
        else:
            scales = [float(v) for v in attrs.get("scales", ())]
    else:
        for index in (2, 3):
            if index < len(node.inputs) and node.inputs[index]:
                value = an.value(node.inputs[index], "scales" if index == 2 else "sizes")
                if value.size:
                    if index == 2:
                        scales = [float(v) for v in value.reshape(-1)]
                    else:
                        sizes = [int(v) for v in value.reshape(-1)]
    axes = [_axis(a, rank) for a in attrs.get("axes", range(rank))]
    ratio: list[Fraction] = [Fraction(1)] * rank
    out = list(shape)
    if scales is not None and len(scales) == len(axes):
        for a, factor in zip(axes, scales, strict=True):
            # float32 scales such as 1/3 are not exact; recover the intended fraction
            ratio[a] = Fraction(factor).limit_denominator(1 << 12)
            out[a] = math.floor(shape[a] * factor)
    elif sizes is not None and len(sizes) == len(axes):
        policy = attrs.get("keep_aspect_ratio_policy", "stretch")
        wanted = {a: Fraction(z, shape[a]) for a, z in zip(axes, sizes, strict=True)}
        if policy in ("not_larger", "not_smaller"):
            common = (min if policy == "not_larger" else max)(wanted.values())
            wanted = dict.fromkeys(wanted, common)
        for a, r in wanted.items():
            ratio[a] = r
            out[a] = (
                int(r * shape[a])
                if policy == "stretch"
                else math.floor(r * shape[a] + Fraction(1, 2))
            )
    else:
        raise _Refuse("neither scales nor sizes for every resized axis")
    mode = str(attrs.get("mode", "nearest"))
    coords = "asymmetric" if old else str(attrs.get("coordinate_transformation_mode", "half_pixel"))
    if coords == "tf_crop_and_resize":
        raise _Refuse("crop-and-resize reads a region given at run time")
    nearest: str | None = None
    support = Fraction(0)
    if mode == "nearest":
        nearest = "either" if old else str(attrs.get("nearest_mode", "round_prefer_floor"))
    elif mode in ("linear", "bilinear"):
        support = Fraction(1)
    elif mode in ("cubic", "bicubic"):
        support = Fraction(2)
    else:
        raise _Refuse(f"unknown mode '{mode}'")
    maps: dict[str, _AxisMap] = {}
    for a, label in enumerate(labels):
        if not label:
            continue
        s = ratio[a]
        if s <= 0:
            raise _Refuse(f"scale {s} along the {label} axis")
        inv: Fraction = 1 / s
        reach = support * max(Fraction(1), inv) if attrs.get("antialias", 0) else support
        c_lo = c_hi = Fraction(0)
        if coords in ("half_pixel", "pytorch_half_pixel"):
            c_lo = c_hi = (inv - 1) / 2
        elif coords == "tf_half_pixel_for_nn":
            c_lo = c_hi = inv / 2
        elif coords == "half_pixel_symmetric":
            adjustment = Fraction(out[a]) / (s * shape[a])
            c_lo = c_hi = Fraction(shape[a], 2) * (1 - adjustment) + (inv - 1) / 2
        elif coords == "align_corners":
            # x = o (in - 1) / (out - 1) drifts from o / s by between 0 and 1/s - 1 over
            # the frame, whatever its size.
            c_lo, c_hi = min(Fraction(0), inv - 1), max(Fraction(0), inv - 1)
        elif coords != "asymmetric":
            raise _Refuse(f"unknown coordinate transformation '{coords}'")
        maps[label] = _Resample(s, c_lo, c_hi, nearest, reach)
    an.emit(node.outputs[0], out, labels)
    an.edge(node.outputs[0], x, maps)


def _h_depth_space(an: _Analysis, node: Node) -> None:
    x = node.inputs[0]
    shape = an.shape(x)
    b = int(node.attributes["blocksize"])
    if len(shape) != 4:
        raise _Refuse(f"input of rank {len(shape)}")
    if node.op_type == "DepthToSpace":
        out = [shape[0], shape[1] // (b * b), shape[2] * b, shape[3] * b]
        maps = _spatial_maps(an, node, x, lambda i: _Transposed(b, 0, 0, b - 1))
    else:
        out = [shape[0], shape[1] * b * b, shape[2] // b, shape[3] // b]
        maps = _spatial_maps(an, node, x, lambda i: _Window(b, 0, 0, b - 1))
    an.emit(node.outputs[0], out, an.lab(x))
    an.edge(node.outputs[0], x, maps)


def _h_matmul(an: _Analysis, node: Node) -> None:
    a, b = node.inputs[0], node.inputs[1]
    if a in an.labels and b in an.labels:
        raise _Refuse("multiplies two image tensors (attention mixes the whole frame)")
    sa, sb = an.shape(a), an.shape(b)
    if len(sa) < 2 or len(sb) < 2:
        raise _Refuse("a 1-D operand")
    la, lb = an.lab(a), an.lab(b)
    if la[-1] or lb[-2]:
        raise _Refuse(f"contracts the {la[-1] or lb[-2]} axis")
    batch, batch_labels = _broadcast_batch(an, a, b)
    an.emit(node.outputs[0], [*batch, sa[-2], sb[-1]], [*batch_labels, la[-2], lb[-1]])
    an.edge(node.outputs[0], a)
    an.edge(node.outputs[0], b)


def _broadcast_batch(an: _Analysis, a: str, b: str) -> tuple[Shape, Labels]:
    sa, sb = an.shape(a)[:-2], an.shape(b)[:-2]
    rank = max(len(sa), len(sb))
    dims: list[int] = []
    labels: list[str | None] = []
    for k in range(rank, 0, -1):
        da = sa[-k] if k <= len(sa) else 1
        db = sb[-k] if k <= len(sb) else 1
        dims.append(max(da, db))
        labels.append(None)
    for name, s in ((a, sa), (b, sb)):
        for k in range(1, len(s) + 1):
            if an.lab(name)[: len(s)][-k]:
                raise _Refuse("a spatial axis among the batch axes")
    return tuple(dims), tuple(labels)


def _h_gemm(an: _Analysis, node: Node) -> None:
    for name in node.inputs:
        if name in an.labels and any(an.labels[name]):
            raise _Refuse("a fully connected layer over a spatial axis")
    sa, sb = an.shape(node.inputs[0]), an.shape(node.inputs[1])
    m = sa[1] if node.attributes.get("transA", 0) else sa[0]
    n = sb[0] if node.attributes.get("transB", 0) else sb[1]
    an.emit(node.outputs[0], [m, n], [None, None])
    for name in node.inputs:
        an.edge(node.outputs[0], name)


def _h_gather(an: _Analysis, node: Node) -> None:
    x, idx = node.inputs[0], node.inputs[1]
    if idx in an.labels:
        raise _Refuse("gathers at positions computed from the image")
    shape, labels = an.shape(x), an.lab(x)
    axis = _axis(int(node.attributes.get("axis", 0)), len(shape))
    if labels[axis]:
        raise _Refuse(f"gathers along the {labels[axis]} axis")
    ishape = an.shape(idx)
    an.emit(
        node.outputs[0],
        [*shape[:axis], *ishape, *shape[axis + 1 :]],
        [*labels[:axis], *(None for _ in ishape), *labels[axis + 1 :]],
    )
    an.edge(node.outputs[0], x)


def _h_expand(an: _Analysis, node: Node) -> None:
    x = node.inputs[0]
    target = tuple(int(v) for v in an.value(node.inputs[1], "target shape").reshape(-1))
    if node.inputs[1] in an.labels:
        raise _Refuse("its shape is computed from the image values")
    shape, labels = _broadcast(an, [x], target)
    an.emit(node.outputs[0], shape, labels)
    an.edge(node.outputs[0], x)


def _h_constant(an: _Analysis, node: Node) -> None:
    # Only reached when the value was not decoded (a big tensor): its shape is enough.
    for key, value in node.attributes.items():
        if isinstance(value, Tensor):
            an.emit(node.outputs[0], value.dims, (None,) * len(value.dims))
        elif key in ("value_ints", "value_floats", "value_strings"):
            an.emit(node.outputs[0], (len(value),), (None,))
        elif key in ("value_int", "value_float", "value_string"):
            an.emit(node.outputs[0], (), ())


def _h_tile(an: _Analysis, node: Node) -> None:
    x = node.inputs[0]
    shape, labels = an.shape(x), an.lab(x)
    repeats = [int(v) for v in an.value(node.inputs[1], "repeats").reshape(-1)]
    for a, r in enumerate(repeats):
        if labels[a] and r != 1:
            raise _Refuse(f"repeats the frame along the {labels[a]} axis")
    an.emit(node.outputs[0], [d * r for d, r in zip(shape, repeats, strict=True)], labels)
    an.edge(node.outputs[0], x)


_HANDLERS: dict[str, Callable[[_Analysis, Node], None]] = {
    **dict.fromkeys(_UNARY, _h_unary),
    **dict.fromkeys(_ELEMENTWISE, _h_elementwise),
    **dict.fromkeys(("Softmax", "LogSoftmax", "Hardmax"), _h_softmax),
    **dict.fromkeys(
        (
            "InstanceNormalization",
            "GroupNormalization",
            "LayerNormalization",
            "LpNormalization",
            "MeanVarianceNormalization",
        ),
        _h_normalization,
    ),
    **dict.fromkeys((*_REDUCE, "ArgMax", "ArgMin"), _h_reduce),
    **dict.fromkeys(("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"), _h_global_pool),
    **dict.fromkeys(("Conv", "ConvInteger", "QLinearConv"), _h_conv),
    **dict.fromkeys(("MaxPool", "AveragePool", "LpPool"), _h_pool),
    **dict.fromkeys(("Reshape", "Flatten"), _h_reshape),
    **dict.fromkeys(("Squeeze", "Unsqueeze"), _h_squeeze),
    **dict.fromkeys(("Resize", "Upsample"), _h_resize),
    **dict.fromkeys(("DepthToSpace", "SpaceToDepth"), _h_depth_space),
    "Transpose": _h_transpose,
    "Concat": _h_concat,
    "Split": _h_split,
    "Slice": _h_slice,
    "Pad": _h_pad,
    "ConvTranspose": _h_conv_transpose,
    "MatMul": _h_matmul,
    "Gemm": _h_gemm,
    "Gather": _h_gather,
    "Expand": _h_expand,
    "Tile": _h_tile,
    "Constant": _h_constant,
}


# -------------------------------------------------------------- constant folding

# ONNX TensorProto.DataType -> numpy dtype, for Cast
_CAST = {
    1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32,
    7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64,
}  # fmt: skip
_FOLD_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Pow": np.power,
    "Max": np.maximum, "Min": np.minimum, "Sum": np.add, "Equal": np.equal,
    "Less": np.less, "Greater": np.greater, "LessOrEqual": np.less_equal,
    "GreaterOrEqual": np.greater_equal, "And": np.logical_and, "Or": np.logical_or,
    "Xor": np.logical_xor,
}  # fmt: skip
_FOLD_UNARY: dict[str, Callable[[Any], Any]] = {
    "Neg": np.negative, "Abs": np.abs, "Floor": np.floor, "Ceil": np.ceil, "Round": np.round,
    "Sqrt": np.sqrt, "Reciprocal": np.reciprocal, "Sign": np.sign, "Not": np.logical_not,
    "Identity": lambda v: v, "Relu": lambda v: np.maximum(v, 0), "Exp": np.exp, "Log": np.log,
}  # fmt: skip

_FOLD_REDUCE: dict[str, Callable[..., Any]] = {
    "ReduceProd": np.prod,
    "ReduceSum": np.sum,
    "ReduceMax": np.max,
    "ReduceMin": np.min,
    "ReduceMean": np.mean,
}


def _fold(node: Node, values: list[np.ndarray | None], opset: int) -> list[np.ndarray] | None:
    """Compute a node whose inputs are all known small values (shape arithmetic)."""
    op, attrs = node.op_type, node.attributes
    xs = [v for v in values if v is not None]
    x = xs[0] if xs else None

    def ints(index: int, attr: str) -> list[int] | None:
        if index < len(values) and values[index] is not None:
            return [int(v) for v in np.asarray(values[index]).reshape(-1)]
        value = attrs.get(attr)
        return None if value is None else [int(v) for v in np.atleast_1d(value)]

    if op == "Constant":
        for key, value in attrs.items():
            if key == "value" and isinstance(value, Tensor) and value.values is not None:
                return [value.values]
            if key in ("value_int", "value_float"):
                return [np.array(value, np.int64 if key == "value_int" else np.float32)]
            if key in ("value_ints", "value_floats"):
                return [np.array(value, np.int64 if key == "value_ints" else np.float32)]
        return None
    if x is None:
        return None
    if op in _FOLD_UNARY:
        return [np.asarray(_FOLD_UNARY[op](x))]
    if op in _FOLD_BINARY:
        result = xs[0]
        for v in xs[1:]:
            result = _FOLD_BINARY[op](result, v)
        return [np.asarray(result)]
    if op == "Div":
        num, den = xs
        if np.issubdtype(num.dtype, np.integer):  # integer division truncates toward zero
            return [np.asarray(np.trunc(num / den).astype(num.dtype))]
        return [np.asarray(num / den)]
    if op == "Mod":
        num, den = xs
        return [np.asarray(np.fmod(num, den) if attrs.get("fmod", 0) else np.mod(num, den))]
    if op == "Cast":
        return [x.astype(_CAST[int(attrs["to"])])]
    if op == "Concat":
        arrays = [np.atleast_1d(v) if v.ndim == 0 else v for v in xs]
        return [np.concatenate(arrays, axis=int(attrs.get("axis", 0)))]
    if op == "Gather":
        return [np.take(x, np.asarray(values[1]).astype(np.int64), axis=int(attrs.get("axis", 0)))]
    if op == "Unsqueeze":
        axes = ints(1, "axes") or []
        rank = x.ndim + len(axes)
        out = x
        for a in sorted(_axis(a, rank) for a in axes):
            out = np.expand_dims(out, a)
        return [out]
    if op == "Squeeze":
        dropped = ints(1, "axes")
        return [np.squeeze(x, axis=tuple(dropped) if dropped else None)]
    if op == "Slice":
        if opset < 10:
            starts, ends = list(attrs["starts"]), list(attrs["ends"])
            sliced = list(attrs.get("axes", range(len(starts))))
            steps = [1] * len(starts)
        else:
            starts, ends = ints(1, "") or [], ints(2, "") or []
            sliced = ints(3, "") or list(range(len(starts)))
            steps = ints(4, "") or [1] * len(starts)
        index: list[slice] = [slice(None)] * x.ndim
        for start, end, axis, step in zip(starts, ends, sliced, steps, strict=True):
            k = _axis(axis, x.ndim)
            first, stop, _n = _slice_range(x.shape[k], start, end, step)
            index[k] = slice(first, None if stop < 0 else stop, step)
        return [x[tuple(index)]]
    if op == "Reshape":
        target = [int(v) for v in np.asarray(values[1]).reshape(-1)]
        return [x.reshape(_reshape_target(x.shape, target, bool(attrs.get("allowzero", 0))))]
    if op == "Transpose":
        return [np.transpose(x, attrs.get("perm"))]
    if op == "Split":
        axis = int(attrs.get("axis", 0))
        split = ints(1, "split")
        if not split:
            return [np.asarray(v) for v in np.array_split(x, len(node.outputs), axis=axis)]
        return [np.asarray(v) for v in np.split(x, np.cumsum(split)[:-1], axis=axis)]
    if op == "ConstantOfShape":
        dims = [int(v) for v in x.reshape(-1)]
        fill = attrs.get("value")
        if math.prod(dims) > _MAX_FOLDED:
            return None
        if isinstance(fill, Tensor) and fill.values is not None:
            return [np.full(dims, fill.values.reshape(-1)[0], fill.values.dtype)]
        return [np.zeros(dims, np.float32)]
    if op == "Expand":
        expanded = np.broadcast_shapes(x.shape, tuple(int(v) for v in np.asarray(values[1])))
        if math.prod(expanded) > _MAX_FOLDED:
            return None
        return [np.array(np.broadcast_to(x, expanded))]
    if op == "Range":
        first_v, limit, delta = (np.asarray(v).reshape(()).item() for v in xs)
        count = max(math.ceil((limit - first_v) / delta), 0)
        if count > _MAX_FOLDED:
            return None
        return [np.arange(first_v, limit, delta, dtype=xs[0].dtype)]
    if op == "Where":
        return [np.where(*xs)]
    if op == "Clip":
        lo = values[1] if len(values) > 1 else attrs.get("min")
        hi = values[2] if len(values) > 2 else attrs.get("max")
        return [np.clip(x, lo, hi)]
    if op in _FOLD_REDUCE:
        reduced = ints(1, "axes")
        if not reduced and attrs.get("noop_with_empty_axes", 0):
            return [x]
        keep = bool(attrs.get("keepdims", 1))
        over = tuple(reduced) if reduced else None
        return [np.asarray(_FOLD_REDUCE[op](x, axis=over, keepdims=keep))]
    if op == "Tile":
        repeats = [int(v) for v in np.asarray(values[1]).reshape(-1)]
        if x.size * math.prod(repeats) > _MAX_FOLDED:
            return None
        return [np.tile(x, repeats)]
    return None


# -------------------------------------------------------------------------- entry point


def receptive_field(
    graph: Graph,
    input_name: str | None = None,
    *,
    layout: str | None = None,
    outputs: Sequence[str] | None = None,
) -> HaloBound:
    """Bound a model's receptive-field radius from its graph.

    See the module docstring for the method. The bound holds for every pixel of the
    outputs, over every path of the graph from the input to them, whatever the weights;
    ``radius`` is ``None`` when such a path holds an op it cannot bound (global pooling
    or a reduction over space, control flow, an unknown op, a resize whose factor is not
    known...), and ``reason`` names it.

    Args:
        graph: From `read_graph`.
        input_name: The image input (default: the first graph input).
        layout: ``"NHWC"`` or ``"NCHW"`` for the image input; default: from its declared
            shape (the small static dim among dims 1 and 3), else whichever layout the
            graph can be followed in.
        outputs: The outputs to bound (default: all); e.g. only the mask, when another
            output (a per-image score, say) pools over the whole frame.

    Returns:
        The bound, in input pixels, with how it was found.

    Raises:
        ModelError: If ``input_name`` or one of ``outputs`` is not in the graph, or
            ``layout`` is not a layout.
    """
    if input_name is None:
        if not graph.inputs:
            return HaloBound(None, "cannot bound the graph: the model has no inputs")
        input_name = graph.inputs[0]
    elif input_name not in graph.inputs:
        raise ModelError(
            f"the model has no input '{input_name}'; its inputs are {', '.join(graph.inputs)}"
        )
    considered = tuple(graph.outputs if outputs is None else outputs)
    unknown = [o for o in considered if o not in graph.outputs]
    if unknown:
        raise ModelError(
            f"the model has no output '{unknown[0]}'; its outputs are {', '.join(graph.outputs)}"
        )
    if layout not in (None, "NHWC", "NCHW"):
        raise ModelError(f"layout must be 'NHWC' or 'NCHW', got {layout!r}")
    layouts = [layout] if layout else _layouts(graph.shapes.get(input_name, ()))
    results = [_bound(graph, input_name, lay, considered) for lay in layouts]
    found = [r for r in results if r.radius is not None]
    if found:
        return max(found, key=lambda r: r.radius or 0)
    return results[0]


def _layouts(declared: tuple[Dim, ...]) -> list[str]:
    """Layouts to try for an input shape: the channels are the small static dim among
    dims 1 and 3 (the rule of `unetrt.backends.base.detect_layout`); both if it cannot
    tell."""
    if len(declared) == 4:
        d1, d3 = (d if isinstance(d, int) else None for d in (declared[1], declared[3]))
        if d3 is not None and (d1 is None or d3 < d1):
            return ["NHWC"]
        if d1 is not None and (d3 is None or d1 < d3):
            return ["NCHW"]
    return ["NCHW", "NHWC"]


def _bound(graph: Graph, input_name: str, layout: str, outputs: Sequence[str]) -> HaloBound:
    axes = (1, 2) if layout == "NHWC" else (2, 3)
    try:
        analysis = _Analysis(graph, input_name, axes)
        analysis.run()
        return analysis.bound(outputs)
    except _Refuse as exc:
        return HaloBound(None, f"cannot bound the graph: {exc}")


def activation_bytes(
    graph: Graph, input_name: str | None = None, *, layout: str | None = None
) -> float | None:
    """Peak bytes of live activations per input pixel, from the graph alone.

    The graph is followed at one input size (as `receptive_field` does) and its nodes
    are run in the file's order on paper: each image-dependent output is allocated
    (float32) when its node runs and freed after its last reader. The peak over the run,
    divided by the input's pixels, is what a runtime that frees tensors as it goes needs
    per pixel of a tile (fused ops need less); it decides how large a tile fits a memory
    budget.

    Args:
        graph: From `read_graph`.
        input_name: The image input (default: the first graph input).
        layout: ``"NHWC"`` or ``"NCHW"``; default from the declared shape, as
            `receptive_field` decides it.

    Returns:
        Bytes per input pixel, or None where the graph cannot be followed (an op the
        analysis does not know, control flow: the size of some tensors is unknown).
    """
    if input_name is None:
        if not graph.inputs:
            return None
        input_name = graph.inputs[0]
    layouts = [layout] if layout else _layouts(graph.shapes.get(input_name, ()))
    axes = (1, 2) if layouts[0] == "NHWC" else (2, 3)
    try:
        analysis = _Analysis(graph, input_name, axes)
        analysis.run()
    except _Refuse:
        return None
    if analysis.tainted:  # some image-dependent tensors have sizes it cannot know
        return None
    image = set(analysis.labels)
    last_read: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        for name in node.inputs:
            if name in image:
                last_read[name] = i

    def size(name: str) -> int:
        shape = analysis.shapes.get(name)
        return 4 * math.prod(shape) if shape is not None and name in image else 0

    live = peak = size(input_name)
    for i, node in enumerate(graph.nodes):
        live += sum(size(n) for n in node.outputs if n)
        peak = max(peak, live)
        for name in set(node.inputs):
            if last_read.get(name) == i and name not in graph.outputs:
                live -= size(name)
    return peak / math.prod(ANALYSIS_SIZE)
