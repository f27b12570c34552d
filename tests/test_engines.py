"""``unetrt build-engine``: built models carry their contract, run without flags, and the
accuracy check and the bad inputs behave as the README says."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import tifffile

from unetrt import Segmenter
from unetrt.backends import choose_backend, openvino_available
from unetrt.cli import main
from unetrt.contract import ENGINE_KEY, EngineInfo, ModelContract, read_contract, read_engine
from unetrt.engines import BuildRefused, build_engine
from unetrt.errors import ConfigError, InputError, OutputError
from unetrt.metrics import dice
from unetrt.model import open_model
from unetrt.normalize import Normalization
from unetrt.testing import save, unet_model, unet_receptive_radius

needs_openvino = pytest.mark.skipif(
    not openvino_available(), reason="OpenVINO is not installed (pip install 'unetrt[openvino]')"
)


@pytest.fixture(scope="module")
def unet(tmp_path_factory):
    """An 8-filter, 2-pool U-Net with transposed convolutions and its full contract."""
    contract = ModelContract(
        alignment=4,
        halo=unet_receptive_radius(pools=2),
        normalization=Normalization(method="range"),
    )
    path = tmp_path_factory.mktemp("m") / "unet.onnx"
    save(unet_model(filters=8, pools=2, contract=contract, seed=3), path)
    return path


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """The same kind of U-Net without a contract (a model trained elsewhere)."""
    path = tmp_path_factory.mktemp("f") / "foreign.onnx"
    save(unet_model(filters=8, pools=2, seed=4), path)
    return path


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """Smooth uint16 frames with structure at several scales, as a calibration stack."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:40, :52]
    data = np.stack(
        [
            2000 + 1500 * np.sin(x / (3 + t)) * np.cos(y / 5) + rng.normal(0, 100, (40, 52))
            for t in range(6)
        ]
    ).clip(0, 65535)
    path = tmp_path_factory.mktemp("cal") / "calibration.tif"
    tifffile.imwrite(path, data.astype(np.uint16), photometric="minisblack")
    return path


def probabilities(model, stack, **options):
    with Segmenter(model, **options) as seg:
        return np.stack(list(seg.predict_frames(tifffile.imread(stack))))


def error_line(capsys, *args):
    """Run the CLI in-process; it must fail with one ``unetrt: error:`` line."""
    assert main(list(map(str, args))) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("unetrt: error:"), err
    return err[0]


# --- choosing the backend ---------------------------------------------------------------
def test_auto_prefers_openvino_on_the_cpu_when_installed(monkeypatch):
    import unetrt.backends as backends

    monkeypatch.setattr(backends, "openvino_available", lambda: True)
    assert choose_backend("auto", "cpu") == ("openvino", "fp32")
    monkeypatch.setattr(backends, "openvino_available", lambda: False)
    assert choose_backend("auto", "cpu") == ("onnxruntime", "fp32")
    assert choose_backend("auto", "cpu", "bf16") == ("onnxruntime", "bf16")  # refused on load


def test_a_built_model_picks_its_backend_and_precision():
    built = EngineInfo("openvino", "bf16")
    assert choose_backend("auto", "cpu", None, built) == ("openvino", "bf16")
    assert choose_backend("openvino", "cpu", "bf16", built) == ("openvino", "bf16")
    with pytest.raises(ConfigError, match="built for openvino in bf16"):
        choose_backend("auto", "cpu", "fp32", built)
    with pytest.raises(ConfigError, match="use --backend openvino"):
        choose_backend("onnxruntime", "cpu", None, built)
    quantized = EngineInfo("onnxruntime", "int8")
    assert choose_backend("auto", "cpu", None, quantized) == ("onnxruntime", "int8")
    with pytest.raises(ConfigError, match="build-engine"):
        choose_backend("auto", "cpu", "int8")  # int8 without a quantized model
    with pytest.raises(ConfigError, match="fp16 needs a TensorRT engine"):
        choose_backend("auto", "cpu", "fp16")
    with pytest.raises(ConfigError, match="precision must be"):
        choose_backend("auto", "cpu", "fp8")


def test_onnxruntime_refuses_bf16(unet):
    with pytest.raises(ConfigError, match="--backend openvino"):
        open_model(unet, backend="onnxruntime", precision="bf16")


# --- ONNX Runtime -----------------------------------------------------------------------
def test_onnxruntime_fp32_build_carries_the_contract_and_runs_the_same(unet, frames, tmp_path):
    out = tmp_path / "built.onnx"
    report = build_engine(unet, out, backend="onnxruntime")
    assert report.output == out and report.accuracy is None
    assert read_engine(out) == EngineInfo("onnxruntime", "fp32")
    assert read_contract(out).contract == read_contract(unet).contract
    with open_model(out) as model:  # auto: the backend it was built for
        assert model.backend.name == "onnxruntime" and model.precision == "fp32"
        assert set(model.inferred.values()) == {"model contract"}
    expected = probabilities(unet, frames, backend="onnxruntime")
    np.testing.assert_allclose(probabilities(out, frames), expected, atol=1e-5)


