"""TensorRT engines: building (`unetrt.tensorrt_build`) and running
(`unetrt.backends.tensorrt`).

These are contract tests against a fake: `fake_tensorrt` records what unetrt asks of the
``tensorrt`` module (flags, profiles, precision, timing cache, tensor addresses) and a
fake GPU stands in for the CUDA device. They check unetrt's own logic and that it calls
TensorRT's API as written; they are NOT GPU verification: no engine is built, no kernel
runs, and TensorRT's real behaviour (what it accepts, how fast and how exact an engine
is) is not tested here. That needs an NVIDIA GPU with TensorRT installed.

The tests at the end run without the fake, in the real environment here, which has no
TensorRT (at most ``tensorrt-stubs``, an empty ``tensorrt`` namespace package) and no GPU.
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import fake_tensorrt
import numpy as np
import onnx
import pytest
import tifffile
from onnx import numpy_helper
from test_cli import assert_user_error, run_cli

from unetrt.backends import create_backend
from unetrt.backends.base import Device, ShapeRange, TensorSpec
from unetrt.backends.onnxruntime import OnnxRuntimeBackend
from unetrt.backends.tensorrt import (
    TensorRTBackend,
    check_compatible,
    check_tensorrt,
    tensorrt_available,
    tensorrt_log,
    tensorrt_version,
)
from unetrt.contract import EngineInfo, ModelContract, read_contract, read_engine
from unetrt.engines import Accuracy, build_engine
from unetrt.errors import (
    ConfigError,
    InputError,
    MissingDependencyError,
    ModelError,
    OutputError,
)
from unetrt.onnxgraph import activation_bytes, read_graph
from unetrt.tensorrt_build import (
    DEFAULT_TILE,
    Profile,
    TensorRTOptions,
    build_tensorrt,
    calibration_tiles,
    check_precision,
    derive_profiles,
    profile_tile,
)
from unetrt.testing import convlstm_step_contract

F32 = np.dtype(np.float32)
TRT10 = "10.13.0.35"
TRT11 = "11.0.0.7"
GPU = {"name": "NVIDIA Fake", "compute_capability": "8.6"}
MISSING = "TensorRT is not installed (pip install tensorrt, from NVIDIA's package index)"


@pytest.fixture()
def trt(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The fake TensorRT 10 as ``tensorrt``, and one fake GPU (`fake_tensorrt.install`)."""
    return fake_tensorrt.install(monkeypatch, TRT10)


def image(shape: tuple[int | None, ...], name: str = "image", layout: str = "NHWC") -> TensorSpec:
    return TensorSpec(name, shape, F32, layout)


def build(
    source: Path,
    tmp_path: Path,
    precision: str = "fp32",
    options: TensorRTOptions | None = None,
    tile: tuple[int, int] | None = (32, 32),
    feeds: list[dict[str, np.ndarray]] | None = None,
) -> tuple[dict, fake_tensorrt.Builder, Path]:
    """`build_tensorrt` of the unet for cuda:0: its details, the fake builder, the engine."""
    backend = OnnxRuntimeBackend(source)
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    built = tmp_path / "unet.engine"
    details = build_tensorrt(
        source,
        built,
        contract=read_contract(source).contract,
        inputs=backend.inputs,
        outputs=backend.outputs,
        precision=precision,
        device=Device("cuda", 0),
        tile=tile,
        options=options or TensorRTOptions(),
        feeds=feeds,
        method="minmax",
        staging=staging,
    )
    return details, fake_tensorrt.state.builders[-1], built


def details_of(version: str = TRT10, **changes: object) -> dict:
    """What `build_tensorrt` returns for the unet at the defaults, with changes."""
    return {
        "tensorrt": version,
        "gpu": GPU,
        "strongly_typed": version.startswith("11."),
        "profiles": {"image": {"min": [1, 4, 4, 1], "opt": [1, 32, 32, 1], "max": [1, 32, 32, 1]}},
        "version_compatible": False,
        "hardware_compatible": False,
        "max_batch": 1,
        "workspace_mib": None,
        "opt_level": None,
        "inputs": ["image"],
        "outputs": ["mask"],
        "quantization": None,
        **changes,
    }


def feeds_of(*shapes: tuple[int, ...]) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    return [{"image": rng.random(shape, dtype=np.float32)} for shape in shapes]


# --- profiles --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tile", "alignment", "expected"),
    [
        (None, 4, (DEFAULT_TILE, DEFAULT_TILE)),
        (None, 16, (1024, 1024)),
        ((32, 32), 4, (32, 32)),
        ((30, 33), 8, (32, 40)),
        ((5, 1), 4, (8, 4)),
    ],
)
def test_profile_tile_rounds_up_to_the_alignment(tile, alignment, expected) -> None:
    assert profile_tile(tile, alignment) == expected


def test_profiles_nhwc_dynamic_batch_and_size() -> None:
    contract = ModelContract(alignment=4)
    profiles = derive_profiles(contract, [image((None, None, None, 1))], (30, 64), max_batch=3)
    assert profiles == {"image": Profile((1, 4, 4, 1), (3, 32, 64, 1), (3, 32, 64, 1))}
    assert profiles["image"].to_dict() == {
        "min": [1, 4, 4, 1],
        "opt": [3, 32, 64, 1],
        "max": [3, 32, 64, 1],
    }


def test_profiles_nchw_auto_tile() -> None:
    contract = ModelContract(channels=2, layout="NCHW", alignment=8)
    spec = image((None, 2, None, None), layout="NCHW")
    assert derive_profiles(contract, [spec], None) == {
        "image": Profile((1, 2, 8, 8), (1, 2, 1024, 1024), (1, 2, 1024, 1024))
    }


