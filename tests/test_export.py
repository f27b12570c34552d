"""Tests for unetrt.export: Keras -> ONNX round trip, the contract in the metadata, failures.

Models are tiny (2 pools, 4 filters) with random weights and batch normalization
statistics moved off their defaults, so the check compares real arithmetic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
onnx = pytest.importorskip("onnx")
import onnxruntime as ort  # noqa: E402

from unetrt.cli import main  # noqa: E402
from unetrt.contract import CONFIG_NAME, CONTRACT_KEY, ModelContract  # noqa: E402
from unetrt.errors import ModelError, OutputError  # noqa: E402
from unetrt.export import ExportError, export  # noqa: E402
from unetrt.normalize import Normalization  # noqa: E402
from unetrt.segmenter import Segmenter  # noqa: E402
from unetrt.testing import unet_receptive_radius  # noqa: E402
from unetrt.train.config import load_config  # noqa: E402
from unetrt.train.models import build_model, receptive_field  # noqa: E402

BASE_CONFIG: dict[str, Any] = {
    "data_train_images": "frames",
    "data_train_masks": "masks",
    "model_pools": 2,
    "model_n_filters": 4,
    "batch_norm": True,
    "upsampling": "transpose",
    "datagen_dim_size": [32, 32],
    "newinfer_normalization": {"method": "percentile", "low": 1.0, "high": 99.0},
}


def _save_model(folder: Path, config: dict[str, Any] | None = None, *, beside: bool = True) -> Path:
    """Build the model a config describes, perturb its weights, save it (and the config)."""
    values = {**BASE_CONFIG, **(config or {})}
    cfg = load_config(values)
    model = build_model(cfg.model_config())
    rng = np.random.default_rng(1)
    # Random batch-norm statistics and biases, so inference mode is not an identity.
    model.set_weights(
        [w + rng.normal(0, 0.1, w.shape).astype(np.float32) ** 2 for w in model.get_weights()]
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.keras"
    model.save(path)
    if beside:
        (folder / CONFIG_NAME).write_text(json.dumps(values))
    return path


def _contract_of(path: Path) -> ModelContract:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return ModelContract.from_json(session.get_modelmeta().custom_metadata_map[CONTRACT_KEY])


#: The contract `BASE_CONFIG` describes: alignment 2**pools, halo the receptive field of a
#: 2-pool U-Net of 3x3 convolutions (traced independently by unetrt.testing), and the
#: config's normalization.
BASE_CONTRACT = ModelContract(
    channels=1,
    layout="NHWC",
    alignment=4,
    halo=unet_receptive_radius(pools=2, kernel=3),
    normalization=Normalization(method="percentile", low=1.0, high=99.0),
    output="sigmoid",
    threshold=0.5,
    classes=("background", "foreground"),
    temporal="none",
    time_steps=1,
)


def _percentile_normalized(frames: np.ndarray, low: float, high: float) -> np.ndarray:
    """Each frame mapped so that its ``low`` / ``high`` percentiles go to 0 / 1."""
    out = []
    for frame in frames.astype(np.float32):
        p_low, p_high = np.percentile(frame, [low, high])
        out.append((frame - np.float32(p_low)) / np.float32(p_high - p_low))
    return np.stack(out)[..., None].astype(np.float32)


def _assert_engine_model(onnx_path: Path, keras_path: Path, batch: np.ndarray) -> None:
    """What the export promises besides the contract: a model ONNX Runtime loads, one input
    "frame" with dynamic batch, height and width, and the Keras model's output."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (frame_input,) = session.get_inputs()
    assert frame_input.name == "frame" and frame_input.type == "tensor(float)"
    assert frame_input.shape[3] == 1
    assert not any(isinstance(d, int) for d in frame_input.shape[:3])  # symbolic: dynamic
    keras_model = __import__("keras").models.load_model(keras_path, compile=False)
    rng = np.random.default_rng(9)
    # The given batch and two more sizes (other batch, height and width: all dynamic).
    for x in (batch, rng.random((1, 12, 8, 1), dtype=np.float32), batch[:2, :8, :20]):
        got = session.run(None, {"frame": np.ascontiguousarray(x)})[0]
        expected = np.asarray(keras_model(x, training=False))
        assert got.shape == expected.shape == x.shape
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def _assert_halo_bounds_the_field(onnx_path: Path, halo: int) -> None:
    """An input pixel changes no output pixel further than the halo away."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(8).random((1, 96, 96, 1), dtype=np.float32)
    (base,) = session.run(None, {"frame": x})
    for y0, x0 in ((48, 48), (45, 50), (50, 45)):
        hit = x.copy()
        hit[0, y0, x0, 0] += 100.0
        (out,) = session.run(None, {"frame": hit})
        rows, cols = np.nonzero(np.abs(out - base)[0, :, :, 0] > 1e-6)
        assert rows.size > 0  # the impulse is seen at all
        assert np.abs(rows - y0).max() <= halo and np.abs(cols - x0).max() <= halo


def test_round_trip_and_contract_from_training_config(tmp_path: Path) -> None:
    keras_path = _save_model(tmp_path / "run")
    onnx_path = tmp_path / "model.onnx"
    contract = export(keras_path, onnx_path)

    cfg = load_config({**BASE_CONFIG}).model_config()
    assert _contract_of(onnx_path) == contract
    assert contract == BASE_CONTRACT
    assert contract.alignment == 4
    assert contract.halo == receptive_field(cfg)
    assert contract.normalization == Normalization(method="percentile", low=1.0, high=99.0)
    assert (contract.layout, contract.channels, contract.output) == ("NHWC", 1, "sigmoid")
    assert (contract.temporal, contract.classes) == ("none", ("background", "foreground"))

    model = onnx.load(onnx_path)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (frame_input,) = model.graph.input
    assert frame_input.name == "frame"
    dims = frame_input.type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [0, 0, 0, 1]  # dynamic batch, height, width

    keras_model = __import__("keras").models.load_model(keras_path, compile=False)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((3, 20, 28, 1), dtype=np.float32)
    (got,) = session.run(None, {"frame": x})
    np.testing.assert_allclose(got, keras_model(x, training=False), atol=1e-4, rtol=0)


def test_segmenter_runs_the_exported_model(tmp_path: Path) -> None:
    keras_path = _save_model(tmp_path / "run", {"newinfer_normalization": "range"})
    onnx_path = tmp_path / "model.onnx"
    export(keras_path, onnx_path)
    keras_model = __import__("keras").models.load_model(keras_path, compile=False)
    frame = np.random.default_rng(2).integers(0, 256, (24, 36), dtype=np.uint8)
    with Segmenter(onnx_path) as segmenter:
        probabilities = segmenter.predict_frame(frame)
    expected = keras_model(frame[None, :, :, None].astype(np.float32) / 255, training=False)
    np.testing.assert_allclose(probabilities, np.asarray(expected)[0, :, :, 0], atol=1e-4)


def test_checkpoint_takes_the_config_of_its_run(tmp_path: Path) -> None:
    # unetrt train writes run/config.json and run/checkpoints/epochNNNN.keras
    keras_path = _save_model(tmp_path / "run", {"newinfer_normalization": "range"})
    checkpoint = tmp_path / "run" / "checkpoints" / "epoch0003.keras"
    checkpoint.parent.mkdir()
    keras_path.rename(checkpoint)
    contract = export(checkpoint, tmp_path / "model.onnx")
    assert contract.normalization == Normalization(method="range")
    assert contract == BASE_CONTRACT.replace(normalization=Normalization(method="range"))
    assert _contract_of(tmp_path / "model.onnx") == contract
    assert contract.halo == receptive_field(load_config({**BASE_CONFIG}).model_config())


def test_contract_measured_without_training_config(tmp_path: Path) -> None:
    keras_path = _save_model(tmp_path / "run", beside=False)
    contract = export(keras_path, tmp_path / "model.onnx")
    cfg = load_config({**BASE_CONFIG}).model_config()
    assert contract.alignment == 4
    # The graph bound of the exported model is the architecture's receptive field.
    assert contract.halo == -(-receptive_field(cfg) // 4) * 4  # rounded up to the alignment
    assert contract.output == "sigmoid"
    assert _contract_of(tmp_path / "model.onnx") == contract


def test_softmax_and_two_head_models(tmp_path: Path) -> None:
    softmax = {"model_lossfunction": "sparse_cce", "datagen_type": "contours"}
    contract = export(_save_model(tmp_path / "softmax", softmax), tmp_path / "softmax.onnx")
    assert contract.output == "softmax"
    assert contract.classes == ("background", "cell", "contour")

    heads = {"model_lossfunction": "multiple_output", "datagen_type": "contours"}
    contract = export(_save_model(tmp_path / "heads", heads), tmp_path / "heads.onnx")
    assert contract.output == "sigmoid"
    outputs = [o.name for o in onnx.load(tmp_path / "heads.onnx").graph.output]
    assert outputs == ["mask", "target"]  # the engine reads the first


def test_convlstm_model_exports_as_window(tmp_path: Path) -> None:
    clip = {"cnn_name": "lstm_unet", "time_steps": 2, "model_lossfunction": "bce_dice"}
    keras_path = _save_model(tmp_path / "lstm", clip)
    frames = np.random.default_rng(3).integers(0, 256, (3, 20, 24), dtype=np.uint8)
    contract = export(keras_path, tmp_path / "lstm.onnx", check_frames=frames, window=True)
    assert (contract.temporal, contract.time_steps, contract.states) == ("window", 2, ())
    dims = onnx.load(tmp_path / "lstm.onnx").graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [0, 2, 0, 0, 1]


@pytest.mark.parametrize(
    ("position", "residual"), [("bottleneck", False), ("encoder", False), ("encoder", True)]
)
def test_convlstm_model_exports_as_step_model(
    tmp_path: Path, position: str, residual: bool
) -> None:
    clip = {
        "cnn_name": "lstm_unet",
        "time_steps": 3,
        "convlstm_position": position,
        "convlstm_residual": residual,
        "model_lossfunction": "bce_dice",
    }
    keras_path = _save_model(tmp_path / "lstm", clip)
    frames = np.random.default_rng(3).integers(0, 256, (6, 20, 24), dtype=np.uint8)
    contract = export(keras_path, tmp_path / "step.onnx", check_frames=frames)
    levels = [2] if position == "bottleneck" else [0, 1, 2]  # 2 pools: bottleneck is level 2
    names = ["bottleneck" if lv == 2 else f"enc{lv}" for lv in levels]
    assert contract.temporal == "stateful" and contract.time_steps == 3
    assert [(x.input, x.output, x.channels, x.stride) for x in contract.states] == [
        (f"{n}_convlstm_{s}", f"{n}_convlstm_{s}_next", 4 * 2**lv, 2**lv)
        for n, lv in zip(names, levels, strict=True)
        for s in "hc"
    ]
    proto = onnx.load(tmp_path / "step.onnx")
    assert not {n.op_type for n in proto.graph.node} & {"Loop", "Scan"}
    assert [i.name for i in proto.graph.input] == ["frame", *(x.input for x in contract.states)]
    assert [o.name for o in proto.graph.output] == [
        "mask",
        *(x.output for x in contract.states),
    ]
    # Independently of export's own check: T steps from zero state == the Keras clip model,
    # on a new clip of another size.
    from unetrt.export import load_keras_model

    model = load_keras_model(keras_path)
    batch = np.random.default_rng(9).random((2, 3, 16, 28, 1), dtype=np.float32)
    session = ort.InferenceSession(str(tmp_path / "step.onnx"), providers=["CPUExecutionProvider"])
    states = {
        x.input: np.zeros((2, 16 // x.stride, 28 // x.stride, x.channels), np.float32)
        for x in contract.states
    }
    outputs = [o.name for o in proto.graph.output]
    for t in range(3):
        got = dict(zip(outputs, session.run(None, {"frame": batch[:, t], **states}), strict=True))
        states = {x.input: got[x.output] for x in contract.states}
    np.testing.assert_allclose(got["mask"], np.asarray(model(batch)), atol=1e-5)


def test_engine_runs_the_step_model_as_keras_runs_the_clip_model(tmp_path: Path) -> None:
    """Window mode equals the Keras clip model on every clip of a video (frame 0 standing
    in before the start); stream mode equals the Keras step model run step by step."""
    from unetrt.export import load_keras_model
    from unetrt.train.models import build_convlstm_step, copy_weights

    values = {
        "cnn_name": "lstm_unet",
        "time_steps": 3,
        "convlstm_position": "encoder",
        "model_lossfunction": "bce_dice",
        "newinfer_normalization": {"method": "none"},
    }
    keras_path = _save_model(tmp_path / "lstm", values)
    contract = export(keras_path, tmp_path / "step.onnx")
    model = load_keras_model(keras_path)
    frames = np.random.default_rng(5).random((8, 96, 120), dtype=np.float32)
    with Segmenter(tmp_path / "step.onnx", temporal="window", tile=56, threads=1) as seg:
        assert seg.plan_for(96, 120).n_tiles == 54  # cores of 8 to 32 pixels: halo 23, one step
        assert seg.contract.halo == 23
        window = list(seg.predict_frames(frames, seg.stream()))
    for t in range(8):
        clip = np.stack([frames[max(t - 2 + k, 0)] for k in range(3)])[None, ..., None]
        expected = np.asarray(model(clip))[0, ..., 0]
        np.testing.assert_allclose(window[t], expected, atol=1e-5, err_msg=f"frame {t}")

    step, states = build_convlstm_step(load_config({**BASE_CONFIG, **values}).model_config())
    copy_weights(model, step)
    feeds = [np.zeros((1, 96 // x.stride, 120 // x.stride, x.channels), np.float32) for x in states]
    with Segmenter(tmp_path / "step.onnx", tile=56, threads=1) as seg:
        stream = list(seg.predict_frames(frames, seg.stream()))
    assert [x.input for x in states] == [x.input for x in contract.states]
    for t in range(8):
        mask, *feeds = (np.asarray(y) for y in step([frames[t][None, ..., None], *feeds]))
        np.testing.assert_allclose(stream[t], mask[0, ..., 0], atol=1e-5, err_msg=f"frame {t}")


def test_check_with_real_frames_from_a_stack(tmp_path: Path) -> None:
    stack = np.random.default_rng(4).integers(0, 4000, (5, 30, 42), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    keras_path = _save_model(tmp_path / "run")
    contract = export(keras_path, tmp_path / "model.onnx", check_frames=tmp_path / "stack.tif")
    assert (tmp_path / "model.onnx").is_file()
    assert contract == BASE_CONTRACT
    assert _contract_of(tmp_path / "model.onnx") == BASE_CONTRACT
    assert BASE_CONTRACT.halo == receptive_field(load_config({**BASE_CONFIG}).model_config())
    stored = {p.key: p.value for p in onnx.load(tmp_path / "model.onnx").metadata_props}
    assert json.loads(stored[CONTRACT_KEY]) == BASE_CONTRACT.to_dict()
    # The stack's frames, normalized as the contract says, cut to a multiple of 4 pixels.
    batch = _percentile_normalized(stack, 1.0, 99.0)[:, :28, :40]
    _assert_engine_model(tmp_path / "model.onnx", keras_path, batch)
    _assert_halo_bounds_the_field(tmp_path / "model.onnx", BASE_CONTRACT.halo)


def test_mismatch_fails_loudly_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keras_path = _save_model(tmp_path / "run")
    out = tmp_path / "out"
    out.mkdir()
    run = ort.InferenceSession.run

    def off_by_a_little(self: Any, *args: Any, **kwargs: Any) -> Any:
        return [y + np.float32(2e-4) for y in run(self, *args, **kwargs)]

    monkeypatch.setattr(ort.InferenceSession, "run", off_by_a_little)
    with pytest.raises(ExportError, match=r"differs from the Keras model by 0.0002"):
        export(keras_path, out / "model.onnx")
    assert list(out.iterdir()) == []  # neither the model nor a temporary file
    monkeypatch.undo()
    export(keras_path, out / "model.onnx", atol=1e-4)
    assert [p.name for p in out.iterdir()] == ["model.onnx"]


def test_config_that_does_not_describe_the_model_is_refused(tmp_path: Path) -> None:
    keras_path = _save_model(tmp_path / "run")
    clip = {**BASE_CONFIG, "cnn_name": "lstm_unet", "time_steps": 2}
    (tmp_path / "clip.json").write_text(json.dumps(clip))
    with pytest.raises(ExportError, match="is the config next to the model the one"):
        export(keras_path, tmp_path / "model.onnx", config=tmp_path / "clip.json")
    assert not (tmp_path / "model.onnx").exists()


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="missing.keras: no such file"):
        export(tmp_path / "missing.keras", tmp_path / "model.onnx")
    keras_path = _save_model(tmp_path / "run")
    with pytest.raises(OutputError, match="does not exist"):
        export(keras_path, tmp_path / "nowhere" / "model.onnx")
    (tmp_path / "broken.keras").write_bytes(b"not a zip file")
    with pytest.raises(ModelError, match="cannot load Keras model"):
        export(tmp_path / "broken.keras", tmp_path / "model.onnx")


def test_cli_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keras_path = _save_model(tmp_path / "run")
    code = main(["export", str(keras_path), "-o", str(tmp_path / "model.onnx")])
    assert code == 0
    out = capsys.readouterr().out
    assert "ONNX Runtime matches Keras" in out and "alignment" in out
    assert _contract_of(tmp_path / "model.onnx") == BASE_CONTRACT
    fields = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
    assert fields["alignment"] == "4" and fields["halo"] == str(BASE_CONTRACT.halo)
    batch = np.random.default_rng(5).random((2, 16, 24, 1), dtype=np.float32)
    _assert_engine_model(tmp_path / "model.onnx", keras_path, batch)
    code = main(["export", str(tmp_path / "nope.keras"), "-o", str(tmp_path / "x.onnx")])
    assert code == 1
    assert "nope.keras: no such file" in capsys.readouterr().err
