"""Tests for unetrt.onnxgraph: the wire-format reader against the onnx package, and the
receptive-field bound against exact values.

Oracles: the ``onnx`` package parses the same files (its protobuf runtime is the
reference reader); the test models of `unetrt.testing` have analytic radii; single-op
graphs have radii worked out by hand, and, being linear (or max pooling of a large
impulse), their impulse response measured with onnxruntime at every position of the
sampling grid reaches exactly as far as the structure allows.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from unetrt import onnxgraph
from unetrt.errors import ModelError
from unetrt.onnxgraph import Subgraph, Tensor

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from unetrt import testing  # noqa: E402  (needs onnx)

DEFAULT = Path(__file__).resolve().parents[1] / "python" / "unetrt" / "models" / "default.onnx"


# ----------------------------------------------------------------- reader vs onnx


def _oracle_attribute(attr: Any) -> Any:
    """An attribute as `onnxgraph` decodes it, computed with the onnx package."""
    value = helper.get_attribute_value(attr)
    kind = attr.type
    if kind == onnx.AttributeProto.STRING:
        return value.decode()
    if kind == onnx.AttributeProto.STRINGS:
        return tuple(v.decode() for v in value)
    if kind in (onnx.AttributeProto.INTS, onnx.AttributeProto.FLOATS):
        return tuple(value)
    if kind == onnx.AttributeProto.TENSOR:
        return ("tensor", tuple(value.dims), value.data_type)
    if kind == onnx.AttributeProto.TENSORS:
        return tuple(("tensor", tuple(t.dims), t.data_type) for t in value)
    if kind == onnx.AttributeProto.GRAPH:
        return Subgraph(1)
    if kind == onnx.AttributeProto.GRAPHS:
        return Subgraph(len(value))
    if kind == onnx.AttributeProto.FLOAT:
        return float(np.float32(value))
    return value


def _ours_attribute(value: Any) -> Any:
    if isinstance(value, Tensor):
        return ("tensor", value.dims, value.data_type)
    if isinstance(value, tuple) and value and isinstance(value[0], Tensor):
        return tuple(("tensor", t.dims, t.data_type) for t in value)
    return value


def _check_tensor(ours: Tensor, proto: Any) -> None:
    assert ours.dims == tuple(proto.dims)
    assert ours.data_type == proto.data_type
    size = int(np.prod(proto.dims))
    external = proto.data_location == TensorProto.EXTERNAL
    decodable = proto.data_type in (1, 2, 3, 4, 5, 6, 7, 9, 11, 12, 13)
    if size <= onnxgraph.MAX_VALUES and decodable and not external:
        assert ours.values is not None
        expected = numpy_helper.to_array(proto)
        assert ours.values.dtype == expected.dtype
        np.testing.assert_array_equal(ours.values, expected)
    else:
        assert ours.values is None


def _check_against_onnx(model: Any) -> None:
    data = model.SerializeToString()
    graph = onnxgraph.read_graph(data)
    ref = model.graph
    assert len(graph.nodes) == len(ref.node)
    for ours, node in zip(graph.nodes, ref.node, strict=True):
        assert (ours.op_type, ours.name, ours.domain) == (node.op_type, node.name, node.domain)
        assert ours.inputs == tuple(node.input)
        assert ours.outputs == tuple(node.output)
        expected = {a.name: _oracle_attribute(a) for a in node.attribute}
        assert {k: _ours_attribute(v) for k, v in ours.attributes.items()} == expected
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                _check_tensor(ours.attributes[attr.name], attr.t)
    initializer_names = {t.name for t in ref.initializer}
    assert set(graph.initializers) == initializer_names
    for proto in ref.initializer:
        _check_tensor(graph.initializers[proto.name], proto)
    assert graph.inputs == tuple(i.name for i in ref.input if i.name not in initializer_names)
    assert graph.outputs == tuple(o.name for o in ref.output)
    for value in [*ref.input, *ref.output]:
        dims = value.type.tensor_type.shape.dim
        expected_shape = tuple(
            d.dim_value if d.HasField("dim_value") else d.dim_param if d.dim_param else None
            for d in dims
        )
        if value.type.tensor_type.HasField("shape"):
            assert graph.shapes[value.name] == expected_shape
    assert graph.opsets == {o.domain: o.version for o in model.opset_import}
    metadata = {p.key: p.value for p in model.metadata_props}
    assert onnxgraph.read_metadata(data) == metadata


def _attribute_zoo() -> Any:
    """Every attribute kind, tensors in raw and typed fields, big and external tensors."""
    rng = np.random.default_rng(0)
    typed = [
        helper.make_tensor("f32", TensorProto.FLOAT, [2, 3], rng.random(6).tolist()),
        helper.make_tensor("i64", TensorProto.INT64, [4], [-1, 0, 2**40, -(2**62)]),
        helper.make_tensor("i32", TensorProto.INT32, [3], [-7, 0, 7]),
        helper.make_tensor("f64", TensorProto.DOUBLE, [2], [0.25, -1e300]),
        helper.make_tensor("u8", TensorProto.UINT8, [3], [0, 7, 255]),
        helper.make_tensor("flag", TensorProto.BOOL, [2], [True, False]),
        helper.make_tensor("u64", TensorProto.UINT64, [2], [0, 2**64 - 1]),
        helper.make_tensor("scalar", TensorProto.INT64, [], [5]),
        helper.make_tensor("empty", TensorProto.FLOAT, [0, 3], []),
    ]
    raw = [
        numpy_helper.from_array(rng.random((4, 1, 3, 3), dtype=np.float32), "w_raw"),
        numpy_helper.from_array(np.array([-(2**63), 2**63 - 1], np.int64), "i64_raw"),
        numpy_helper.from_array(rng.random((40, 40), dtype=np.float32), "big"),  # 1600 > 1024
        numpy_helper.from_array(np.array([1.0, 2.0], np.float16), "half"),  # not decoded
    ]
    external = numpy_helper.from_array(np.zeros((8, 8), np.float32), "external")
    external.ClearField("raw_data")
    external.data_location = TensorProto.EXTERNAL
    entry = external.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["z"])],
        "branch",
        [],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
    )
    zoo = helper.make_node(
        "Zoo",
        ["x", "", "w_raw"],
        ["y", "y2"],
        name="zoo",
        domain="test.zoo",
        alpha=1.5,
        count=-3,
        label="héllo",
        sizes=[-1, 2, 2**40],
        weights=[0.5, -2.0],
        names=["a", "b"],
        value=helper.make_tensor("t", TensorProto.INT64, [2], [3, -4]),
        values=[helper.make_tensor("t1", TensorProto.FLOAT, [1], [1.0])],
        body=branch,
        bodies=[branch, branch],
    )
    const = helper.make_node("Constant", [], ["c"], value_ints=[1, -2])
    graph = helper.make_graph(
        [const, zoo],
        "zoo",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, None, 7]),
            # before IR 4 initializers were listed as inputs; they are not graph inputs
            helper.make_tensor_value_info("w_raw", TensorProto.FLOAT, [4, 1, 3, 3]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("y2", TensorProto.INT64, [2]),
        ],
        initializer=[*typed, *raw, external],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("test.zoo", 3)]
    )
    helper.set_model_props(model, {"unetrt": '{"halo": 7}', "author": "me"})
    return model


MODELS = {
    "affine": lambda: testing.affine_model(2.0, -1.0, channels=3),
    "conv_stack": lambda: testing.conv_stack_model((3, 5), (1, 2), layout="NCHW"),
    "unet_transpose": lambda: testing.unet_model(filters=4, pools=2),
    "unet_nearest": lambda: testing.unet_model(
        filters=4, pools=3, upsampling="nearest", layout="NCHW", output="softmax", classes=3
    ),
    "zoo": _attribute_zoo,
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_reader_matches_onnx_on_test_models(name: str) -> None:
    _check_against_onnx(MODELS[name]())


def test_reader_matches_onnx_on_the_default_model() -> None:
    model = onnx.load(str(DEFAULT))
    _check_against_onnx(model)
    assert "unetrt" in onnxgraph.read_metadata(DEFAULT)
    graph = onnxgraph.read_graph(DEFAULT)
    assert graph.inputs == ("frame",) and graph.outputs == ("mask",)


def test_reader_reads_from_paths_and_bytes_alike(tmp_path: Path) -> None:
    model = testing.unet_model(filters=2, pools=1)
    testing.save(model, tmp_path / "m.onnx")
    from_path = onnxgraph.read_graph(tmp_path / "m.onnx")
    from_str = onnxgraph.read_graph(str(tmp_path / "m.onnx"))
    from_bytes = onnxgraph.read_graph(model.SerializeToString())
    assert [n.op_type for n in from_path.nodes] == [n.op_type for n in from_bytes.nodes]
    assert from_str.outputs == from_bytes.outputs


# A tiny protobuf writer, to produce encodings the onnx serializer never writes (packed
# attribute ints, unpacked tensor data) and check that both are read.
def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes | int, wire: int = 2) -> bytes:
    if wire == 0:
        assert isinstance(payload, int)
        return _varint(number << 3) + _varint(payload)
    assert isinstance(payload, bytes)
    if wire == 5:
        return _varint(number << 3 | 5) + payload
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_packed_and_unpacked_repeated_fields_are_both_read() -> None:
    ints = [-1, 2, 300]
    packed_ints = _field(8, b"".join(_varint(v) for v in ints))  # AttributeProto.ints, packed
    attr = _field(1, b"kernel") + packed_ints + _field(20, 7, wire=0)  # type INTS
    floats = b"".join(np.array([0.5, -1.5], np.float32).tobytes()[i : i + 4] for i in (0, 4))
    attr_f = (
        _field(1, b"w")
        + _field(7, floats[:4], wire=5)  # AttributeProto.floats, unpacked
        + _field(7, floats[4:], wire=5)
        + _field(20, 6, wire=0)
    )
    node = (
        _field(1, b"x") + _field(2, b"y") + _field(4, b"Conv") + _field(5, attr) + _field(5, attr_f)
    )
    tensor = (
        _field(1, 3, wire=0)  # dims, unpacked
        + _field(2, 7, wire=0)  # INT64
        + _field(8, b"k")
        + b"".join(_field(7, v, wire=0) for v in (5, -6, 7))  # int64_data, unpacked
    )
    graph = _field(1, node) + _field(5, tensor) + _field(11, _field(1, b"x"))
    graph += _field(12, _field(1, b"y"))
    data = _field(1, 8, wire=0) + _field(7, graph) + _field(8, _field(2, 17, wire=0))
    reference = onnx.load_from_string(data)  # protobuf itself accepts both encodings
    assert list(reference.graph.node[0].attribute[0].ints) == ints
    ours = onnxgraph.read_graph(data)
    assert ours.nodes[0].attributes == {"kernel": (-1, 2, 300), "w": (0.5, -1.5)}
    k = ours.initializers["k"]
    assert k.dims == (3,)
    assert k.values is not None
    np.testing.assert_array_equal(k.values, numpy_helper.to_array(reference.graph.initializer[0]))
    _check_against_onnx(reference)


def test_read_metadata_is_fast_and_skips_the_graph() -> None:
    start = time.perf_counter()
    metadata = onnxgraph.read_metadata(DEFAULT)
    elapsed = time.perf_counter() - start
    assert set(metadata) == {"unetrt"}
    # Only the top-level fields are walked: a 1.9 MB file costs little more than its read.
    assert elapsed < 0.1, f"read_metadata took {elapsed * 1e3:.1f} ms"
    # The graph's bytes are not even looked at: junk there does not matter to it.
    entry = _field(1, b"unetrt") + _field(2, b"{}")
    data = _field(1, 8, wire=0) + _field(7, b"\xff" * 12) + _field(14, entry)
    assert onnxgraph.read_metadata(data) == {"unetrt": "{}"}
    with pytest.raises(ModelError, match="not an ONNX model"):
        onnxgraph.read_graph(data)


@pytest.mark.parametrize("cut", [0.5, 0.999, -1])
def test_truncated_file_is_a_model_error(tmp_path: Path, cut: float) -> None:
    data = DEFAULT.read_bytes()
    end = len(data) + cut if cut < 0 else int(len(data) * cut)
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: int(end)])
    for read in (onnxgraph.read_graph, onnxgraph.read_metadata):
        with pytest.raises(ModelError, match="truncated") as info:
            read(path)
        assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, this is not a model\n", b"II*\x00" + bytes(range(256)) * 4, b"\x08"],
)
def test_non_onnx_file_is_a_model_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "frame.onnx"
    path.write_bytes(content)
    for read in (onnxgraph.read_graph, onnxgraph.read_metadata):
        with pytest.raises(ModelError) as info:
            read(path)
        assert str(path) in str(info.value)
        assert "not an ONNX model" in str(info.value) or "truncated" in str(info.value)


def test_missing_file_and_directory_are_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        onnxgraph.read_graph(tmp_path / "nope.onnx")
    with pytest.raises(ModelError, match="directory"):
        onnxgraph.read_metadata(tmp_path)


# ------------------------------------------------------------------- receptive field


@pytest.mark.parametrize(
    ("kernels", "dilations"), [((3,), None), ((3, 3), None), ((5, 3, 7), (1, 2, 3)), ((1,), None)]
)
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_conv_stack_bound_is_its_exact_radius(
    kernels: tuple[int, ...], dilations: tuple[int, ...] | None, layout: str
) -> None:
    model = testing.conv_stack_model(kernels, dilations, layout=layout)
    bound = onnxgraph.receptive_field(onnxgraph.read_graph(model.SerializeToString()))
    assert bound.radius == testing.conv_stack_radius(kernels, dilations)
    assert bound.alignment == 1
    assert f"over {len(kernels) + 1} Conv" in bound.reason


@pytest.mark.parametrize("pools", [1, 2, 3, 4])
@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("upsampling", ["transpose", "nearest"])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_unet_bound_is_its_exact_radius(
    pools: int, kernel: int, upsampling: str, layout: str
) -> None:
    # unet_receptive_radius is exact (tests/test_testing.py checks it against impulses
    # at every position of the pooling grid), so the bound must equal it.
    model = testing.unet_model(
        filters=2, pools=pools, kernel=kernel, upsampling=upsampling, layout=layout
    )
    bound = onnxgraph.receptive_field(onnxgraph.read_graph(model.SerializeToString()))
    assert bound.radius == testing.unet_receptive_radius(pools, kernel)
    assert bound.alignment == 2**pools


def test_affine_model_has_radius_zero() -> None:
    bound = onnxgraph.receptive_field(
        onnxgraph.read_graph(testing.affine_model(2.0, 1.0).SerializeToString())
    )
    assert (bound.radius, bound.alignment) == (0, 1)


# Hand-built graphs: an NCHW input "x" of one channel, one output "y".
def _graph(
    nodes: Sequence[Any], inits: Sequence[Any] = (), extra_inputs: Sequence[Any] = ()
) -> Any:
    graph = helper.make_graph(
        nodes,
        "single",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "H", "W"]), *extra_inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)],
        initializer=list(inits),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


_RNG = np.random.default_rng(1)


def _w(name: str, *shape: int) -> Any:
    return numpy_helper.from_array(_RNG.normal(size=shape).astype(np.float32) + 1.0, name)


def _c(name: str, values: Any, dtype: Any = np.int64) -> Any:
    return numpy_helper.from_array(np.array(values, dtype), name)


def _conv(x: str, y: str, w: str, **attrs: Any) -> Any:
    return helper.make_node("Conv", [x, w], [y], **attrs)


def _measured(model: Any, size: tuple[int, int] = (64, 80), grid: int = 8) -> tuple[int, int]:
    """Impulse response radius (height, width) over every position of the grid."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    h, w = size
    image = np.random.default_rng(0).random((1, 1, h, w), dtype=np.float32)
    base = session.run(None, {"x": image})[0]
    reach_h = reach_w = 0
    for d in range(grid):
        y0, x0 = h // 2 // grid * grid + d, w // 2 // grid * grid + d
        hit = image.copy()
        hit[0, 0, y0, x0] += 100.0  # positive: the maximum of every window it is in
        changed = (session.run(None, {"x": hit})[0] != base).any(axis=(0, 1))
        rows, cols = np.nonzero(changed.any(axis=1))[0], np.nonzero(changed.any(axis=0))[0]
        reach_h = max(reach_h, y0 - rows.min(), rows.max() - y0)
        reach_w = max(reach_w, x0 - cols.min(), cols.max() - x0)
    return int(reach_h), int(reach_w)