def test_profiles_fixed_batch() -> None:
    contract = ModelContract(alignment=4)
    spec = image((2, None, None, 1))
    expected = {"image": Profile((2, 4, 4, 1), (2, 16, 16, 1), (2, 16, 16, 1))}
    assert derive_profiles(contract, [spec], (16, 16)) == expected
    assert derive_profiles(contract, [spec], (16, 16), max_batch=2) == expected
    with pytest.raises(ConfigError) as caught:
        derive_profiles(contract, [spec], (16, 16), max_batch=4)
    assert str(caught.value) == (
        "the model's input 'image' has a fixed batch of 2; leave --max-batch out"
    )


def test_profiles_fixed_height_and_width() -> None:
    contract = ModelContract(alignment=4)
    spec = image((None, 64, 48, 1))
    expected = {"image": Profile((1, 64, 48, 1), (2, 64, 48, 1), (2, 64, 48, 1))}
    assert derive_profiles(contract, [spec], None, max_batch=2) == expected
    assert derive_profiles(contract, [spec], (64, 48), max_batch=2) == expected
    with pytest.raises(ConfigError) as caught:
        derive_profiles(contract, [spec], (32, 32))
    assert str(caught.value) == (
        "the model's input 'image' is fixed at 64x48; leave --tile out or give 64x48"
    )
    # One side fixed: it stays; the other goes from the alignment to the tile.
    partly = image((None, 64, None, 1))
    assert derive_profiles(contract, [partly], (16, 18)) == {
        "image": Profile((1, 64, 4, 1), (1, 64, 20, 1), (1, 64, 20, 1))
    }


def test_profiles_window_model_stacks_its_frames_on_the_channels() -> None:
    contract = ModelContract(alignment=4, temporal="window", time_steps=3)
    assert derive_profiles(contract, [image((None, None, None, 3))], (8, 8)) == {
        "image": Profile((1, 4, 4, 3), (1, 8, 8, 3), (1, 8, 8, 3))
    }


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_profiles_step_model_states_at_their_stride(layout: str) -> None:
    contract = convlstm_step_contract(layout=layout)  # alignment 2; h, c: 4 channels, stride 2
    nhwc = layout == "NHWC"
    inputs = [
        image((None, None, None, 1) if nhwc else (None, 1, None, None), "frame", layout),
        image((None, None, None, 4) if nhwc else (None, 4, None, None), "h", layout),
        image((None, None, None, 4) if nhwc else (None, 4, None, None), "c", layout),
    ]

    def shape(n: int, h: int, w: int, c: int) -> tuple[int, ...]:
        return (n, h, w, c) if nhwc else (n, c, h, w)

    state = Profile(shape(1, 1, 1, 4), shape(2, 15, 10, 4), shape(2, 15, 10, 4))
    profiles = derive_profiles(contract, inputs, (30, 20), max_batch=2)
    assert profiles == {
        "frame": Profile(shape(1, 2, 2, 1), shape(2, 30, 20, 1), shape(2, 30, 20, 1)),
        "h": state,
        "c": state,
    }
    assert list(profiles) == ["frame", "h", "c"]


def test_profiles_refuse_several_image_inputs_or_none() -> None:
    contract = ModelContract(alignment=4)
    with pytest.raises(ModelError) as caught:
        derive_profiles(contract, [image((None, None, None, 1), n) for n in "ab"], None)
    assert str(caught.value) == (
        "a TensorRT engine needs one image input besides the states; the model has 'a', 'b'"
    )
    step = convlstm_step_contract()
    states_only = [image((None, None, None, 4), n) for n in ("h", "c")]
    with pytest.raises(ModelError, match="the model has 'h', 'c'"):
        derive_profiles(step, states_only, None)


def test_options_are_checked() -> None:
    assert TensorRTOptions().is_default
    assert not TensorRTOptions(max_batch=2).is_default
    for bad, message in [
        ({"max_batch": 0}, "max batch must be at least 1, got 0"),
        ({"max_batch": True}, "max batch must be a whole number, got True"),
        ({"workspace": 0}, "workspace must be at least 1 MiB, got 0"),
        ({"opt_level": 6}, "optimization level must be 0 to 5, got 6"),
    ]:
        with pytest.raises(ConfigError) as caught:
            TensorRTOptions(**bad)
        assert str(caught.value) == message


def test_calibration_tiles_are_single_tiles_of_one_size() -> None:
    feeds = feeds_of((2, 8, 8, 1), (1, 8, 8, 1))
    tiles = calibration_tiles(feeds)
    assert [t["image"].shape for t in tiles] == [(1, 8, 8, 1)] * 3
    np.testing.assert_array_equal(tiles[1]["image"], feeds[0]["image"][1:2])
    np.testing.assert_array_equal(tiles[2]["image"], feeds[1]["image"])
    with pytest.raises(InputError, match="calibration tiles come in 2 sizes"):
        calibration_tiles(feeds_of((1, 8, 8, 1), (1, 8, 12, 1)))


# --- precision per TensorRT major version ----------------------------------------------
def test_check_precision() -> None:
    for version in (TRT10, TRT11):
        for precision in ("fp32", "fp16", "int8"):
            check_precision(version, precision)
    check_precision(TRT10, "bf16")
    with pytest.raises(ConfigError) as caught:
        check_precision(TRT11, "bf16")
    assert str(caught.value).startswith(
        f"TensorRT {TRT11} builds strongly typed networks only, and bf16 would need"
    )


def test_tensorrt10_fp32_parses_the_model_as_it_is(trt, unet_path, tmp_path) -> None:
    details, builder, built = build(unet_path, tmp_path)
    assert details == details_of()
    assert builder.network.flags == 0  # weakly typed, explicit batch (TensorRT 10's default)
    assert builder.network.parsed == unet_path.read_bytes()
    assert builder.network.path == os.fspath(unet_path)
    config = builder.config
    assert config.flags == []
    assert config.pool_limits == {}
    assert config.builder_optimization_level == 3  # left at TensorRT's default
    assert config.hardware_compatibility_level == trt.HardwareCompatibilityLevel.NONE
    assert config.int8_calibrator is None and config.calibration_profile is None
    assert config.timing_cache_calls == []
    (profile,) = config.profiles
    assert profile.shapes == {"image": ((1, 4, 4, 1), (1, 32, 32, 1), (1, 32, 32, 1))}
    assert fake_tensorrt.decode_plan(built.read_bytes()) == builder.plan


