"""Temporal step models: stream and window modes, exact tiling with recurrent state.

The test model (`unetrt.testing.convlstm_step_model`) is a tiny ConvLSTM-U-Net step whose
state spreads one state pixel further every step (a 3x3 convolution over h): a state kept
per tile goes wrong at the tile borders, and the error grows frame after frame. The
reference (`tests/reference.py`) computes the same step in NumPy on whole frames.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile

onnx = pytest.importorskip("onnx")

from reference import run_video_reference, window_reference  # noqa: E402

from unetrt import Segmenter  # noqa: E402
from unetrt.cli import main  # noqa: E402
from unetrt.contract import CONTRACT_KEY, StateSpec  # noqa: E402
from unetrt.errors import ConfigError, InputError, ModelError  # noqa: E402
from unetrt.evaluate import evaluate  # noqa: E402
from unetrt.normalize import Normalization  # noqa: E402
from unetrt.testing import (  # noqa: E402
    convlstm_step_contract,
    convlstm_step_model,
    save,
    unet_model,
)

FRAMES = 50
H, W = 40, 56


def _video(n: int = FRAMES, seed: int = 0) -> np.ndarray:
    """Moving smooth blobs in [0, 1]: what a time-lapse of cells looks like to a model."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    base = gaussian_filter(rng.random((H + n, W + n)), 2.0)
    base = (base - base.min()) / (base.max() - base.min())
    return np.stack([base[t : t + H, t : t + W] for t in range(n)]).astype(np.float32)


def _step_model(tmp_path: Path, layout: str = "NHWC", **contract_changes: object) -> Path:
    contract = convlstm_step_contract(layout=layout).replace(
        normalization=Normalization(method="none"), **contract_changes
    )
    model = convlstm_step_model(layout=layout, contract=contract)
    path = tmp_path / f"step_{layout}.onnx"
    save(model, path)
    return path


def _run(path: Path, frames: np.ndarray, **options: object) -> list[np.ndarray]:
    with Segmenter(path, threads=1, **options) as seg:  # type: ignore[arg-type]
        return list(seg.predict_frames(frames, seg.stream()))


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_stream_tiled_equals_whole_frame_and_the_reference(tmp_path: Path, layout: str) -> None:
    path = _step_model(tmp_path, layout)
    frames = _video()
    whole = _run(path, frames)
    with Segmenter(path, tile=16, threads=1) as seg:
        assert seg.plan_for(H, W).n_tiles >= 9  # cores of 4 pixels: state crosses them
    tiled = _run(path, frames, tile=16, batch=4)
    expected = run_video_reference(onnx.load(path), list(frames))
    for t in range(FRAMES):
        np.testing.assert_array_equal(tiled[t], whole[t], err_msg=f"frame {t}")
        np.testing.assert_allclose(whole[t], expected[t], atol=1e-5, err_msg=f"frame {t}")
    # The state matters: the last mask differs from a fresh start on the last frame.
    fresh = _run(path, frames[-1:])[0]
    assert np.abs(fresh - whole[-1]).max() > 1e-3


def test_state_kept_per_tile_would_fail_this_test(tmp_path: Path) -> None:
    """Each tile's window run as a video of its own (its state carried inside the tile,
    halo and all) is exact for the first frame only: the test model's state really
    crosses tile borders, so the stitching of the state maps is what makes tiles exact."""
    path = _step_model(tmp_path)
    frames = _video(12)
    expected = run_video_reference(onnx.load(path), list(frames))
    with Segmenter(path, tile=16, threads=1) as seg:
        plan = seg.plan_for(H, W)
    per_tile = np.zeros((12, H, W), np.float32)
    for wy, wx, y0, y1, x0, x1 in plan.tiles:
        window = frames[:, wy : wy + plan.tile_h, wx : wx + plan.tile_w]
        for t, mask in enumerate(_run(path, window)):
            per_tile[t, y0:y1, x0:x1] = mask[y0 - wy : y1 - wy, x0 - wx : x1 - wx]
    np.testing.assert_allclose(per_tile[0], expected[0], atol=1e-5)  # one step: exact
    assert np.abs(per_tile[-1] - expected[-1]).max() > 1e-3


