from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from unetrt import testing
from unetrt.backends import (
    Backend,
    BackendOptions,
    Device,
    create_backend,
    detect_layout,
    parse_device,
)
from unetrt.backends.base import ShapeRange
from unetrt.backends.onnxruntime import OnnxRuntimeBackend
from unetrt.errors import ConfigError, MissingDependencyError, ModelError
from unetrt.model import run_prediction


def _graph_model(nodes, inputs, outputs, initializers=()) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=testing.IR_VERSION
    )
    return model.SerializeToString()


def _identity(in_shape, out_shape=None, elem=TensorProto.FLOAT) -> bytes:
    return _graph_model(
        [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", elem, in_shape)],
        [helper.make_tensor_value_info("y", elem, out_shape or in_shape)],
    )


# --- devices and options ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "kind", "index", "text"),
    [
        ("cpu", "cpu", 0, "cpu"),
        ("cuda", "cuda", 0, "cuda:0"),
        ("cuda:0", "cuda", 0, "cuda:0"),
        (" CUDA:3 ", "cuda", 3, "cuda:3"),
    ],
)
def test_parse_device(spec: str, kind: str, index: int, text: str) -> None:
    device = parse_device(spec)
    assert device == Device(kind, index)
    assert str(device) == text
    assert parse_device(device) is device


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "cuda:-1", "", "cpu:0"])
def test_parse_device_names_the_bad_value(spec: str) -> None:
    with pytest.raises(ConfigError, match=repr(spec).replace("[", r"\[")):
        parse_device(spec)


def test_backend_options_normalise_and_validate() -> None:
    assert BackendOptions(device="cuda").device == "cuda:0"
    assert BackendOptions(threads=2).parsed_device == Device("cpu")
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ConfigError, match="threads must be a positive integer"):
            BackendOptions(threads=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'tpu'"):
        BackendOptions(device="tpu")


@pytest.mark.parametrize(
    ("shape", "layout"),
    [
        ((None, None, None, 1), "NHWC"),
        ((None, None, None, 3), "NHWC"),
        ((1, 256, 256, 1), "NHWC"),
        ((None, 1, None, None), "NCHW"),
        ((1, 3, 512, 512), "NCHW"),
        ((None, None, None, None), None),
        ((1, 8, 8, 8), None),
    ],
)
def test_detect_layout(shape: tuple[int | None, ...], layout: str | None) -> None:
    found, why = detect_layout(shape)
    assert found == layout
    assert "[" in why  # the reason shows the shape


# --- the ONNX Runtime backend ----------------------------------------------------------


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("channels", [1, 3])
def test_affine_output_is_exact(layout: str, channels: int) -> None:
    model = testing.affine_model(1.7, -0.3, channels=channels, layout=layout)
    be = OnnxRuntimeBackend(model.SerializeToString(), BackendOptions(threads=1))
    assert isinstance(be, Backend)
    assert (be.name, be.device, be.layout) == ("onnxruntime", "cpu", layout)
    assert [t.name for t in be.inputs] == ["image"]
    assert [t.name for t in be.outputs] == ["mask"]
    expected_shape = (
        (None, None, None, channels) if layout == "NHWC" else (None, channels, None, None)
    )
    assert be.inputs[0].shape == expected_shape
    assert be.outputs[0].shape == expected_shape
    assert be.outputs[0].channels == channels
    assert (be.inputs[0].dtype, be.inputs[0].layout) == (np.dtype(np.float32), layout)
    assert be.accepted().fixed_tile is None
    assert be.accepted().fixed_batch is None
    assert be.accepted() == ShapeRange()  # any batch, any size
    rng = np.random.default_rng(1)
    shape = (3, 24, 40, channels) if layout == "NHWC" else (3, channels, 24, 40)
    x = rng.normal(size=shape).astype(np.float32)
    y = be.run({"image": x})
    assert list(y) == ["mask"]
    assert y["mask"].dtype == np.float32
    np.testing.assert_array_equal(y["mask"], np.float32(1.7) * x + np.float32(-0.3))


def test_layout_override(tmp_path: Path) -> None:
    path = tmp_path / "affine.onnx"
    testing.save(testing.affine_model(2.0, 0.0, channels=4, layout="NHWC"), path)
    be = create_backend(path, layout="NCHW")
    assert be.layout == "NCHW"
    assert be.outputs[0].channels is None  # dim 1 of [N, H, W, 4] is dynamic
    with pytest.raises(ConfigError, match="'CHW'"):
        create_backend(path, layout="CHW")


def test_fixed_size_model() -> None:
    be = OnnxRuntimeBackend(_identity([2, 32, 48, 1]))
    assert be.layout == "NHWC"
    assert be.accepted().fixed_tile == (32, 48)
    assert be.accepted().fixed_batch == 2
    assert be.accepted("x") == ShapeRange(2, 2, 2, (32, 48), (32, 48), (32, 48))
    x = np.ones((2, 32, 48, 1), np.float32)
    np.testing.assert_array_equal(be.run({"x": x})["y"], x)


def test_float16_model_takes_and_returns_float32() -> None:
    be = OnnxRuntimeBackend(_identity(["N", "H", "W", 1], elem=TensorProto.FLOAT16))
    assert be.inputs[0].dtype == np.float16
    x = np.full((1, 8, 8, 1), 0.5, np.float32)
    y = be.run({"x": x})["y"]
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x)