@pytest.mark.parametrize(("precision", "flag"), [("fp16", "FP16"), ("bf16", "BF16")])
def test_tensorrt10_float_precisions_are_builder_flags(
    trt, unet_path, tmp_path, precision, flag
) -> None:
    details, builder, _ = build(unet_path, tmp_path, precision)
    assert details == details_of()
    assert builder.network.flags == 0
    assert builder.config.flags == [trt.BuilderFlag[flag]]
    assert builder.network.parsed == unet_path.read_bytes()
    assert builder.config.int8_calibrator is None


def test_tensorrt10_int8_calibrates_on_the_recorded_tiles(trt, unet_path, tmp_path) -> None:
    feeds = feeds_of((2, 16, 16, 1), (1, 16, 16, 1))
    details, builder, _ = build(unet_path, tmp_path, "int8", feeds=feeds)
    assert details == details_of(
        quantization="TensorRT entropy calibration (IInt8EntropyCalibrator2)"
    )
    config = builder.config
    assert builder.network.flags == 0
    assert config.flags == [trt.BuilderFlag.INT8]
    assert builder.network.parsed == unet_path.read_bytes()  # float32: TensorRT quantizes
    assert isinstance(config.int8_calibrator, trt.IInt8EntropyCalibrator2)
    one_tile = (1, 16, 16, 1)
    assert config.calibration_profile.shapes == {"image": (one_tile, one_tile, one_tile)}
    assert builder.calibration_batch_size == 1
    expected = [feeds[0]["image"][:1], feeds[0]["image"][1:], feeds[1]["image"]]
    assert len(builder.calibration_batches) == 3
    for batch, tile in zip(builder.calibration_batches, expected, strict=True):
        assert list(batch) == ["image"]
        np.testing.assert_array_equal(batch["image"], tile)
    # Through the (fake) GPU: one buffer, an upload and a wait per tile, on one stream.
    (gpu,) = fake_tensorrt.state.devices
    kinds = [kind for kind, _ in gpu.calls]
    assert kinds == ["new_stream", "alloc"] + ["upload", "synchronize_stream"] * 3
    assert gpu.calls[1] == ("alloc", (one_tile, F32))


def test_tensorrt11_is_strongly_typed_with_fp32_as_it_is(monkeypatch, unet_path, tmp_path):
    trt = fake_tensorrt.install(monkeypatch, TRT11)
    details, builder, _ = build(unet_path, tmp_path)
    assert details == details_of(TRT11)
    assert builder.network.flags == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert builder.config.flags == []
    assert builder.network.parsed == unet_path.read_bytes()


def test_tensorrt11_fp16_parses_a_float16_graph_with_float32_io(monkeypatch, unet_path, tmp_path):
    trt = fake_tensorrt.install(monkeypatch, TRT11)
    details, builder, _ = build(unet_path, tmp_path, "fp16")
    assert details == details_of(TRT11)
    assert builder.network.flags == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert builder.config.flags == []  # no precision flags: the graph has the types
    assert builder.network.path == os.fspath(tmp_path / "staging" / "fp16.onnx")
    graph = onnx.load_from_string(builder.network.parsed).graph
    float16, float32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    assert {t.data_type for t in graph.initializer} == {float16}
    original = onnx.load(unet_path).graph
    assert len(graph.initializer) == len(original.initializer)
    assert [(v.name, v.type.tensor_type.elem_type) for v in graph.input] == [("image", float32)]
    assert [(v.name, v.type.tensor_type.elem_type) for v in graph.output] == [("mask", float32)]
    assert [t[:3] for t in builder.network.tensors] == [
        ("image", trt.TensorIOMode.INPUT, trt.DataType.FLOAT),
        ("mask", trt.TensorIOMode.OUTPUT, trt.DataType.FLOAT),
    ]


def test_tensorrt11_int8_parses_a_symmetric_qdq_graph(monkeypatch, unet_path, tmp_path):
    trt = fake_tensorrt.install(monkeypatch, TRT11)
    feeds = feeds_of((2, 16, 16, 1), (1, 16, 16, 1))
    details, builder, _ = build(unet_path, tmp_path, "int8", feeds=feeds)
    assert details == details_of(
        TRT11, quantization="ONNX Runtime symmetric int8 Q/DQ, minmax calibration"
    )
    assert builder.network.flags == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert builder.config.flags == []
    assert builder.config.int8_calibrator is None and builder.config.calibration_profile is None
    assert builder.calibration_batches == []
    assert builder.network.path == os.fspath(tmp_path / "staging" / "int8.onnx")
    graph = onnx.load_from_string(builder.network.parsed).graph
    quantize = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    dequantize = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    convolutions = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert len(quantize) > 0 and len(dequantize) > len(quantize)  # weights: DQ only
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    zero_points = [weights[n.input[2]] for n in quantize + dequantize]
    assert len(zero_points) == len(quantize) + len(dequantize)
    assert all(z.dtype == np.int8 and not z.any() for z in zero_points)  # symmetric: all 0
    # Every convolution reads dequantized input and weights (TensorRT fuses them to int8).
    outputs_of = {o: n.op_type for n in graph.node for o in n.output}
    for conv in convolutions:
        assert [outputs_of.get(i) for i in conv.input[:2]] == ["DequantizeLinear"] * 2


def test_tensorrt11_refuses_bf16_before_building(monkeypatch, unet_path, tmp_path) -> None:
    fake_tensorrt.install(monkeypatch, TRT11)
    with pytest.raises(ConfigError, match=f"TensorRT {TRT11} builds strongly typed"):
        build(unet_path, tmp_path, "bf16")
    assert fake_tensorrt.state.builders == []


