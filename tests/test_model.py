from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from unetrt import testing
from unetrt.contract import ModelContract
from unetrt.errors import ConfigError, ModelError
from unetrt.model import FIELDS, open_model
from unetrt.normalize import Normalization


def _save(tmp_path: Path, model, name: str = "model.onnx") -> Path:
    path = tmp_path / name
    testing.save(model, path)
    return path


def _round_up(n: int, a: int) -> int:
    return -(-n // a) * a


# --- inference for models without a contract ------------------------------------------


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize(
    ("kernels", "dilations"), [((3,), (1,)), ((3, 3, 3), (1, 1, 1)), ((3, 5, 3), (1, 2, 4))]
)
def test_conv_stack_halo_is_exact(tmp_path: Path, layout: str, kernels, dilations) -> None:
    model = testing.conv_stack_model(kernels, dilations, filters=4, layout=layout, seed=3)
    with open_model(_save(tmp_path, model), threads=1) as m:
        assert m.contract.alignment == 1
        assert m.contract.halo == testing.conv_stack_radius(kernels, dilations)
        assert m.contract.layout == layout
        assert m.contract.output == "sigmoid"
        assert m.backend.layout == layout


@pytest.mark.parametrize(("pools", "layout"), [(1, "NHWC"), (2, "NCHW"), (3, "NHWC")])
def test_unet_alignment_and_halo(tmp_path: Path, pools: int, layout: str) -> None:
    model = testing.unet_model(filters=4, pools=pools, layout=layout)
    with open_model(_save(tmp_path, model), threads=1) as m:
        c = m.contract
        radius = testing.unet_receptive_radius(pools)
        assert c.alignment == 2**pools
        assert c.halo >= radius
        assert c.halo == _round_up(radius, c.alignment)  # the probe found the worst position
        assert (c.layout, c.channels, c.output) == (layout, 1, "sigmoid")
        assert c.classes == ("background", "foreground")
        assert m.inferred["alignment"].startswith(f"{2**pools}: smallest power of two")
        # The graph bound decides; the probe cross-checks and finds the worst position too.
        assert m.inferred["halo"].startswith(f"{c.halo}: graph bound {radius} px")
        assert f"impulse cross-check: impulse response radius {radius} " in m.inferred["halo"]
        assert m.inferred["layout"].startswith("channels")
        assert m.inferred["threshold"] == "default"


def test_unet_with_nearest_upsampling_has_the_same_field(tmp_path: Path) -> None:
    model = testing.unet_model(filters=4, pools=2, upsampling="nearest")
    with open_model(_save(tmp_path, model), threads=1) as m:
        assert m.contract.halo == _round_up(testing.unet_receptive_radius(2), 4)


@pytest.mark.parametrize(
    ("output", "classes", "kind", "names"),
    [
        ("softmax", 3, "softmax", ("background", "class1", "class2")),
        ("logits", 1, "logits", ("background", "foreground")),
        ("logits", 3, "logits", ("background", "class1", "class2")),
        ("sigmoid", 2, "sigmoid", ("background", "class1", "class2")),
    ],
)
def test_output_kind_and_classes(tmp_path: Path, output, classes, kind, names) -> None:
    model = testing.unet_model(filters=4, pools=1, classes=classes, output=output, seed=1)
    with open_model(_save(tmp_path, model), threads=1) as m:
        assert m.contract.output == kind
        assert m.contract.classes == names
        assert m.output_channels == classes


def test_multichannel_input(tmp_path: Path) -> None:
    model = testing.unet_model(filters=4, pools=1, channels_in=3, layout="NCHW")
    with open_model(_save(tmp_path, model), threads=1) as m:
        assert m.contract.channels == 3
        assert m.inferred["channels"] == "input shape [?, 3, ?, ?]"


def _fixed_size_conv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 3, 3], rng.random(9).tolist())
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 64, 64])],
        initializer=[w],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=testing.IR_VERSION
    )
    return _save(tmp_path, model)


def test_fixed_size_model(tmp_path: Path) -> None:
    with open_model(_fixed_size_conv(tmp_path), threads=1) as m:
        assert m.accepted.fixed_tile == (64, 64)
        assert m.contract.alignment == 1
        assert m.contract.halo == 1
        assert m.inferred["alignment"] == "1: fixed input size 64x64"
        assert m.contract.layout == "NCHW"


def test_unbounded_field_is_reported(tmp_path: Path) -> None:
    # y = x + mean(x): every output pixel sees the whole frame.
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["x"], ["m"]),
            helper.make_node("Add", ["x", "m"], ["y"]),
        ],
        "global",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, "H", "W"])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=testing.IR_VERSION
    )
    with open_model(_save(tmp_path, model), threads=1) as m:
        assert "could not bound it" in m.inferred["halo"]
        assert "1024x1024 probe" in m.inferred["halo"]
        assert m.contract.halo >= 512


def test_model_that_runs_on_no_size(tmp_path: Path) -> None:
    # Adds a constant 5x5 image: only a 5x5 input fits, which no probe size is.
    const = helper.make_tensor("c", TensorProto.FLOAT, [1, 1, 5, 5], [0.0] * 25)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])],
        "five",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        initializer=[const],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=testing.IR_VERSION
    )
    with pytest.raises(ModelError, match="could not run the model on any probe size"):
        open_model(_save(tmp_path, model), threads=1)


