"""Contract first: read without a session, sidecars, partial contracts, built-in models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

from unetrt import testing
from unetrt.backends import openvino_available
from unetrt.backends.onnxruntime import OnnxRuntimeBackend
from unetrt.contract import (
    CONTRACT_FIELDS,
    CONTRACT_KEY,
    ModelContract,
    load_contract,
    read_contract,
    sidecar_path,
)
from unetrt.errors import ModelError
from unetrt.model import open_model
from unetrt.models import BUILTIN_MODELS, builtin_path, resolve_model
from unetrt.normalize import Normalization

CONTRACT = ModelContract(
    alignment=4, halo=12, threshold=0.4, normalization=Normalization(method="percentile")
)


def _unet(tmp_path: Path, contract: ModelContract | None = CONTRACT, name="m.onnx") -> Path:
    path = tmp_path / name
    testing.save(testing.unet_model(filters=4, pools=2, contract=contract), path)
    return path


@pytest.fixture
def no_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("an inference session was created")

    monkeypatch.setattr(ort, "InferenceSession", refuse)


@pytest.fixture
def count_runs(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Model runs on whichever backend opens the model (ONNX Runtime or OpenVINO)."""
    calls = {"runs": 0}
    classes = [OnnxRuntimeBackend]
    if openvino_available():
        from unetrt.backends.openvino import OpenVinoBackend

        classes.append(OpenVinoBackend)

    def counting(real):
        def run(self, feeds, out=None):
            calls["runs"] += 1
            return real(self, feeds, out)

        return run

    for cls in classes:
        monkeypatch.setattr(cls, "run", counting(cls.run))
    return calls


def test_load_contract_reads_onnx_metadata_without_a_session(tmp_path, no_sessions) -> None:
    path = _unet(tmp_path)
    assert load_contract(path) == CONTRACT
    stored = read_contract(path)
    assert stored is not None and stored.complete and stored.source == "ONNX metadata"
    # Every field but the channel codes, which a contract leaves out when there are none.
    assert stored.fields == CONTRACT_FIELDS - {"input_channels"}


def test_load_contract_of_a_foreign_model_is_none(tmp_path, no_sessions) -> None:
    assert load_contract(_unet(tmp_path, contract=None)) is None


def test_load_contract_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"nope\.onnx: no such file"):
        load_contract(tmp_path / "nope.onnx")
    model = testing.affine_model(1.0, 0.0)
    helper.set_model_props(model, {CONTRACT_KEY: "{not json"})
    path = tmp_path / "bad.onnx"
    testing.save(model, path)
    with pytest.raises(ModelError, match=r"bad\.onnx: model contract is not valid JSON"):
        load_contract(path)


def test_sidecar_beside_an_engine(tmp_path: Path) -> None:
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00serialized engine, not ONNX")
    assert sidecar_path(engine) == tmp_path / "model.engine.unetrt.json"
    payload = {"contract": CONTRACT.to_dict(), "tensorrt": {"version": "10.0", "gpu": "H200"}}
    sidecar_path(engine).write_text(json.dumps(payload))
    stored = read_contract(engine)
    assert stored is not None and stored.contract == CONTRACT and stored.complete
    assert stored.source == "model.engine.unetrt.json"
    sidecar_path(engine).write_text(json.dumps({"contract": {"halo": -1}}))
    with pytest.raises(ModelError, match=r"model\.engine\.unetrt\.json: .*halo must be"):
        read_contract(engine)
    sidecar_path(engine).write_text("[]")
    with pytest.raises(ModelError, match="must be a JSON object with a 'contract' object"):
        read_contract(engine)


def test_full_contract_opens_with_no_probe_runs(tmp_path, count_runs) -> None:
    with open_model(_unet(tmp_path)) as m:
        assert m.contract == CONTRACT
        assert set(m.inferred.values()) == {"model contract"}
    assert count_runs["runs"] == 0