# --- options ---------------------------------------------------------------------------
def test_build_options_reach_the_builder(trt, unet_path, tmp_path) -> None:
    options = TensorRTOptions(
        max_batch=4, workspace=512, opt_level=5, version_compatible=True, hardware_compatible=True
    )
    details, builder, _ = build(unet_path, tmp_path, options=options, tile=(20, 24))
    assert details == details_of(
        profiles={"image": {"min": [1, 4, 4, 1], "opt": [4, 20, 24, 1], "max": [4, 20, 24, 1]}},
        max_batch=4,
        workspace_mib=512,
        opt_level=5,
        version_compatible=True,
        hardware_compatible=True,
    )
    config = builder.config
    assert config.pool_limits == {trt.MemoryPoolType.WORKSPACE: 536870912}  # 512 MiB
    assert config.builder_optimization_level == 5
    assert config.flags == [trt.BuilderFlag.VERSION_COMPATIBLE]
    assert config.hardware_compatibility_level == trt.HardwareCompatibilityLevel.AMPERE_PLUS
    assert builder.plan["workspace"] == 512 << 20
    assert builder.plan["opt_level"] == 5
    assert builder.plan["hardware_compatibility_level"] == "AMPERE_PLUS"
    assert builder.plan["builder_flags"] == ["VERSION_COMPATIBLE"]


@pytest.mark.parametrize(("cc", "refused"), [("7.5", True), ("8.0", False), ("9.0", False)])
def test_hardware_compatible_needs_ampere(trt, unet_path, tmp_path, cc, refused) -> None:
    fake_tensorrt.state.gpu["compute_capability"] = cc
    options = TensorRTOptions(hardware_compatible=True)
    if not refused:
        assert build(unet_path, tmp_path, options=options)[0]["gpu"]["compute_capability"] == cc
        return
    with pytest.raises(ConfigError) as caught:
        build(unet_path, tmp_path, options=options)
    assert str(caught.value) == (
        "--hardware-compatible needs an Ampere or later GPU (compute capability 8.0+); "
        "cuda:0 is NVIDIA Fake (7.5)"
    )
    assert fake_tensorrt.state.builders == []


# --- timing cache ----------------------------------------------------------------------
def cache_bytes(version: str, entries: int) -> bytes:
    return fake_tensorrt.TIMING_CACHE_MAGIC + f"{version}\n{entries}\n".encode()


def test_timing_cache_is_created_then_reused_and_replaced_atomically(
    trt, unet_path, tmp_path
) -> None:
    folder = tmp_path / "caches"
    folder.mkdir()
    cache = folder / "timing.cache"
    options = TensorRTOptions(timing_cache=cache)
    build(unet_path, tmp_path, options=options)
    first = fake_tensorrt.state.builders[-1].config
    ((started, ignore),) = first.timing_cache_calls
    assert (started.data, ignore) == (b"", False)  # an empty cache: the file did not exist
    assert first.timing_cache.serialized == [cache_bytes(TRT10, 1)]
    assert cache.read_bytes() == cache_bytes(TRT10, 1)
    before = cache.stat().st_ino
    build(unet_path, tmp_path, options=options)
    second = fake_tensorrt.state.builders[-1].config
    assert second.timing_cache_calls[0][0].data == cache_bytes(TRT10, 1)  # read from the file
    assert cache.read_bytes() == second.timing_cache.serialized[-1] == cache_bytes(TRT10, 2)
    assert cache.stat().st_ino != before  # a new file renamed onto it, not rewritten in place
    assert sorted(p.name for p in folder.iterdir()) == ["timing.cache"]  # no partial file


def test_timing_cache_write_failure_keeps_the_old_cache(trt, unet_path, tmp_path) -> None:
    cache = tmp_path / "timing.cache"
    cache.write_bytes(cache_bytes(TRT10, 3))
    fake_tensorrt.state.serialize_error = OSError(28, "No space left on device")
    with pytest.raises(OutputError) as caught:
        build(unet_path, tmp_path, options=TensorRTOptions(timing_cache=cache))
    assert str(caught.value) == f"cannot write {cache}: No space left on device"
    assert cache.read_bytes() == cache_bytes(TRT10, 3)
    assert not [p.name for p in tmp_path.iterdir() if "partial" in p.name]


@pytest.mark.parametrize("content", [cache_bytes("9.0.0.1", 4), b"not a timing cache"])
def test_a_timing_cache_of_another_version_or_garbage_is_refused(
    trt, unet_path, tmp_path, content
) -> None:
    cache = tmp_path / "timing.cache"
    cache.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        build(unet_path, tmp_path, options=TensorRTOptions(timing_cache=cache))
    assert str(caught.value) == (
        f"timing cache {cache} was made for another GPU or TensorRT version, or is not a "
        f"timing cache; delete it or give another --timing-cache file"
    )
    assert fake_tensorrt.state.builders[-1].plan is None  # refused before the build
    assert not (tmp_path / "unet.engine").exists()
    assert cache.read_bytes() == content


# --- failures --------------------------------------------------------------------------
def test_parser_errors_name_the_node(trt, unet_path, tmp_path) -> None:
    fake_tensorrt.state.parse_errors = [
        fake_tensorrt.ParserError("unsupported attribute", 7, "conv_3", "Conv"),
        fake_tensorrt.ParserError("network has no outputs"),
    ]
    with pytest.raises(ModelError) as caught:
        build(unet_path, tmp_path)
    assert str(caught.value) == (
        f"TensorRT cannot parse {unet_path}: node 'conv_3' (Conv): unsupported attribute; "
        f"network has no outputs"
    )