def test_int8_build_reports_what_it_costs_against_float32(unet, frames, tmp_path):
    out = tmp_path / "int8.onnx"
    report = build_engine(
        unet, out, backend="onnxruntime", precision="int8", calibration=frames, max_dice_drop=1
    )
    info = read_engine(out)
    assert (info.backend, info.precision) == ("onnxruntime", "int8")
    assert info.details["calibration"]["frames"] == 6
    assert info.details["accuracy"]["dice"] == pytest.approx(report.accuracy.dice, abs=1e-6)
    # The quantized graph: QDQ around the convolutions, transposed convolutions float.
    graph = onnx.load(out).graph
    ops = [n.op_type for n in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    floats = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    transposed = [n for n in graph.node if n.op_type == "ConvTranspose"]
    assert transposed and all(n.input[1] in floats for n in transposed)
    # The report is the truth: recompute it with independent segmenters.
    reference = probabilities(unet, frames, backend="onnxruntime")
    quantized = probabilities(out, frames)
    scores = [dice(q > 0.5, r > 0.5) for q, r in zip(quantized, reference, strict=True)]
    assert report.accuracy.frames == 6
    assert report.accuracy.dice == pytest.approx(np.mean(scores), abs=1e-9)
    assert report.accuracy.worst_dice == pytest.approx(np.min(scores), abs=1e-9)
    assert report.accuracy.max_difference == pytest.approx(
        np.abs(quantized - reference).max(), abs=1e-6
    )
    assert 0 < report.accuracy.max_difference < 0.5  # quantized, not broken
    with open_model(out) as model:  # the contract came along: nothing is re-probed
        assert set(model.inferred.values()) == {"model contract"}
        assert model.precision == "int8"


def test_a_failed_accuracy_check_writes_nothing_unless_forced(unet, frames, tmp_path):
    out = tmp_path / "int8.onnx"
    # The threshold at the median probability: int8 rounding flips some of the many
    # pixels near it, so the masks cannot agree exactly.
    median = float(np.median(probabilities(unet, frames, backend="onnxruntime")))
    strict = dict(precision="int8", calibration=frames, max_dice_drop=0, threshold=median)
    with pytest.raises(BuildRefused, match="nothing written"):
        build_engine(unet, out, backend="onnxruntime", **strict)
    assert list(tmp_path.iterdir()) == []
    report = build_engine(unet, out, backend="onnxruntime", force=True, **strict)
    assert report.forced and out.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["int8.onnx"]


def test_overrides_for_a_foreign_model_go_into_the_built_contract(foreign, frames, tmp_path):
    out = tmp_path / "foreign-int8.onnx"
    build_engine(
        foreign,
        out,
        backend="onnxruntime",
        precision="int8",
        calibration=frames,
        max_dice_drop=1,
        normalization={"method": "percentile", "low": 2.0, "high": 99.0},
        threshold=0.4,
    )
    stored = read_contract(out)
    assert stored.complete
    norm = stored.contract.normalization
    assert (norm.method, norm.low, norm.high) == ("percentile", 2.0, 99.0)
    assert stored.contract.threshold == 0.4
    assert stored.contract.alignment == 4  # inferred from the float model, then stored
    with open_model(foreign, backend="onnxruntime") as model:
        assert stored.contract.halo == model.contract.halo


def test_build_engine_cli_prints_the_report(unet, frames, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    args = ["build-engine", unet, "--backend", "onnxruntime", "--int8", "--calibration", frames]
    assert main([*map(str, args), "-o", str(out), "--max-dice-drop", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"built {out} for onnxruntime in int8" in printed
    assert "masks agree with float32 at Dice" in printed
    masks = tmp_path / "masks.tif"
    assert main(["segment", str(frames), "--model", str(out), "-o", str(masks), "-q"]) == 0
    assert tifffile.imread(masks).shape == (6, 40, 52)


# --- bad input --------------------------------------------------------------------------
def test_bad_calibration_stacks_are_one_line_and_write_nothing(unet, tmp_path, capsys):
    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    base = ["build-engine", unet, "--backend", "onnxruntime", "--int8", "-o", out]
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((2, 40, 52, 3), np.uint8), photometric="rgb")
    complex_ = tmp_path / "complex.tif"
    tifffile.imwrite(complex_, np.zeros((2, 40, 52), np.complex64))
    empty = tmp_path / "empty"
    empty.mkdir()
    text = tmp_path / "notes.tif"
    text.write_text("not an image")
    assert "channel" in error_line(capsys, *base, "--calibration", rgb)
    assert "complex" in error_line(capsys, *base, "--calibration", complex_)
    assert "empty" in error_line(capsys, *base, "--calibration", empty)
    assert "notes.tif" in error_line(capsys, *base, "--calibration", text)
    assert "calibration" in error_line(capsys, *base)  # int8 without frames
    assert "nope" in error_line(capsys, *base, "--calibration", tmp_path / "nope.tif")
    assert list(out.parent.iterdir()) == []


def test_bad_outputs_and_choices_are_one_line(unet, frames, tmp_path, capsys):
    folder = tmp_path / "folder.onnx"
    folder.mkdir()
    line = error_line(capsys, "build-engine", unet, "--backend", "onnxruntime", "-o", folder)
    assert "is a folder" in line
    line = error_line(capsys, "build-engine", unet, "--backend", "onnxruntime", "-o", "m.xml")
    assert ".onnx file" in line
    line = error_line(
        capsys, "build-engine", unet, "--backend", "onnxruntime", "--precision", "bf16"
    )
    assert "bf16" in line
    assert "TensorRT" in error_line(capsys, "build-engine", unet, "--backend", "tensorrt")
    line = error_line(capsys, "build-engine", unet, "--precision", "fp32", "--int8")
    assert "contradicts" in line
    built = tmp_path / "built.onnx"
    build_engine(unet, built, backend="onnxruntime")
    assert "already" in error_line(capsys, "build-engine", built, "--backend", "onnxruntime")
    assert list(tmp_path.iterdir()) == [folder, built] or sorted(tmp_path.iterdir()) == sorted(
        [folder, built]
    )


def test_empty_calibration_raises_input_error(unet, tmp_path):
    empty = tmp_path / "none"
    empty.mkdir()
    with pytest.raises(InputError):
        build_engine(
            unet, tmp_path / "m.onnx", backend="onnxruntime", precision="int8", calibration=empty
        )
    with pytest.raises(OutputError):
        build_engine(unet, empty, backend="onnxruntime")


# --- OpenVINO ---------------------------------------------------------------------------
@needs_openvino
def test_openvino_fp32_matches_onnxruntime_and_tiles_exactly(unet, tmp_path):
    stack = tmp_path / "big.tif"
    data = np.random.default_rng(1).integers(0, 4000, (2, 130, 150), dtype=np.uint16)
    tifffile.imwrite(stack, data, photometric="minisblack")
    ort = probabilities(unet, stack, backend="onnxruntime")
    whole = probabilities(unet, stack, backend="openvino")
    np.testing.assert_allclose(whole, ort, atol=1e-5)
    tiled = probabilities(unet, stack, backend="openvino", tile=64)  # 3 x 3 tiles
    np.testing.assert_array_equal(tiled, whole)


@needs_openvino
def test_openvino_refuses_bf16_without_the_instructions(unet, monkeypatch):
    import unetrt.backends.openvino as ovb

    monkeypatch.setattr(ovb, "bf16_supported", lambda: False)
    with pytest.raises(ConfigError, match="bfloat16 instructions"):
        open_model(unet, backend="openvino", precision="bf16")


@needs_openvino
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_openvino_build_runs_without_flags(unet, frames, tmp_path, precision):
    out = tmp_path / f"ov-{precision}.xml"
    report = build_engine(
        unet, out, backend="openvino", precision=precision, calibration=frames, max_dice_drop=1
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [out.name, f"ov-{precision}.bin", f"ov-{precision}.xml.unetrt.json"]
    )
    sidecar = json.loads((tmp_path / f"ov-{precision}.xml.unetrt.json").read_text())
    assert sidecar["engine"]["precision"] == precision
    assert ModelContract.from_dict(sidecar["contract"]) == read_contract(unet).contract
    with open_model(out) as model:
        assert (model.backend.name, model.precision) == ("openvino", precision)
        assert set(model.inferred.values()) == {f"model contract (ov-{precision}.xml.unetrt.json)"}
    built = probabilities(out, frames)
    reference = probabilities(unet, frames, backend="openvino")
    if precision == "fp32":
        np.testing.assert_array_equal(built, reference)
        assert report.accuracy.max_difference == 0
    else:
        assert 0 < np.abs(built - reference).max() < 0.5
        assert report.accuracy.max_difference == pytest.approx(
            np.abs(built - reference).max(), abs=1e-6
        )


def test_engine_metadata_is_validated(unet, tmp_path):
    proto = onnx.load(unet)
    proto.metadata_props.add(key=ENGINE_KEY, value="{not json")
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, bad)
    with pytest.raises(Exception, match="engine description"):
        read_engine(bad)


@needs_openvino
def test_openvino_garbage_and_missing_files_are_model_errors(tmp_path):
    from unetrt.backends import create_backend
    from unetrt.errors import ModelError

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a model")
    with pytest.raises(ModelError, match=r"cannot load model .*garbage\.onnx"):
        create_backend(garbage, "openvino")
    with pytest.raises(ModelError, match="no such file"):
        create_backend(tmp_path / "nope.xml", "openvino")


@needs_openvino
def test_an_openvino_step_model_keeps_the_graph_tensor_names(tmp_path):
    from unetrt.testing import convlstm_step_contract, convlstm_step_model

    path = tmp_path / "step.onnx"
    save(convlstm_step_model(contract=convlstm_step_contract()), path)
    with open_model(path, backend="openvino") as model:
        names = {t.name for t in model.backend.outputs}
        assert {s.output for s in model.contract.states} <= names