def _pool_then(resize: Any, inits: list[Any], pool: str = "MaxPool", **pool_attrs: Any) -> Any:
    attrs = {"kernel_shape": [2, 2], "strides": [2, 2], **pool_attrs}
    return _graph([helper.make_node(pool, ["x"], ["p"], **attrs), resize], inits)


def _resize(mode: str = "nearest", **attrs: Any) -> Any:
    return helper.make_node("Resize", ["p", "", "s"], ["y"], mode=mode, **attrs)


SCALES = _c("s", [1, 1, 2, 2], np.float32)

SINGLE_OPS: dict[str, tuple[Any, tuple[int, int], int]] = {
    # name: (model, exact (height, width) radius, sampling grid)
    "conv 3x3 pad 1": (
        _graph([_conv("x", "y", "w", pads=[1, 1, 1, 1])], [_w("w", 1, 1, 3, 3)]),
        (1, 1),
        1,
    ),
    "conv dilation 3": (
        _graph([_conv("x", "y", "w", pads=[3, 3, 3, 3], dilations=[3, 3])], [_w("w", 1, 1, 3, 3)]),
        (3, 3),
        1,
    ),
    "conv 3x7": (
        _graph([_conv("x", "y", "w", pads=[1, 3, 1, 3])], [_w("w", 1, 1, 3, 7)]),
        (1, 3),
        1,
    ),
    "conv pads at the end": (
        _graph([_conv("x", "y", "w", pads=[0, 2, 2, 0])], [_w("w", 1, 1, 3, 3)]),
        (2, 2),
        1,
    ),
    "conv 4x4 asymmetric": (
        _graph([_conv("x", "y", "w", pads=[1, 2, 2, 1])], [_w("w", 1, 1, 4, 4)]),
        (2, 2),
        1,
    ),
    "conv same_lower": (
        _graph([_conv("x", "y", "w", auto_pad="SAME_LOWER")], [_w("w", 1, 1, 4, 2)]),
        (2, 1),
        1,
    ),
    "conv stride 2 + transpose": (
        _graph(
            [
                _conv("x", "h", "w", pads=[1, 1, 1, 1], strides=[2, 2]),
                helper.make_node(
                    "ConvTranspose", ["h", "wt"], ["y"], kernel_shape=[2, 2], strides=[2, 2]
                ),
            ],
            [_w("w", 1, 1, 3, 3), _w("wt", 1, 1, 2, 2)],
        ),
        (2, 2),
        2,
    ),
    "conv stride 2 + transpose 4 pad 1": (
        _graph(
            [
                _conv("x", "h", "w", pads=[1, 1, 1, 1], strides=[2, 2]),
                helper.make_node(
                    "ConvTranspose", ["h", "wt"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1]
                ),
            ],
            [_w("w", 1, 1, 3, 3), _w("wt", 1, 1, 4, 4)],
        ),
        (3, 3),
        2,
    ),
    "maxpool + nearest": (_pool_then(_resize(), [SCALES]), (1, 1), 2),
    "maxpool 3 pad 1 + nearest": (
        _pool_then(_resize(), [SCALES], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        (2, 2),
        2,
    ),
    "avgpool + linear": (_pool_then(_resize("linear"), [SCALES], "AveragePool"), (2, 2), 2),
    "avgpool + cubic": (_pool_then(_resize("cubic"), [SCALES], "AveragePool"), (4, 4), 2),
    "maxpool + nearest asymmetric floor": (
        _pool_then(
            _resize(coordinate_transformation_mode="asymmetric", nearest_mode="floor"), [SCALES]
        ),
        (1, 1),
        2,
    ),
    "maxpool + nearest to Shape-computed sizes": (
        _graph(
            [
                helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
                helper.make_node("Shape", ["p"], ["shape"]),
                helper.make_node("Slice", ["shape", "two", "four"], ["hw"]),
                helper.make_node("Mul", ["hw", "two"], ["hw2"]),
                helper.make_node("Shape", ["x"], ["xshape"]),
                helper.make_node("Slice", ["xshape", "zero", "two"], ["nc"]),
                helper.make_node("Concat", ["nc", "hw2"], ["sizes"], axis=0),
                helper.make_node("Resize", ["p", "", "", "sizes"], ["y"], mode="nearest"),
            ],
            [_c("zero", [0]), _c("two", [2]), _c("four", [4])],
        ),
        (1, 1),
        2,
    ),
    "pad + valid conv": (
        _graph(
            [
                helper.make_node("Pad", ["x", "pads"], ["p"]),
                _conv("p", "y", "w"),
            ],
            [_c("pads", [0, 0, 2, 1, 0, 0, 0, 1]), _w("w", 1, 1, 3, 3)],
        ),
        (2, 1),
        1,
    ),
    "pad + slice": (
        _graph(
            [
                helper.make_node("Pad", ["x", "pads"], ["p"], mode="reflect"),
                helper.make_node("Slice", ["p", "starts", "ends", "axes"], ["y"]),
            ],
            [
                _c("pads", [0, 0, 0, 0, 0, 0, 4, 0]),
                _c("starts", [4]),
                _c("ends", [2**62]),
                _c("axes", [2]),
            ],
        ),
        (4, 0),
        1,
    ),
    "shifted copies concatenated along the height": (
        # x[i - 1] and x[i + 1] with clamped edges, as a bilinear upsampling built from
        # slices computes them (the size-dependent offsets of x[-1:] cancel out)
        _graph(
            [
                helper.make_node("Slice", ["x", "zero", "one", "two"], ["first"]),
                helper.make_node("Slice", ["x", "zero", "minus_one", "two"], ["head"]),
                helper.make_node("Concat", ["first", "head"], ["before"], axis=2),
                helper.make_node("Slice", ["x", "one", "end", "two"], ["tail"]),
                helper.make_node("Slice", ["x", "minus_one", "end", "two"], ["last"]),
                helper.make_node("Concat", ["tail", "last"], ["after"], axis=2),
                helper.make_node("Sum", ["before", "x", "after"], ["y"]),
            ],
            [
                _c("zero", [0]),
                _c("one", [1]),
                _c("two", [2]),
                _c("minus_one", [-1]),
                _c("end", [2**62]),
            ],
        ),
        (1, 0),
        1,
    ),
    "maxpool, then interleaved copies (stack and reshape)": (
        _graph(
            [
                helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
                helper.make_node("Unsqueeze", ["p", "three"], ["u"]),
                helper.make_node("Concat", ["u", "u"], ["pairs"], axis=3),
                helper.make_node("Shape", ["x"], ["xs"]),
                helper.make_node("Shape", ["p"], ["ps"]),
                helper.make_node("Slice", ["xs", "zero", "three"], ["nch"]),
                helper.make_node("Slice", ["ps", "three", "four"], ["w"]),
                helper.make_node("Concat", ["nch", "w"], ["target"], axis=0),
                helper.make_node("Reshape", ["pairs", "target"], ["rows"]),
                helper.make_node("Unsqueeze", ["rows", "four"], ["v"]),
                helper.make_node("Concat", ["v", "v"], ["cols"], axis=4),
                helper.make_node("Reshape", ["cols", "xs"], ["y"]),
            ],
            [_c("zero", [0]), _c("three", [3]), _c("four", [4])],
        ),
        (1, 1),
        2,
    ),
    "conv with big weights in a Constant node": (
        # old exporters: weights as Constant nodes; only their dims are decoded
        _graph(
            [
                helper.make_node("Constant", [], ["w"], value=_w("w_value", 1, 1, 33, 33)),
                _conv("x", "y", "w", pads=[16, 16, 16, 16]),
            ]
        ),
        (16, 16),
        1,
    ),
    "space to depth, 1x1 conv, depth to space": (
        _graph(
            [
                helper.make_node("SpaceToDepth", ["x"], ["d"], blocksize=2),
                _conv("d", "m", "w"),
                helper.make_node("DepthToSpace", ["m"], ["y"], blocksize=2),
            ],
            [_w("w", 4, 4, 1, 1)],
        ),
        (1, 1),
        2,
    ),
}


@pytest.mark.parametrize("name", sorted(SINGLE_OPS))
def test_single_op_bound_is_exact(name: str) -> None:
    model, (rh, rw), grid = SINGLE_OPS[name]
    onnx.checker.check_model(model, full_check=True)
    bound = onnxgraph.receptive_field(onnxgraph.read_graph(model.SerializeToString()))
    assert bound.radius == max(rh, rw), bound.reason
    assert bound.alignment == grid
    if rh != rw:
        assert f"(height {rh}, width {rw})" in bound.reason
    # The hand-worked value is what onnxruntime shows: the structure is reached in full.
    assert _measured(model, grid=max(grid, 2)) == (rh, rw)


def test_align_corners_resize_is_bounded() -> None:
    # align_corners is not shift-invariant (tiles cannot be exact), but it is bounded.
    model = _pool_then(_resize("linear", coordinate_transformation_mode="align_corners"), [SCALES])
    bound = onnxgraph.receptive_field(onnxgraph.read_graph(model.SerializeToString()))
    assert bound.radius is not None
    assert max(_measured(model)) <= bound.radius <= 3


def _refused(model: Any) -> str:
    bound = onnxgraph.receptive_field(onnxgraph.read_graph(model.SerializeToString()))
    assert bound.radius is None
    assert bound.alignment is None
    return bound.reason


def test_global_pooling_cannot_be_bounded() -> None:
    # A squeeze-and-excitation block: every output pixel sees the whole frame.
    model = _graph(
        [
            helper.make_node("GlobalAveragePool", ["x"], ["g"], name="squeeze"),
            helper.make_node("Sigmoid", ["g"], ["e"]),
            helper.make_node("Mul", ["x", "e"], ["y"]),
        ]
    )
    reason = _refused(model)
    assert "GlobalAveragePool 'squeeze'" in reason and "whole frame" in reason


@pytest.mark.parametrize(
    ("nodes", "inits", "inputs", "words"),
    [
        (
            [
                helper.make_node("ReduceMean", ["x", "axes"], ["m"], name="mean"),
                helper.make_node("Sub", ["x", "m"], ["y"]),
            ],
            [_c("axes", [2, 3])],
            [],
            "ReduceMean 'mean'",
        ),
        ([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], [], [], "Softmax"),
        ([helper.make_node("Foo", ["x"], ["y"], domain="custom")], [], [], "domain 'custom'"),
        ([helper.make_node("Einsum", ["x"], ["y"], equation="nchw->nchw")], [], [], "Einsum"),
        (
            [helper.make_node("Resize", ["x", "", "", "size"], ["y"])],
            [],
            [helper.make_tensor_value_info("size", TensorProto.INT64, [4])],
            "sizes",
        ),
        (
            [_conv("x", "y", "w", pads=[1, 1, 1, 1], strides=[2, 2])],
            [_w("w", 1, 1, 3, 3)],
            [],
            "not at the input's resolution",
        ),
        (
            [
                helper.make_node("Flatten", ["x"], ["f"]),
                helper.make_node("Identity", ["f"], ["y"]),
            ],
            [],
            [],
            "scatters the height axis",
        ),
    ],
)
def test_unboundable_ops_are_named(
    nodes: list[Any], inits: list[Any], inputs: list[Any], words: str
) -> None:
    assert words in _refused(_graph(nodes, inits, inputs))


def test_control_flow_cannot_be_bounded() -> None:
    branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["z"])],
        "branch",
        [],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
    )
    model = _graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)],
        [numpy_helper.from_array(np.array(True), "cond")],
    )
    assert "control flow" in _refused(model)