def test_build_failure_gives_tensorrts_error(trt, unet_path, tmp_path) -> None:
    tensorrt_log().errors.append("an error of earlier work")  # forgotten by the build
    fake_tensorrt.state.build_error = "out of memory while building"
    with pytest.raises(ModelError) as caught:
        build(unet_path, tmp_path)
    assert str(caught.value) == (
        f"TensorRT could not build an engine from {unet_path}: out of memory while building"
    )
    assert not (tmp_path / "unet.engine").exists()
    assert list(tensorrt_log().errors) == []


# --- build_engine: the sidecar ---------------------------------------------------------
def test_build_engine_writes_the_engine_and_its_sidecar(trt, unet_path, tmp_path) -> None:
    # fp32 without --calibration: build_engine runs no accuracy check (that one segments
    # the calibration frames with the built engine on the GPU executor, whose CUDA kernels
    # the fake has not; see test_build_engine_tensorrt10_int8_calibrates_on_the_frames).
    out = tmp_path / "built" / "unet.engine"
    out.parent.mkdir()
    options = TensorRTOptions(max_batch=2, version_compatible=True, hardware_compatible=True)
    report = build_engine(
        unet_path, out, backend="tensorrt", device="cuda:0", tile="30", tensorrt=options
    )
    assert report.output == out and report.accuracy is None and not report.forced
    assert report.built == EngineInfo("tensorrt", "fp32")
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "unet.engine",
        "unet.engine.unetrt.json",
    ]
    sidecar = json.loads((out.parent / "unet.engine.unetrt.json").read_text())
    assert sidecar["contract"] == read_contract(unet_path).contract.to_dict()
    expected_activation = activation_bytes(read_graph(unet_path), "image", layout="NHWC")
    assert sidecar["engine"] == {
        "backend": "tensorrt",
        "precision": "fp32",
        "source": os.fspath(unet_path),
        "runtime": f"tensorrt {TRT10}",
        "activation_bytes": expected_activation,
        **details_of(
            profiles={"image": {"min": [1, 4, 4, 1], "opt": [2, 32, 32, 1], "max": [2, 32, 32, 1]}},
            max_batch=2,
            version_compatible=True,
            hardware_compatible=True,
        ),
    }
    recorded = dict(sidecar["engine"])
    assert read_engine(out) == EngineInfo(recorded.pop("backend"), recorded.pop("precision"))
    assert read_engine(out).details == recorded
    plan = fake_tensorrt.decode_plan(out.read_bytes())
    assert plan["profile"] == {"image": [[1, 4, 4, 1], [2, 32, 32, 1], [2, 32, 32, 1]]}
    assert plan["builder_flags"] == ["VERSION_COMPATIBLE"]
    # ...and it loads, with its contract, on this (fake) GPU and TensorRT.
    with create_backend(out, "tensorrt", device="cuda:0") as backend:
        assert backend.accepted() == ShapeRange(1, 2, 2, (4, 4), (32, 32), (32, 32))
    assert fake_tensorrt.state.runtimes[-1].engine_host_code_allowed  # version compatible


def test_build_engine_tensorrt10_int8_calibrates_on_the_frames(
    trt, unet_path, tmp_path, monkeypatch
) -> None:
    import unetrt.engines as engines
    import unetrt.tensorrt_build as tensorrt_build

    frames = tmp_path / "calibration.tif"
    rng = np.random.default_rng(1)
    data = rng.integers(0, 4000, (3, 24, 28), dtype=np.uint16)
    tifffile.imwrite(frames, data, photometric="minisblack")
    tiles: list = []

    def record(feeds):
        tiles.extend(calibration_tiles(feeds))
        return tiles

    # The accuracy check segments with the built engine on the GPU executor (CUDA
    # kernels the fake lacks): left out here, its result stated, its options checked.
    checked = Accuracy(3, 1.0, 1.0, 0.0)
    compared: list = []
    monkeypatch.setattr(engines, "_compare", lambda *args: compared.append(args) or checked)
    monkeypatch.setattr(tensorrt_build, "calibration_tiles", record)
    out = tmp_path / "int8.engine"
    report = build_engine(
        unet_path, out, backend="tensorrt", precision="int8", calibration=frames, tile="32"
    )
    assert report.accuracy == checked
    ((_, _, backend, options),) = compared
    assert (backend, options) == ("tensorrt", {"tile": "32x32", "device": "cuda:0"})
    builder = fake_tensorrt.state.builders[-1]
    assert builder.config.flags == [trt.BuilderFlag.INT8]
    # One tile per frame (24x28: within the 32x32 tile, padded to the alignment 4).
    assert [t["image"].shape for t in tiles] == [(1, 24, 28, 1)] * 3
    assert builder.config.calibration_profile.shapes == {"image": ((1, 24, 28, 1),) * 3}
    for batch, tile in zip(builder.calibration_batches, tiles, strict=True):
        np.testing.assert_array_equal(batch["image"], tile["image"])
    engine = read_engine(out)
    assert engine.precision == "int8"
    assert engine.details["calibration"] == {"stack": os.fspath(frames), "frames": 3}
    assert engine.details["accuracy"] == checked.to_dict()
    assert engine.details["quantization"] == (
        "TensorRT entropy calibration (IInt8EntropyCalibrator2)"
    )


# --- compatibility of an engine with this machine -------------------------------------
BUILT = {"tensorrt": "10.13.0.35", "gpu": dict(GPU), "source": "unet.onnx"}


def refusal(details: dict, version: str, gpu: dict) -> str | None:
    try:
        check_compatible("e.engine", details, version, gpu)
    except ModelError as exc:
        return str(exc)
    return None


def test_check_compatible_same_version_and_gpu_passes() -> None:
    assert refusal(BUILT, "10.13.0.35", GPU) is None
    assert refusal({"source": "x.onnx"}, "9.0", GPU) is None  # nothing recorded: TensorRT's