def test_reset_every_restarts_from_zero_state(tmp_path: Path) -> None:
    path = _step_model(tmp_path)
    frames = _video(20)
    got = _run(path, frames, tile=16, temporal="stream", reset_every=7)
    expected = run_video_reference(onnx.load(path), list(frames), reset_every=7)
    for t in range(20):
        np.testing.assert_allclose(got[t], expected[t], atol=1e-5, err_msg=f"frame {t}")


@pytest.mark.parametrize("steps", [None, 5])
def test_window_tiled_equals_whole_frame_and_the_reference(
    tmp_path: Path, steps: int | None
) -> None:
    path = _step_model(tmp_path)
    frames = _video()
    T = steps or 3  # the contract's time_steps
    whole = _run(path, frames, temporal="window", window=steps)
    tiled = _run(path, frames, temporal="window", window=steps, tile=16, batch=3)
    model = onnx.load(path)
    for t in range(FRAMES):
        np.testing.assert_array_equal(tiled[t], whole[t], err_msg=f"frame {t}")
        expected = window_reference(model, list(frames), t, T)
        np.testing.assert_allclose(whole[t], expected, atol=1e-5, err_msg=f"frame {t}")
    stream = _run(path, frames)
    assert np.abs(stream[-1] - whole[-1]).max() > 1e-4  # the two modes do differ


def test_window_mode_runs_the_frame_part_once_per_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import unetrt.temporal
    from unetrt.stepsplit import split_step_model

    path = _step_model(tmp_path)
    split = split_step_model(path, "frame", "mask", convlstm_step_contract().states)
    assert split is not None
    ops = {
        name: {n.op_type for n in onnx.load_from_string(part).graph.node}
        for name, part in (("frame", split.frame_part), ("state", split.state_part))
    }
    assert "MaxPool" in ops["frame"] and not ops["frame"] & {"Sigmoid", "Tanh"}
    assert "ConvTranspose" not in ops["state"]  # the decoder is not run for earlier frames
    assert len(split.boundary_state) == 1 and len(split.boundary_full) == 2  # pooled, skip
    frames = _video(20)
    with Segmenter(path, temporal="window", tile=16, threads=1) as seg:
        assert seg._executor.shares_frame_work  # type: ignore[attr-defined]
        shared = list(seg.predict_frames(frames, seg.stream()))
    monkeypatch.setattr(unetrt.temporal, "split_step_model", lambda *args: None)
    with Segmenter(path, temporal="window", tile=16, threads=1) as seg:
        assert not seg._executor.shares_frame_work  # type: ignore[attr-defined]
        plain = list(seg.predict_frames(frames, seg.stream()))
    for t in range(20):
        np.testing.assert_allclose(shared[t], plain[t], atol=1e-6, err_msg=f"frame {t}")


def test_live_use_carries_the_state_from_call_to_call(tmp_path: Path) -> None:
    path = _step_model(tmp_path)
    frames = _video(10)
    expected = run_video_reference(onnx.load(path), list(frames))
    with Segmenter(path, tile=16, threads=1) as seg:
        one_by_one = [seg.predict_frame(f) for f in frames]  # the Segmenter's live stream
        camera = seg.stream(name="camera")
        futures = [seg.submit(f, probabilities=True) for f in frames]
        submitted = [f.result() for f in futures]
        again = [seg.predict_frame(f, camera) for f in frames]  # a stream of its own
    for t in range(10):
        np.testing.assert_allclose(one_by_one[t], expected[t], atol=1e-5)
        np.testing.assert_allclose(again[t], expected[t], atol=1e-5)
    # submit() shares the live stream, which already holds 10 frames of state.
    assert np.abs(submitted[0] - expected[0]).max() > 1e-4
    np.testing.assert_allclose(
        submitted[0], run_video_reference(onnx.load(path), [*frames, frames[0]])[-1], atol=1e-5
    )


def _variant(path: Path, name: str, edit: object) -> Path:
    model = onnx.load(path)
    edit(model)  # type: ignore[operator]
    out = path.with_name(f"{name}.onnx")
    save(model, out)
    return out


def _constant_split_sizes(model: onnx.ModelProto) -> None:
    """The gates' Split reads its sizes from a Constant node (as PyTorch exports it)."""
    from onnx import helper, numpy_helper

    split = next(n for n in model.graph.node if n.op_type == "Split")
    sizes = numpy_helper.from_array(np.array([4, 4, 4, 4], np.int64), "sizes")
    model.graph.node.insert(0, helper.make_node("Constant", [], ["sizes"], value=sizes))
    split.input.append("sizes")