def test_only_paths_to_the_bounded_outputs_matter() -> None:
    # A per-image score pools over the frame; the mask does not depend on it.
    graph = helper.make_graph(
        [
            _conv("x", "mask", "w", pads=[1, 1, 1, 1]),
            helper.make_node("GlobalMaxPool", ["x"], ["score"], name="score"),
            helper.make_node("GlobalAveragePool", ["x"], ["unused"]),
        ],
        "two outputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "H", "W"])],
        [
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, [None] * 4),
            helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, 1, 1, 1]),
        ],
        initializer=[_w("w", 1, 1, 3, 3)],
    )
    ours = onnxgraph.read_graph(helper.make_model(graph).SerializeToString())
    both = onnxgraph.receptive_field(ours)
    assert both.radius is None
    assert "GlobalMaxPool 'score'" in both.reason and "output 'score'" in both.reason
    assert onnxgraph.receptive_field(ours, outputs=["mask"]).radius == 1


def test_unknown_names_are_model_errors() -> None:
    graph = onnxgraph.read_graph(testing.affine_model(1.0, 0.0).SerializeToString())
    with pytest.raises(ModelError, match="no input 'frame'"):
        onnxgraph.receptive_field(graph, "frame")
    with pytest.raises(ModelError, match="no output 'probabilities'"):
        onnxgraph.receptive_field(graph, outputs=["probabilities"])
    with pytest.raises(ModelError, match="layout"):
        onnxgraph.receptive_field(graph, layout="HWC")
    assert onnxgraph.receptive_field(graph, testing.INPUT_NAME, layout="NHWC").radius == 0