def test_check_compatible_refuses_another_version() -> None:
    assert refusal(BUILT, "10.14.0.1", GPU) == (
        "TensorRT engine e.engine was built with TensorRT 10.13.0.35 for NVIDIA Fake "
        "(compute capability 8.6); this machine has TensorRT 10.14.0.1 and NVIDIA Fake "
        "(compute capability 8.6): rebuild it here with unetrt build-engine unet.onnx "
        "--backend tensorrt"
    )


@pytest.mark.parametrize(
    ("version", "runs"),
    [
        ("10.13.0.35", True),
        ("10.13.1.2", True),
        ("10.14.0.1", True),
        ("10.20.0.0", True),
        ("10.12.9.9", False),
        ("10.13.0.34", False),
        ("11.0.0.1", False),
        ("9.9.0.0", False),
    ],
)
def test_version_compatible_runs_on_later_releases_of_its_major(version, runs) -> None:
    message = refusal({**BUILT, "version_compatible": True}, version, GPU)
    assert (message is None) == runs
    if not runs:
        assert "built with TensorRT 10.13.0.35" in message
        assert f"this machine has TensorRT {version}" in message


@pytest.mark.parametrize(
    "gpu",
    [
        {"name": "NVIDIA Other", "compute_capability": "8.6"},
        {"name": "NVIDIA Fake", "compute_capability": "8.9"},
    ],
)
def test_check_compatible_refuses_another_gpu(gpu) -> None:
    assert refusal(BUILT, "10.13.0.35", gpu) == (
        "TensorRT engine e.engine was built with TensorRT 10.13.0.35 for NVIDIA Fake "
        f"(compute capability 8.6); this machine has TensorRT 10.13.0.35 and {gpu['name']} "
        f"(compute capability {gpu['compute_capability']}): rebuild it here with unetrt "
        "build-engine unet.onnx --backend tensorrt"
    )


@pytest.mark.parametrize(
    ("cc", "runs"), [("8.0", True), ("9.0", True), ("12.0", True), ("7.5", False), ("7.0", False)]
)
def test_hardware_compatible_runs_on_any_ampere_or_later(cc, runs) -> None:
    gpu = {"name": "NVIDIA Another", "compute_capability": cc}
    assert (refusal({**BUILT, "hardware_compatible": True}, "10.13.0.35", gpu) is None) == runs


# --- the backend -----------------------------------------------------------------------
@pytest.fixture()
def engine(trt, unet_path, tmp_path) -> Path:
    """The unet as a (fake) TensorRT engine with its sidecar: batch 1-2, tiles 4x4-32x32."""
    out = tmp_path / "unet.engine"
    build_engine(
        unet_path,
        out,
        backend="tensorrt",
        tile="32",
        tensorrt=TensorRTOptions(max_batch=2),
    )
    return out


def test_segmenter_keeps_to_the_engines_profile(trt, unet_path, tmp_path, monkeypatch) -> None:
    """tile="auto" on an engine: one tile for a frame within its largest tile, else tiles
    of at most that size; a larger --tile or --batch than it was built for is refused.
    (The GPU executor is swapped for the host one: the fake has no CUDA kernels.)"""
    from unetrt import Segmenter
    from unetrt.gpu import executor as gpu_executor
    from unetrt.pipeline import CpuExecutor

    monkeypatch.setattr(gpu_executor, "cuda_executor", lambda m, c, i, t: CpuExecutor(m, c))
    out = tmp_path / "unet64.engine"
    build_engine(unet_path, out, backend="tensorrt", tile="64", tensorrt=TensorRTOptions(2))
    seg = Segmenter(out, batch=2)
    small = seg.plan_for(20, 24)
    assert (small.n_tiles, small.tile_h, small.tile_w) == (1, 20, 24)
    large = seg.plan_for(100, 120)
    assert large.n_tiles > 1 and large.tile_h <= 64 and large.tile_w <= 64
    frame = np.random.default_rng(0).random((100, 120), dtype=np.float32)
    assert seg.predict_frame(frame).shape == (100, 120)  # every tile within the profile
    seg.close()
    with pytest.raises(ConfigError, match=r"tiles of at most 64x64 .*got tile 128x128"):
        Segmenter(out, tile=128)
    with pytest.raises(ConfigError, match=r"batches of at most 2 tiles .*got batch 3"):
        Segmenter(out, batch=3)


def test_backend_refuses_what_is_not_an_engine(trt, unet_path, tmp_path) -> None:
    with pytest.raises(ModelError) as caught:
        TensorRTBackend(unet_path.read_bytes())
    assert str(caught.value) == (
        "model <model bytes> is not a TensorRT engine (.engine or .plan); build one with: "
        "unetrt build-engine <model bytes> --backend tensorrt"
    )
    with pytest.raises(ModelError, match=r"unet\.onnx is not a TensorRT engine"):
        TensorRTBackend(unet_path)
    with pytest.raises(ModelError) as caught:
        TensorRTBackend(tmp_path / "missing.plan")
    assert str(caught.value) == f"cannot load model {tmp_path / 'missing.plan'}: no such file"
    garbage = tmp_path / "garbage.engine"
    garbage.write_bytes(b"not an engine")
    with pytest.raises(ModelError) as caught:
        TensorRTBackend(garbage)
    assert str(caught.value) == (
        f"TensorRT cannot load engine {garbage}: the plan's magic tag does not match"
    )