def _auxiliary_outputs(model: onnx.ModelProto) -> None:
    """Outputs made from the frame alone, besides the prediction and the states."""
    from onnx import TensorProto, helper

    relu = next(n for n in model.graph.node if n.op_type == "Relu").output[0]
    model.graph.node.append(helper.make_node("Relu", ["frame"], ["aux"]))
    for name in (relu, "aux"):
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))


@pytest.mark.parametrize("edit", [_constant_split_sizes, _auxiliary_outputs])
def test_window_split_of_other_graph_shapes(tmp_path: Path, edit: object) -> None:
    path = _variant(_step_model(tmp_path, "NCHW"), "variant", edit)
    frames = _video(8)
    with Segmenter(path, temporal="window", tile=16, threads=1) as seg:
        assert seg._executor.shares_frame_work  # type: ignore[attr-defined]
        shared = list(seg.predict_frames(frames, seg.stream()))
    model = onnx.load(_step_model(tmp_path, "NCHW"))
    for t in range(8):
        expected = window_reference(model, list(frames), t, 3)
        np.testing.assert_allclose(shared[t], expected, atol=1e-5, err_msg=f"frame {t}")


def _peak_bytes(path: Path, n: int) -> int:
    def frames() -> Iterator[np.ndarray]:
        rng = np.random.default_rng(1)
        for _ in range(n):
            yield rng.random((H, W), dtype=np.float32)

    with Segmenter(path, tile=(40, 40), threads=1) as seg:  # 2 tiles: state stitched
        assert seg.plan_for(H, W).n_tiles == 2
        stream = seg.stream()
        warm = seg.predict_frames(frames(), stream)
        next(warm)  # buffers and state maps exist before measuring
        tracemalloc.start()
        try:
            for _ in warm:
                pass
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()


def test_stream_memory_does_not_grow_with_the_video(tmp_path: Path) -> None:
    path = _step_model(tmp_path)
    short, long = _peak_bytes(path, 100), _peak_bytes(path, 2000)
    assert long <= short * 1.1 + 64 * 1024, (short, long)


def test_segment_writes_the_stream_and_resume_runs_from_the_start(tmp_path: Path) -> None:
    path = _step_model(tmp_path)
    frames = _video(12)
    tifffile.imwrite(tmp_path / "video.tif", frames)
    with Segmenter(path, threads=1) as seg:
        summary = seg.segment(tmp_path / "video.tif", tmp_path / "masks.tif", progress=False)
        expected = [seg.to_mask(p) for p in seg.predict_frames(frames, seg.stream())]
    assert summary.frames == 12
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "masks.tif"), np.stack(expected))


def test_evaluate_runs_the_whole_video_and_scores_annotated_frames(tmp_path: Path) -> None:
    path = _step_model(tmp_path)
    frames = _video(10)
    (tmp_path / "frames").mkdir()
    (tmp_path / "truth").mkdir()
    for t, frame in enumerate(frames):
        tifffile.imwrite(tmp_path / "frames" / f"t{t:03d}.tif", frame)
    masks = [(f > 0.5).astype(np.uint8) for f in frames]
    for t in (4, 8):  # two annotated frames: the others run, unscored
        tifffile.imwrite(tmp_path / "truth" / f"man_seg{t:03d}.tif", masks[t])
    report = evaluate(path, tmp_path / "frames", tmp_path / "truth", threads=1)
    assert [f.image for f in report.frames] == ["t004.tif", "t008.tif"]
    stream = run_video_reference(onnx.load(path), list(frames))
    for score, t in zip(report.frames, (4, 8), strict=True):
        truth = masks[t].astype(bool)
        predicted = stream[t] > 0.5
        dice = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
        assert score.dice == pytest.approx(dice, abs=1e-9)
        assert score.probability_difference == pytest.approx(
            100 * np.abs(truth - stream[t]).mean(), abs=1e-4
        )