def _measured_nhwc(path_or_model: Any, input_name: str, size: int = 256, grid: int = 8) -> int:
    data = path_or_model if isinstance(path_or_model, bytes) else path_or_model.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    image = np.random.default_rng(3).random((1, size, size, 1), dtype=np.float32)
    base = session.run(None, {input_name: image})[0]
    reach = 0
    for d in range(grid):
        c = size // 2 // grid * grid + d
        for sign in (1.0, -1.0):
            hit = image.copy()
            hit[0, c, c, 0] += 100.0 * sign
            changed = (session.run(None, {input_name: hit})[0] != base).any(axis=(0, 3))
            rows, cols = np.nonzero(changed.any(axis=1))[0], np.nonzero(changed.any(axis=0))[0]
            reach = max(reach, c - rows.min(), rows.max() - c, c - cols.min(), cols.max() - c)
    return int(reach)


def test_bound_covers_the_measured_influence_of_the_default_model() -> None:
    bound = onnxgraph.receptive_field(onnxgraph.read_graph(DEFAULT))
    assert bound.radius == testing.unet_receptive_radius(pools=3, kernel=3) == 51
    assert bound.alignment == 8
    assert "15 Conv" in bound.reason and "3 ConvTranspose" in bound.reason
    assert "3 MaxPool" in bound.reason
    assert _measured_nhwc(DEFAULT.read_bytes(), "frame") <= bound.radius