def test_backend_reads_its_tensors_and_profile_from_the_engine(trt, engine) -> None:
    backend = create_backend(engine, "tensorrt")  # cpu: cuda:0
    assert (backend.name, backend.device, backend.layout) == ("tensorrt", "cuda:0", "NHWC")
    assert backend.inputs == (TensorSpec("image", (None, None, None, 1), F32, "NHWC"),)
    assert backend.outputs == (TensorSpec("mask", (None, None, None, 1), F32, "NHWC"),)
    assert backend.accepted() == ShapeRange(1, 2, 2, (4, 4), (32, 32), (32, 32))
    assert backend.accepted("image") == backend.accepted()
    assert backend.output_shape((2, 32, 32, 1)) == (2, 32, 32, 1)
    assert backend.output_shape((1, 8, 12, 1)) == (1, 8, 12, 1)
    assert backend.metadata() == {}
    assert not fake_tensorrt.state.runtimes[-1].engine_host_code_allowed
    assert repr(backend) == (
        f"TensorRTBackend({os.fspath(engine)!r}, device='cuda:0', layout='NHWC', "
        "inputs=['image' [?, ?, ?, 1]])"
    )
    backend.close()
    with pytest.raises(RuntimeError, match="closed"):
        backend.accepted()


def test_backend_enqueue_sets_shape_addresses_and_stream(trt, engine) -> None:
    backend = TensorRTBackend(engine)
    gpu = fake_tensorrt.FakeCudaDevice()
    x = np.arange(2 * 8 * 12, dtype=np.float32).reshape(2, 8, 12, 1)
    inputs, outputs = gpu.alloc(x.shape, F32), gpu.alloc(x.shape, F32)
    np.copyto(fake_tensorrt.memory(inputs.ptr, x.shape, F32), x)
    backend.enqueue(inputs.ptr, (2, 8, 12, 1), outputs.ptr, 1234)
    # The host path's context, then one for stream 1234.
    host, context = fake_tensorrt.state.runtimes[-1].engines[-1].contexts
    assert host.executions == [] and host.shape_calls == []
    assert context.shape_calls == [("image", (2, 8, 12, 1), True)]
    (run,) = context.executions
    assert run == fake_tensorrt.Execution(
        1234, {"image": inputs.ptr, "mask": outputs.ptr}, {"image": (2, 8, 12, 1)}
    )
    np.testing.assert_array_equal(fake_tensorrt.memory(outputs.ptr, x.shape, F32), 2 * x)
    # Another stream (a second scheduler running at once) gets a context of its own;
    # the same stream again reuses its context.
    backend.enqueue(inputs.ptr, (1, 8, 12, 1), outputs.ptr, 99)
    backend.enqueue(inputs.ptr, (2, 8, 12, 1), outputs.ptr, 1234)
    host, first, second = fake_tensorrt.state.runtimes[-1].engines[-1].contexts
    assert [r.stream for r in first.executions] == [1234, 1234]
    assert [r.stream for r in second.executions] == [99]


def test_a_step_model_engine_runs_on_named_device_tensors(trt, tmp_path) -> None:
    """The GPU executor's step-model path: image and state windows in, prediction and
    new states out, every tensor addressed by name on the scheduler's stream."""
    from unetrt.gpu.executor import BackendEngine
    from unetrt.model import open_model
    from unetrt.testing import convlstm_step_model, save

    source = tmp_path / "step.onnx"
    save(convlstm_step_model(contract=convlstm_step_contract()), source)
    out = tmp_path / "step.engine"
    build_engine(source, out, backend="tensorrt", tile="32", tensorrt=TensorRTOptions(2))
    model = open_model(out, backend="tensorrt")
    assert [s.input for s in model.contract.states] == ["h", "c"]
    gpu = fake_tensorrt.FakeCudaDevice()
    image, mask = gpu.alloc((2, 16, 12, 1), F32), gpu.alloc((2, 16, 12, 1), F32)
    h, c = gpu.alloc((2, 8, 6, 4), F32), gpu.alloc((2, 8, 6, 4), F32)
    h_out, c_out = gpu.alloc((2, 8, 6, 4), F32), gpu.alloc((2, 8, 6, 4), F32)
    stream = fake_tensorrt.FakeStream(77)
    BackendEngine(model).enqueue_step(
        image, {"h": h, "c": c}, mask, {"h": h_out, "c": c_out}, stream
    )
    run = fake_tensorrt.state.runtimes[-1].engines[-1].contexts[-1].executions[-1]
    assert run.stream == 77
    assert run.addresses == {
        "frame": image.ptr, "h": h.ptr, "c": c.ptr,
        "mask": mask.ptr, "h_out": h_out.ptr, "c_out": c_out.ptr,
    }  # fmt: skip
    assert run.shapes == {"frame": (2, 16, 12, 1), "h": (2, 8, 6, 4), "c": (2, 8, 6, 4)}
    backend = model.backend
    with pytest.raises(ModelError, match=r"no shape given for \['c'\]"):
        backend.enqueue_tensors({"frame": image.ptr}, {"frame": (2, 16, 12, 1), "h": h.shape}, 1)
    with pytest.raises(ModelError, match="has 3 inputs"):
        backend.enqueue(image.ptr, (2, 16, 12, 1), mask.ptr, 1)  # the one-input path
    model.close()


def test_backend_run_uploads_executes_and_downloads(trt, engine) -> None:
    backend = TensorRTBackend(engine)
    x = np.random.default_rng(2).random((2, 16, 20, 1), dtype=np.float32)
    result = backend.run({"image": x})
    assert list(result) == ["mask"] and result["mask"].dtype == F32
    np.testing.assert_array_equal(result["mask"], 2 * x)  # the fake engine computes 2 x
    (context,) = fake_tensorrt.state.runtimes[-1].engines[-1].contexts
    (run,) = context.executions
    stream = backend._stream
    assert run.stream == stream.handle and run.shapes == {"image": (2, 16, 20, 1)}
    gpu = backend._gpu
    assert [kind for kind, _ in gpu.calls] == [
        "new_stream",
        "alloc",
        "upload",
        "alloc",
        "download",
        "synchronize_stream",
    ]
    # The caller's buffer is written; device buffers are kept for smaller batches.
    out = np.zeros((1, 16, 20, 1), np.float32)
    again = backend.run({"image": x[:1]}, out={"mask": out})
    assert again["mask"] is out
    np.testing.assert_array_equal(out, 2 * x[:1])
    assert [kind for kind, _ in gpu.calls].count("alloc") == 2
    with pytest.raises(ModelError, match=r"takes inputs \['image'\], got \['frame'\]"):
        backend.run({"frame": x})