def test_partial_contract_probes_only_what_it_leaves_out(tmp_path, count_runs) -> None:
    model = testing.unet_model(filters=4, pools=2)
    stated = {"alignment": 4, "halo": 12, "output": "sigmoid", "classes": ["bg", "cell"]}
    helper.set_model_props(model, {CONTRACT_KEY: json.dumps(stated)})
    path = tmp_path / "partial.onnx"
    testing.save(model, path)
    stored = read_contract(path)
    assert stored is not None and not stored.complete
    assert stored.fields == set(stated)
    with open_model(path) as m:
        assert (m.contract.alignment, m.contract.halo, m.contract.classes) == (
            4,
            12,
            ("bg", "cell"),
        )
        assert all(m.inferred[k] == "model contract" for k in stated)
        assert m.inferred["layout"].startswith("channels last")  # from the input shape
        assert m.inferred["threshold"] == "default"
    assert count_runs["runs"] == 0  # alignment, halo and output were stated: nothing to probe


def test_missing_halo_is_the_only_thing_inferred(tmp_path, count_runs) -> None:
    model = testing.unet_model(filters=4, pools=2)
    stated = {"alignment": 4, "output": "sigmoid", "classes": ["background", "foreground"]}
    helper.set_model_props(model, {CONTRACT_KEY: json.dumps(stated)})
    path = tmp_path / "nohalo.onnx"
    testing.save(model, path)
    with open_model(path) as m:
        radius = testing.unet_receptive_radius(pools=2)
        assert m.contract.halo == -(-radius // 4) * 4  # the graph bound, rounded up
        assert m.inferred["halo"].startswith(f"{m.contract.halo}: graph bound {radius} px")
        for name in stated:
            assert m.inferred[name] == "model contract", name
    assert count_runs["runs"] > 0  # the probe cross-checked the bound


# --- built-in models ---------------------------------------------------------------------


def test_builtin_names() -> None:
    assert "default" in BUILTIN_MODELS
    path = builtin_path("default")
    assert path.name == "default.onnx" and path.is_file()
    assert resolve_model(None) == path
    assert resolve_model("default") == path
    with pytest.raises(ModelError, match=r"'nope' is neither a model file nor a built-in"):
        builtin_path("nope")


def test_a_file_named_like_a_builtin_wins(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("default").write_bytes(b"x")
    assert resolve_model("default") == Path("default")


def test_segmenter_and_open_model_take_builtin_names() -> None:
    from unetrt import Segmenter

    with open_model("default") as m:
        assert m.path == builtin_path("default")
        assert m.contract == load_contract(builtin_path("default"))
    frame = np.zeros((40, 48), np.uint8)
    frame[10:30, 12:36] = 200
    with Segmenter(model="default") as a, Segmenter() as b:
        assert a.spec == b.spec and a.spec.model == "default"
        np.testing.assert_array_equal(a.predict_frame(frame), b.predict_frame(frame))


def test_open_model_reads_a_sidecar_first(tmp_path: Path, count_runs) -> None:
    # An NCHW model: the sidecar's contract (NCHW, halo 12) wins over what the ONNX
    # metadata says (NHWC, halo 3), and the backend is made with its layout.
    model = testing.unet_model(filters=4, pools=2, layout="NCHW")
    helper.set_model_props(model, {CONTRACT_KEY: ModelContract(halo=3).to_json()})
    path = tmp_path / "nchw.onnx"
    testing.save(model, path)
    sidecar = ModelContract(alignment=4, halo=12, layout="NCHW")
    sidecar_path(path).write_text(json.dumps({"contract": sidecar.to_dict()}))
    with open_model(path) as m:
        assert m.contract == sidecar
        assert m.backend.layout == "NCHW"
        assert set(m.inferred.values()) == {"model contract (nchw.onnx.unetrt.json)"}
    assert count_runs["runs"] == 0


def test_an_auxiliary_head_does_not_spoil_the_graph_bound(tmp_path: Path) -> None:
    # The prediction is a 9 x 9 convolution (radius 4); a second output pools the whole
    # frame. Only the prediction is tiled, so the bound is the prediction's.
    from onnx import TensorProto

    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 9, 9], [1 / 81] * 81)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["y"], pads=[4, 4, 4, 4]),
            helper.make_node("GlobalAveragePool", ["x"], ["score"]),
        ],
        "aux",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, "H", "W"]),
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1, 1, 1]),
        ],
        initializer=[w],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=testing.IR_VERSION
    )
    path = tmp_path / "aux.onnx"
    testing.save(model, path)
    with open_model(path, threads=1) as m:
        assert m.contract.halo == 4
        assert m.inferred["halo"].startswith("4: graph bound 4 px")