def test_bound_covers_the_measured_influence_of_a_unet() -> None:
    model = testing.unet_model(filters=4, pools=3, seed=5)
    bound = onnxgraph.receptive_field(onnxgraph.read_graph(model.SerializeToString()))
    assert bound.radius is not None
    assert _measured_nhwc(model, testing.INPUT_NAME) <= bound.radius


def test_default_model_is_bounded_in_well_under_100_ms() -> None:
    data = DEFAULT.read_bytes()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        onnxgraph.receptive_field(onnxgraph.read_graph(data))
        best = min(best, time.perf_counter() - start)
    print(f"read_graph + receptive_field on default.onnx: {best * 1e3:.1f} ms")
    assert best < 0.1


KERAS_CONFIGS = [
    {"upsampling": "interpolation"},  # bilinear built from slices, concat and reshape
    {"downsampling": "strided", "kernel_size": 5},  # TF "same" padding on stride 2
    {"pools": 3, "dilation": (2, 1, 1), "batch_norm": True},  # tf2onnx: SpaceToDepth + Pad
]


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("UNETRT_SLOW"), reason="slow: set UNETRT_SLOW=1")
@pytest.mark.parametrize("options", KERAS_CONFIGS, ids=lambda o: ",".join(map(str, o.values())))
def test_keras_exports_are_bounded_as_their_architecture_says(
    tmp_path: Path, options: dict[str, Any]
) -> None:
    # tf2onnx rewrites layers (dilated convolutions, dynamic crops, shape arithmetic);
    # the bound must still be the training module's analytic radius and cover the
    # measured influence.
    pytest.importorskip("tensorflow")
    from unetrt.export import export
    from unetrt.train.models import UNetConfig, alignment, build_model, receptive_field

    cfg = UNetConfig(**{"pools": 2, "filters": 4, **options})
    build_model(cfg).save(tmp_path / "m.keras")
    export(tmp_path / "m.keras", tmp_path / "m.onnx")
    bound = onnxgraph.receptive_field(onnxgraph.read_graph(tmp_path / "m.onnx"))
    assert bound.radius == receptive_field(cfg), bound.reason
    assert bound.alignment == alignment(cfg)
    data = (tmp_path / "m.onnx").read_bytes()
    assert _measured_nhwc(data, "frame", grid=alignment(cfg)) <= bound.radius