def test_metadata() -> None:
    model = testing.affine_model(1.0, 0.0)
    helper.set_model_props(model, {"unetrt": "{}", "author": "lab"})
    be = OnnxRuntimeBackend(model.SerializeToString())
    assert be.metadata() == {"unetrt": "{}", "author": "lab"}


def test_close_and_context_manager() -> None:
    with OnnxRuntimeBackend(testing.affine_model(1.0, 0.0).SerializeToString()) as be:
        be.run({"image": np.zeros((1, 4, 4, 1), np.float32)})
    with pytest.raises(RuntimeError, match="closed"):
        be.run({"image": np.zeros((1, 4, 4, 1), np.float32)})


# --- errors ----------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"cannot load model .*nope\.onnx: no such file"):
        create_backend(tmp_path / "nope.onnx")


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"this is not a model")
    with pytest.raises(
        ModelError, match=r"cannot load model .*garbage\.onnx: Protobuf parsing failed"
    ):
        create_backend(path, "onnxruntime")


def test_three_dimensional_input() -> None:
    with pytest.raises(ModelError, match=r"input 'x' has shape \[\?, \?, \?\] \(rank 3\)"):
        OnnxRuntimeBackend(_identity(["N", "H", "W"]))


def _two_in_two_out() -> bytes:
    """y = a + b, z = 2a - b: two image-sized inputs, two outputs, values known exactly."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    image = ["N", "H", "W", 1]
    return _graph_model(
        [
            helper.make_node("Add", ["a", "b"], ["y"]),
            helper.make_node("Mul", ["a", "two"], ["a2"]),
            helper.make_node("Sub", ["a2", "b"], ["z"]),
        ],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, image),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, image),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, image),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, image),
        ],
        [two],
    )


def test_several_inputs_and_outputs_by_name() -> None:
    be = OnnxRuntimeBackend(_two_in_two_out(), BackendOptions(threads=1))
    assert [(t.name, t.shape, t.layout) for t in be.inputs] == [
        ("a", (None, None, None, 1), "NHWC"),
        ("b", (None, None, None, 1), "NHWC"),
    ]
    assert [t.name for t in be.outputs] == ["y", "z"]
    rng = np.random.default_rng(2)
    a = rng.integers(-50, 50, (2, 6, 10, 1)).astype(np.float32)
    b = rng.integers(-50, 50, (2, 6, 10, 1)).astype(np.float32)
    out = be.run({"a": a, "b": b})
    assert sorted(out) == ["y", "z"]
    np.testing.assert_array_equal(out["y"], a + b)  # small integers: exact in float32
    np.testing.assert_array_equal(out["z"], 2 * a - b)
    with pytest.raises(ModelError, match=r"takes inputs \['a', 'b'\], got \['a'\]"):
        be.run({"a": a})


def test_outputs_go_into_the_callers_buffers() -> None:
    be = OnnxRuntimeBackend(_two_in_two_out(), BackendOptions(threads=1))
    a = np.full((1, 4, 5, 1), 3.0, np.float32)
    b = np.full((1, 4, 5, 1), 1.0, np.float32)
    z = np.zeros((1, 4, 5, 1), np.float32)
    for _ in range(2):  # the same buffer, reused
        out = be.run({"a": a, "b": b}, out={"z": z})
        assert out["z"] is z
        np.testing.assert_array_equal(z, 2 * a - b)
        np.testing.assert_array_equal(out["y"], a + b)  # allocated by the backend
        a += 1.0
    np.testing.assert_array_equal(z, 7.0)  # 2 * 4 - 1: the second run wrote the buffer


def test_engine_refuses_a_frame_model_with_two_inputs(tmp_path: Path) -> None:
    from unetrt.model import open_model

    path = tmp_path / "two.onnx"
    path.write_bytes(_two_in_two_out())
    with pytest.raises(ModelError, match=r"has 2 inputs \('a', 'b'\)"):
        open_model(path)


def test_integer_input() -> None:
    with pytest.raises(ModelError, match=r"input 'x' is tensor\(uint8\)"):
        OnnxRuntimeBackend(_identity(["N", "H", "W", 1], elem=TensorProto.UINT8))


def test_run_errors_give_shapes() -> None:
    be = OnnxRuntimeBackend(testing.affine_model(1.0, 0.0, channels=1).SerializeToString())
    with pytest.raises(
        ModelError, match=r"batch of shape \(1, 8, 8, 2\) \(model input \[\?, \?, \?, 1\]"
    ):
        be.run({"image": np.zeros((1, 8, 8, 2), np.float32)})
    with pytest.raises(ModelError, match=r"4-D batch, got shape \(8, 8\)"):
        be.run({"image": np.zeros((8, 8), np.float32)})


def test_unet_rejects_unaligned_size() -> None:
    be = OnnxRuntimeBackend(testing.unet_model(filters=2, pools=2).SerializeToString())
    with pytest.raises(ModelError, match=r"\(1, 18, 16, 1\)"):
        be.run({"image": np.zeros((1, 18, 16, 1), np.float32)})


def test_output_of_another_size() -> None:
    model = _graph_model(
        [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, "h", "w"])],
    )
    be = OnnxRuntimeBackend(model)
    with pytest.raises(
        ModelError, match=r"returned shape \(1, 1, 4, 4\) .*for input \(1, 1, 8, 8\)"
    ):
        run_prediction(be, be.inputs[0], be.outputs[0], np.zeros((1, 1, 8, 8), np.float32))


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="this onnxruntime has CUDA"
)
def test_cuda_without_cuda_build() -> None:
    with pytest.raises(ConfigError, match=r"device 'cuda:0' needs ONNX Runtime with CUDA"):
        create_backend(
            testing.affine_model(1.0, 0.0).SerializeToString(), "onnxruntime", device="cuda"
        )


# --- create_backend --------------------------------------------------------------------


def test_create_backend_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    import unetrt.backends as backends

    data = testing.affine_model(1.0, 0.0).SerializeToString()
    monkeypatch.setattr(backends, "openvino_available", lambda: False)
    assert isinstance(create_backend(data), OnnxRuntimeBackend)  # auto without OpenVINO
    assert isinstance(create_backend(data, "onnxruntime", threads=1), OnnxRuntimeBackend)
    with pytest.raises(MissingDependencyError, match="TensorRT is not installed"):
        create_backend(data, "tensorrt")  # checked first: no engine runs without TensorRT
    with pytest.raises(ConfigError, match="does not compute in fp16"):
        create_backend(data, "onnxruntime", precision="fp16")
    with pytest.raises(
        ConfigError,
        match=r"one of \('auto', 'onnxruntime', 'openvino', 'tensorrt'\), got 'trt'",
    ):
        create_backend(data, "trt")


def test_inference_does_not_import_onnx() -> None:
    # onnx is a test/train extra: the inference path must load models without it.
    code = (
        "import sys, unetrt.model, unetrt.backends.onnxruntime; "
        "assert 'onnx' not in sys.modules, 'onnx was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_float16_outputs_are_copied_into_float32_buffers() -> None:
    be = OnnxRuntimeBackend(_identity(["N", "H", "W", 1], elem=TensorProto.FLOAT16))
    x = np.full((2, 8, 8, 1), 0.25, np.float32)
    y = np.zeros((2, 8, 8, 1), np.float32)
    out = be.run({"x": x}, out={"y": y})
    assert out["y"] is y
    np.testing.assert_array_equal(y, x)


def test_an_output_of_another_size_than_its_buffer_is_returned_as_is() -> None:
    model = _graph_model(
        [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, "h", "w"])],
    )
    be = OnnxRuntimeBackend(model)
    x = np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8)
    buffer = np.zeros((1, 1, 8, 8), np.float32)
    got = be.run({"x": x}, out={"y": buffer})["y"]
    assert got.shape == (1, 1, 4, 4) and got is not buffer
    np.testing.assert_array_equal(got[0, 0], x[0, 0, 1::2, 1::2])
    # ...so that the engine names the real shapes, as without a buffer:
    with pytest.raises(ModelError, match=r"returned shape \(1, 1, 4, 4\) .*for input"):
        run_prediction(be, be.inputs[0], be.outputs[0], x, buffer)