# --- contracts carried by the model ---------------------------------------------------


def test_contract_is_read_from_metadata(tmp_path: Path) -> None:
    # A halo the probe would never find proves the contract was used as is.
    contract = ModelContract(
        alignment=4, halo=12, threshold=0.4, normalization=Normalization(method="percentile")
    )
    model = testing.unet_model(filters=4, pools=2, contract=contract)
    with open_model(_save(tmp_path, model), threads=1) as m:
        assert m.contract == contract
        assert m.inferred == dict.fromkeys(FIELDS, "model contract")
        assert m.path == tmp_path / "model.onnx"


def test_contract_layout_wins_over_the_shape(tmp_path: Path) -> None:
    # [1, 8, 8, 8] cannot tell its layout; shape detection would assume NHWC.
    model = testing.affine_model(1.0, 0.0, channels=8, layout="NCHW")
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 8
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 8
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    helper.set_model_props(model, {"unetrt": ModelContract(channels=8, layout="NCHW").to_json()})
    with open_model(_save(tmp_path, model), threads=1) as m:
        assert m.backend.layout == "NCHW"
        assert m.accepted.fixed_tile == (8, 8)


def test_contract_channels_must_match_the_model(tmp_path: Path) -> None:
    model = testing.unet_model(filters=4, pools=1, contract=ModelContract(channels=3))
    with pytest.raises(
        ModelError, match=r"contract says 3 channel\(s\) .* \[\?, \?, \?, 1\] has 1"
    ):
        open_model(_save(tmp_path, model), threads=1)


def test_window_contract_counts_stacked_frames(tmp_path: Path) -> None:
    contract = ModelContract(channels=1, temporal="window", time_steps=3, alignment=2, halo=8)
    model = testing.unet_model(filters=4, pools=1, channels_in=3, contract=contract)
    with open_model(_save(tmp_path, model), threads=1) as m:
        assert m.contract.time_steps == 3


def test_invalid_contract_names_the_model(tmp_path: Path) -> None:
    model = testing.affine_model(1.0, 0.0)
    helper.set_model_props(model, {"unetrt": '{"halo": -4}'})
    path = _save(tmp_path, model, "bad.onnx")
    with pytest.raises(ModelError, match=r"model .*bad\.onnx: model contract: halo must be"):
        open_model(path)


# --- overrides -------------------------------------------------------------------------


def test_overrides_are_applied_last(tmp_path: Path) -> None:
    path = _save(tmp_path, testing.unet_model(filters=4, pools=2))
    overrides = {
        "halo": 32,
        "threshold": 0.3,
        "normalization": "percentile",
        "output": "logits",
        "layout": None,  # an unset flag
    }
    with open_model(path, threads=1, overrides=overrides) as m:
        c = m.contract
        assert (c.halo, c.threshold, c.output) == (32, 0.3, "logits")
        assert c.normalization == Normalization(method="percentile")
        assert c.alignment == 4  # still inferred
        for name in ("halo", "threshold", "normalization", "output"):
            assert m.inferred[name] == "given"
        assert m.inferred["layout"] != "given"


def test_overrides_beat_a_contract(tmp_path: Path) -> None:
    model = testing.unet_model(filters=4, pools=1, contract=ModelContract(alignment=2, halo=10))
    overrides = {"halo": 20, "normalization": {"method": "range"}}
    with open_model(_save(tmp_path, model), threads=1, overrides=overrides) as m:
        assert m.contract.halo == 20
        assert m.contract.normalization.method == "range"
        assert m.inferred["halo"] == "given"
        assert m.inferred["alignment"] == "model contract"


def test_layout_override_reaches_the_backend(tmp_path: Path) -> None:
    path = _save(tmp_path, testing.affine_model(1.0, 0.0, channels=1, layout="NCHW"))
    with open_model(path, overrides={"layout": "NCHW"}) as m:
        assert m.backend.layout == "NCHW"
        assert m.inferred["layout"] == "given"
    # A wrong layout makes the probes feed the height where the channel goes.
    with pytest.raises(
        ModelError, match=r"\(1, 384, 640, 1\) \(model input \[\?, 1, \?, \?\], NHWC\)"
    ):
        open_model(path, overrides={"layout": "NHWC"})


def test_bad_overrides(tmp_path: Path) -> None:
    path = _save(tmp_path, testing.affine_model(1.0, 0.0))
    with pytest.raises(ConfigError, match=r"unknown contract override\(s\) tile; choose from"):
        open_model(path, overrides={"tile": 256})
    with pytest.raises(ConfigError, match="invalid override: .*halo must be"):
        open_model(path, overrides={"halo": -1})
    with pytest.raises(ConfigError, match="alignment must be a power of two"):
        open_model(path, overrides={"alignment": 3})


# --- files that are not models ---------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"cannot load model .*missing\.onnx: no such file"):
        open_model(tmp_path / "missing.onnx")


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.onnx"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ModelError, match=r"cannot load model .*weights\.onnx"):
        open_model(path)


def test_three_dimensional_input(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "three",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "H", "W"])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=testing.IR_VERSION
    )
    with pytest.raises(ModelError, match=r"rank 3\); unetrt needs a 4-D image input"):
        open_model(_save(tmp_path, model))