# ----------------------------------------------------------------- activation memory


def _chain(custom: bool = False) -> Any:
    """x (1 channel) -> Conv 1->8 -> Relu -> Conv 8->1 (-> a custom-domain op)."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(8, 1, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(1, 8, 3, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y" if not custom else "c"], pads=[1, 1, 1, 1]),
    ]
    if custom:
        nodes.append(helper.make_node("Mystery", ["c"], ["y"], domain="example.com"))
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        initializer=[w1, w2],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_activation_bytes_follow_liveness_exactly() -> None:
    # Per pixel: x 4 B; a (8 ch) 32 B while x is still read: 36; then x is freed and r
    # (32 B) is made while a is live: 64, the peak; then a is freed and y (4 B) made.
    graph = onnxgraph.read_graph(_chain().SerializeToString())
    assert onnxgraph.activation_bytes(graph) == 64.0


def test_activation_bytes_unknown_where_the_graph_cannot_be_followed() -> None:
    graph = onnxgraph.read_graph(_chain(custom=True).SerializeToString())
    assert onnxgraph.activation_bytes(graph) is None  # the custom op's output is unknown


def test_activation_bytes_of_the_default_model() -> None:
    # A regression value (64 float32 channels live at the peak, at full resolution),
    # not an oracle: OpenVINO's resident memory on 2048 x 2048 frames of a 32-filter
    # model matched the 512 bytes this gives it (benchmarks/RESULTS.md).
    assert onnxgraph.activation_bytes(onnxgraph.read_graph(DEFAULT)) == 256.0