def test_info_names_the_states(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _step_model(tmp_path)
    assert main(["info", str(path)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("state ")]
    assert [line.split(":")[0].split()[1:] for line in lines] == [
        ["h", "->", "h_out"],
        ["c", "->", "c_out"],
    ]
    assert all("4 channel(s) at 1/2 of the frame" in line for line in lines)


# ------------------------------------------------------------------------- mistakes
def test_frame_model_with_temporal_is_a_clear_error(tmp_path: Path) -> None:
    save(unet_model(filters=2, pools=1), tmp_path / "unet.onnx")
    with pytest.raises(ConfigError, match="--temporal needs a temporal step model"):
        Segmenter(tmp_path / "unet.onnx", temporal="stream")
    with pytest.raises(ConfigError, match="--temporal needs a temporal step model"):
        Segmenter(tmp_path / "unet.onnx", reset_every=3)


def test_mode_options_belong_to_their_mode(tmp_path: Path) -> None:
    path = _step_model(tmp_path)
    with pytest.raises(ConfigError, match="--reset-every.*stream only"):
        Segmenter(path, temporal="window", reset_every=3)
    with pytest.raises(ConfigError, match="--window.*window only"):
        Segmenter(path, window=4)
    with pytest.raises(ConfigError, match="temporal must be one of"):
        Segmenter(path, temporal="loop")
    with pytest.raises(ConfigError, match="positive number of frames"):
        Segmenter(path, temporal="window", window=0)


def test_temporal_model_given_a_single_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _step_model(tmp_path)
    tifffile.imwrite(tmp_path / "one.tif", _video(1)[0])
    code = main(["segment", str(tmp_path / "one.tif"), "--model", str(path), "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert "one.tif is a single image; a temporal model segments videos" in err
    assert "Traceback" not in err
    assert not list(tmp_path.glob("one_mask*"))


def test_frames_of_another_size_mid_video(tmp_path: Path) -> None:
    path = _step_model(tmp_path)
    frames = [*_video(3), np.zeros((H + 2, W), np.float32)]
    with pytest.raises(InputError, match="frame 3 of frames is 42 x 56 pixels, the frames"):
        _run(path, frames)  # type: ignore[arg-type]
    # One pixel smaller pads to the same size: still another frame size, in every mode.
    smaller = [*_video(2), np.zeros((H - 1, W - 1), np.float32)]
    for options in ({}, {"temporal": "window"}):
        with pytest.raises(InputError, match="frame 2 of frames is 39 x 55 pixels"):
            _run(path, smaller, **options)  # type: ignore[arg-type]


def test_a_stream_keeps_the_state_of_its_own_model_and_mode(tmp_path: Path) -> None:
    path = _step_model(tmp_path)
    frames = _video(3)
    with (
        Segmenter(path, threads=1) as stream_seg,
        Segmenter(path, temporal="window", threads=1) as window_seg,
    ):
        video = stream_seg.stream(name="camera")
        list(stream_seg.predict_frames(frames, video))
        with pytest.raises(ConfigError, match="'camera' carries the state of another model"):
            list(window_seg.predict_frames(frames, video))


def test_step_model_contract_mistakes(tmp_path: Path) -> None:
    contract = convlstm_step_contract()
    missing = contract.replace(states=(*contract.states[:1], StateSpec("c", "nope", 4, 2)))
    model = convlstm_step_model(contract=missing)
    save(model, tmp_path / "bad.onnx")
    with pytest.raises(ModelError, match="names state output 'nope', but the model has no such"):
        Segmenter(tmp_path / "bad.onnx")
    # A step model whose contract leaves the states out reads as a frame model: refused.
    model = convlstm_step_model()
    save(model, tmp_path / "plain.onnx")
    with pytest.raises(ModelError, match="must name its state inputs"):
        Segmenter(tmp_path / "plain.onnx")
    # Without a halo the engine cannot tile it safely (the probe cannot see the states).
    stated = {k: v for k, v in contract.to_dict().items() if k != "halo"}
    import json

    model = convlstm_step_model()
    onnx.helper.set_model_props(model, {CONTRACT_KEY: json.dumps(stated)})
    save(model, tmp_path / "nohalo.onnx")
    with pytest.raises(ModelError, match="must state 'halo'"):
        Segmenter(tmp_path / "nohalo.onnx")
    wrong = contract.replace(states=(StateSpec("h", "h_out", 3, 2), contract.states[1]))
    save(convlstm_step_model(contract=wrong), tmp_path / "channels.onnx")
    with pytest.raises(ModelError, match="state 'h' has 3 channel"):
        Segmenter(tmp_path / "channels.onnx")