@pytest.mark.parametrize("shape", [(1, 64, 32, 1), (3, 16, 16, 1), (1, 2, 32, 1)])
def test_backend_refuses_a_shape_outside_the_profile(trt, engine, shape) -> None:
    backend = TensorRTBackend(engine)
    expected = (
        f"TensorRT engine {engine}: input 'image' of shape {shape} is outside its "
        f"optimization profile (batch 1 to 2, tiles 4x4 to 32x32); build the engine with a "
        f"larger --tile or --max-batch"
    )
    for call in (
        lambda: backend.enqueue(0x10, shape, 0x20, 1),
        lambda: backend.output_shape(shape),
        lambda: backend.run({"image": np.zeros(shape, np.float32)}),
    ):
        with pytest.raises(ModelError) as caught:
            call()
        assert str(caught.value) == expected
    assert fake_tensorrt.state.runtimes[-1].engines[-1].contexts[0].executions == []
    assert list(tensorrt_log().errors) == []  # TensorRT's own wording dropped


def test_backend_refuses_an_engine_of_another_gpu_or_tensorrt(trt, engine) -> None:
    fake_tensorrt.state.gpu["name"] = "NVIDIA Other"
    with pytest.raises(ModelError) as caught:
        TensorRTBackend(engine)
    assert str(caught.value).startswith(
        f"TensorRT engine {engine} was built with TensorRT {TRT10} for NVIDIA Fake "
        f"(compute capability 8.6); this machine has TensorRT {TRT10} and NVIDIA Other"
    )
    assert "rebuild it here with unetrt build-engine" in str(caught.value)
    assert fake_tensorrt.state.runtimes == []  # refused before TensorRT loads it
    fake_tensorrt.state.gpu["name"] = "NVIDIA Fake"
    trt.__version__ = "10.14.0.1"
    with pytest.raises(ModelError, match="this machine has TensorRT 10.14.0.1 and NVIDIA Fake"):
        TensorRTBackend(engine)


# --- TensorRT or a GPU missing ---------------------------------------------------------
def test_without_a_gpu_tensorrt_says_so_in_one_line(monkeypatch, unet_path) -> None:
    fake_tensorrt.install(monkeypatch, TRT10, gpus=0)
    assert tensorrt_version() == TRT10
    expected = (
        "TensorRT needs an NVIDIA GPU and no CUDA GPU is visible here (check the NVIDIA "
        "driver, CUDA_VISIBLE_DEVICES and that unetrt was built with CUDA); build a CPU "
        "engine instead: --backend openvino, or --backend onnxruntime --int8"
    )
    with pytest.raises(ConfigError) as caught:
        check_tensorrt()
    assert str(caught.value) == expected and "\n" not in expected
    assert not tensorrt_available()
    # Checked before the model: no advice to build an engine that could not run here.
    with pytest.raises(ConfigError, match="no CUDA GPU is visible here"):
        TensorRTBackend(unet_path.read_bytes())


def test_check_tensorrt_picks_the_gpu(trt) -> None:
    assert check_tensorrt() == Device("cuda", 0)
    assert check_tensorrt("cpu") == Device("cuda", 0)
    assert tensorrt_available("cuda:0")
    with pytest.raises(ConfigError, match=r"device cuda:1: only 1 GPU\(s\) visible"):
        check_tensorrt("cuda:1")


def test_without_tensorrt_one_line_says_it_is_missing(unet_path) -> None:
    # The real environment: no TensorRT; tensorrt-stubs, where installed, leave an empty
    # ``tensorrt`` namespace package, which is no TensorRT.
    with pytest.raises(MissingDependencyError) as caught:
        tensorrt_version()
    assert str(caught.value) == MISSING
    with pytest.raises(MissingDependencyError) as caught:
        check_tensorrt()
    assert str(caught.value) == (
        f"{MISSING}; build a CPU engine instead: --backend openvino, or --backend "
        "onnxruntime --int8"
    )
    assert not tensorrt_available()
    with pytest.raises(MissingDependencyError) as caught:
        TensorRTBackend(unet_path)  # before "not a TensorRT engine": building cannot help
    assert str(caught.value) == (
        f"{MISSING}; segment an ONNX model on the CPU instead (--device cpu)"
    )


def test_a_tensorrt_module_without_a_version_is_no_tensorrt(monkeypatch) -> None:
    stubs = types.ModuleType("tensorrt")  # what tensorrt-stubs leave: nothing inside
    stubs.__path__ = []
    monkeypatch.setitem(sys.modules, "tensorrt", stubs)
    with pytest.raises(MissingDependencyError, match="TensorRT is not installed"):
        tensorrt_version()


@pytest.fixture(scope="module")
def frame(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("frame") / "frame.tif"
    data = np.random.default_rng(5).integers(0, 4000, (40, 52), dtype=np.uint16)
    tifffile.imwrite(path, data, photometric="minisblack")
    return path


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["build-engine", "default", "--backend", "tensorrt"], "build a CPU engine instead"),
        (["segment", "{frame}", "-o", "{out}", "--backend", "tensorrt"], "--device cpu"),
        (
            ["segment", "{frame}", "-o", "{out}", "--backend", "tensorrt", "--device", "cuda:0"],
            "--device cpu",
        ),
        (["segment", "{frame}", "-o", "{out}", "--device", "cuda:0"], "--device cpu"),
    ],
)
def test_cli_without_tensorrt_is_one_line(frame, tmp_path, args, needle) -> None:
    out = tmp_path / "masks.tif"
    result = run_cli(*(a.format(frame=frame, out=out) for a in args), "-q")
    assert_user_error(result, MISSING, needle)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []
