"""Pipeline v2: per-video streams, the executor seam, SegmenterSpec, bad values in frames."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from unetrt import Segmenter, SegmenterSpec, VideoStream
from unetrt.contract import ModelContract
from unetrt.errors import ConfigError, InputError, ModelError
from unetrt.normalize import Normalization, Statistics
from unetrt.pipeline import CpuExecutor
from unetrt.postprocess import PostProcess
from unetrt.testing import affine_model, save

POOLS = 2


@pytest.fixture(scope="module")
def identity_path(tmp_path_factory) -> Path:
    from onnx import helper

    path = tmp_path_factory.mktemp("models") / "identity.onnx"
    model = affine_model(scale=1.0, offset=0.0)
    contract = ModelContract(normalization=Normalization(method="none"))
    helper.set_model_props(model, {"unetrt": contract.to_json()})
    save(model, path)
    return path


# --- SegmenterSpec ---------------------------------------------------------------------


def test_spec_round_trips_every_option(unet_path: Path) -> None:
    options = dict(
        backend="auto",
        device="cpu",
        precision=None,
        tile=32,
        halo=12,
        batch=3,
        stitch="blend",
        normalization={"scope": "stack"},
        threshold=0.4,
        threads=1,
        max_tile_pixels=4096,
        postprocess=PostProcess(min_size=3, fill_holes=True),
        nan=0.0,
        queue_size=3,
        when_full="drop_oldest",
        temporal=None,
        reset_every=None,
        window=None,
    )
    with Segmenter(unet_path, **options) as seg:
        spec = seg.spec
    assert spec.model == str(unet_path.resolve())
    assert spec.options() == options
    assert pickle.loads(pickle.dumps(spec)) == spec
    with spec.build() as again:
        assert again.spec == spec
        assert again.contract == seg.contract


def test_spec_keeps_builtin_names_and_makes_paths_absolute(
    unet_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert SegmenterSpec.of(None).model == "default"
    assert SegmenterSpec.of("default").model == "default"
    monkeypatch.chdir(unet_path.parent)
    assert SegmenterSpec.of("unet.onnx").model == str(unet_path.resolve())


def test_spec_rebuilt_in_a_subprocess_gives_identical_masks(unet_path: Path, tmp_path: Path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 4000, (3, 45, 70), dtype=np.uint16)
    np.save(tmp_path / "frames.npy", frames)
    with Segmenter(unet_path, tile=56, batch=2, threshold=0.45, threads=1) as seg:
        (tmp_path / "spec.pkl").write_bytes(pickle.dumps(seg.spec))
        here_masks = np.stack(list(seg.segment_frames(frames)))
        here_probs = np.stack(list(seg.predict_frames(frames)))
    code = (
        "import pickle, sys, numpy as np; d = sys.argv[1]; "
        "spec = pickle.load(open(d + '/spec.pkl', 'rb')); seg = spec.build(); "
        "f = np.load(d + '/frames.npy'); "
        "np.save(d + '/masks.npy', np.stack(list(seg.segment_frames(f)))); "
        "np.save(d + '/probs.npy', np.stack(list(seg.predict_frames(f))))"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd="/")
    np.testing.assert_array_equal(np.load(tmp_path / "masks.npy"), here_masks)
    np.testing.assert_array_equal(np.load(tmp_path / "probs.npy"), here_probs)
    assert 0 < np.count_nonzero(here_masks) < here_masks.size  # not a trivial mask


# --- streams -----------------------------------------------------------------------------


def test_stream_holds_statistics_given_once(identity_path: Path) -> None:
    # A stack-scope mean normalization with statistics passed in (as a Dask client would).
    spec = Normalization(method="mean", scope="stack")
    frame = np.full((6, 5), 100, np.uint8)
    with Segmenter(identity_path, normalization=spec) as seg:
        stream = seg.stream(Statistics(center=50.0), name="video")
        got = seg.predict_frame(frame, stream)
    # x / 255 + 0.5 - 50 / 255, clipped to [0, 1]
    expected = np.clip(np.float32(100) * np.float32(1 / 255) + np.float32(0.5 - 50 / 255), 0.0, 1.0)
    np.testing.assert_array_equal(got, np.full((6, 5), expected, np.float32))
    assert stream.frames_seen == 1 and stream.name == "video"


def test_stream_from_a_source_fits_statistics(identity_path: Path) -> None:
    spec = Normalization(method="mean", scope="stack")
    frames = [np.full((4, 4), v, np.uint8) for v in (10, 30)]  # stack mean 20
    with Segmenter(identity_path, normalization=spec) as seg:
        stream = seg.stream(source=frames)
        assert stream.stats == Statistics(center=20.0)
        got = seg.predict_frame(frames[0], stream)
    expected = np.float32(10) * np.float32(1 / 255) + np.float32(0.5 - 20 / 255)
    np.testing.assert_array_equal(got, np.full((4, 4), expected, np.float32))


def test_per_frame_normalization_needs_no_statistics(identity_path: Path) -> None:
    with Segmenter(identity_path) as seg:
        assert seg.stack_statistics([np.zeros((4, 4), np.uint8)]) is None


def test_streams_are_independent(identity_path: Path) -> None:
    spec = Normalization(method="mean", scope="stack")
    frame = np.full((4, 4), 100, np.uint8)
    with Segmenter(identity_path, normalization=spec) as seg:
        a, b = seg.stream(Statistics(center=50.0), name="a"), seg.stream(name="b")
        got_a = list(seg.predict_frames([frame, frame], a))
        with pytest.raises(ConfigError, match="normalizes per stack"):
            seg.predict_frame(frame, b)  # b has no statistics of its own
        b.stats = Statistics(center=100.0)
        got_b = seg.predict_frame(frame, b)
    assert (a.frames_seen, b.frames_seen) == (2, 2)  # a refused frame is still frame 0
    np.testing.assert_array_equal(got_a[1], got_a[0])
    x = np.float32(100) * np.float32(1 / 255)  # the kernel's two roundings
    assert got_a[0][0, 0] == x + np.float32(0.5 - 50 / 255)
    assert got_b[0, 0] == x + np.float32(0.5 - 100 / 255)


def test_a_stream_handed_to_another_segmenter_gets_that_ones_tiles(unet_path: Path) -> None:
    frame = np.random.default_rng(9).integers(0, 255, (90, 100), dtype=np.uint8)
    with Segmenter(unet_path) as whole, Segmenter(unet_path, tile=56, stitch="blend") as blend:
        stream = whole.stream()
        exact = whole.predict_frame(frame, stream)
        blended = blend.predict_frame(frame, stream)  # its own plan, with tapers
        np.testing.assert_array_equal(blended, blend.predict_frame(frame))
        np.testing.assert_array_equal(whole.predict_frame(frame, stream), exact)


def test_plan_is_frozen_per_size_and_taper_computed_once(unet_path, monkeypatch) -> None:
    from unetrt import tiling

    calls = {"plan": 0, "taper": 0}
    real_plan, real_taper = tiling.plan_tiles, tiling.taper_weights

    def counting_plan(*args, **kwargs):
        calls["plan"] += 1
        return real_plan(*args, **kwargs)

    def counting_taper(*args, **kwargs):
        calls["taper"] += 1
        return real_taper(*args, **kwargs)

    monkeypatch.setattr(tiling, "plan_tiles", counting_plan)
    monkeypatch.setattr(tiling, "taper_weights", counting_taper)
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 255, (50, 60), dtype=np.uint8) for _ in range(4)]
    with Segmenter(unet_path, tile=56, stitch="blend") as seg:
        stream = seg.stream()
        list(seg.predict_frames(frames, stream))
        list(seg.predict_frames([rng.integers(0, 255, (30, 30), dtype=np.uint8)], stream))
    assert calls == {"plan": 2, "taper": 2}  # one per frame size, not per frame


def test_jobs_drop_their_frame_once_cut(unet_path: Path, monkeypatch) -> None:
    seen = []
    real = CpuExecutor._run_batch

    def spy(self, buffers, slots):
        seen.extend(job.frame is None for job, _ in slots)
        return real(self, buffers, slots)

    monkeypatch.setattr(CpuExecutor, "_run_batch", spy)
    with Segmenter(unet_path, tile=56, batch=64) as seg:  # every tile in one batch
        list(seg.predict_frames([np.zeros((40, 40), np.uint8)] * 2))
    assert seen and all(seen)


def test_executor_keeps_several_frames_in_flight(identity_path: Path, monkeypatch) -> None:
    # batch 3 over one-tile frames: three frames are cut before the engine runs once.
    from unetrt.backends.onnxruntime import OnnxRuntimeBackend

    batches = []
    real = OnnxRuntimeBackend.run

    def counting(self, feeds, out=None):
        batches.append(len(next(iter(feeds.values()))))
        return real(self, feeds, out)

    monkeypatch.setattr(OnnxRuntimeBackend, "run", counting)
    frames = [np.full((8, 8), float(i), np.float32) for i in range(7)]
    with Segmenter(identity_path, batch=3, backend="onnxruntime") as seg:
        out = list(seg.predict_frames(frames))
    assert [float(o[0, 0]) for o in out] == [float(i) for i in range(7)]
    assert batches == [3, 3, 1]


def test_two_threads_share_a_segmenter(unet_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 255, (50 + 8 * i, 60), dtype=np.uint8) for i in range(8)]
    with Segmenter(unet_path, tile=56, batch=3) as seg:
        expected = [seg.predict_frame(f) for f in frames]
        with ThreadPoolExecutor(4) as pool:
            for _ in range(3):
                got = list(pool.map(seg.predict_frame, frames))
                for a, b in zip(got, expected, strict=True):
                    np.testing.assert_array_equal(a, b)
        assert len(seg._executor._free) <= 4  # buffer sets are reused, not piled up


def test_runs_one_after_another_reuse_the_batch_buffers(unet_path: Path) -> None:
    with Segmenter(unet_path, tile=56, batch=2) as seg:
        seg.predict_frame(np.zeros((70, 70), np.uint8))
        (buffers,) = seg._executor._free
        first = buffers.inputs
        seg.predict_frame(np.ones((70, 70), np.uint8))
        assert seg._executor._free == [buffers] and buffers.inputs is first


# --- bad values inside good files --------------------------------------------------------


def test_nan_in_a_frame_names_the_frame(identity_path: Path) -> None:
    frames = [np.zeros((5, 5), np.float32) for _ in range(3)]
    frames[1][2, 3] = np.nan
    with Segmenter(identity_path) as seg:
        stream = seg.stream(name="video.tif")
        with pytest.raises(InputError, match=r"^frame 1 of video\.tif holds 1 NaN pixel value"):
            list(seg.predict_frames(frames, stream))


def test_nan_option_reads_nan_as_a_value(identity_path: Path) -> None:
    frame = np.full((4, 4), 0.25, np.float32)
    frame[0, 0] = np.nan
    with Segmenter(identity_path, nan=0.75) as seg:
        got = seg.predict_frame(frame)
    expected = np.full((4, 4), 0.25, np.float32)
    expected[0, 0] = 0.75
    np.testing.assert_array_equal(got, expected)


def test_infinity_is_always_an_error(identity_path: Path) -> None:
    frame = np.zeros((4, 4), np.float32)
    frame[1, 1] = -np.inf
    with Segmenter(identity_path, nan=0.0) as seg, pytest.raises(InputError, match="infinite"):
        seg.predict_frame(frame)


def test_nan_in_a_sampled_frame_fails_the_statistics(identity_path: Path, tmp_path) -> None:
    stack = np.ones((3, 6, 6), np.float32)
    stack[2, 0, 0] = np.nan
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, stack, photometric="minisblack")
    spec = Normalization(method="mean", scope="stack")
    with (
        Segmenter(identity_path, normalization=spec) as seg,
        pytest.raises(InputError, match=r"frame 2 of float\.tif holds 1 NaN"),
    ):
        seg.segment(path, tmp_path / "out.tif", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["float.tif"]


def test_float64_beyond_float32_is_an_error(identity_path: Path) -> None:
    frame = np.zeros((4, 4), np.float64)
    frame[0, 1] = 1e39
    with Segmenter(identity_path) as seg, pytest.raises(InputError, match="beyond the float32"):
        seg.predict_frame(frame)


def test_an_infinite_logit_is_an_error_not_a_certain_pixel(tmp_path: Path) -> None:
    from onnx import helper

    from unetrt import testing

    # y = 1e30 * x: logits overflow float32 to infinity, which a sigmoid would make 1.
    model = affine_model(scale=1e30, offset=0.0)
    contract = ModelContract(normalization=Normalization(method="none"), output="logits")
    helper.set_model_props(model, {"unetrt": contract.to_json()})
    path = tmp_path / "huge.onnx"
    testing.save(model, path)
    with Segmenter(path) as seg, pytest.raises(ModelError, match="NaN or infinite values"):
        seg.predict_frame(np.full((4, 4), 1e9, np.float32))


def test_a_model_that_outputs_nan_is_an_error(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    from unetrt import testing

    # y = log(x - 1): NaN for inputs below 1.
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    graph = helper.make_graph(
        [helper.make_node("Sub", ["x", "one"], ["d"]), helper.make_node("Log", ["d"], ["y"])],
        "log",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "H", "W", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "H", "W", 1])],
        initializer=[one],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=testing.IR_VERSION
    )
    contract = ModelContract(normalization=Normalization(method="none"), output="logits")
    helper.set_model_props(model, {"unetrt": contract.to_json()})
    path = tmp_path / "log.onnx"
    testing.save(model, path)
    with Segmenter(path) as seg:
        stream = seg.stream(name="v.tif")
        with pytest.raises(ModelError, match="NaN or infinite values for frame 0 of v.tif"):
            seg.predict_frame(np.zeros((4, 4), np.float32), stream)


def test_video_stream_describes_frames() -> None:
    assert VideoStream("a.tif").describe_frame(3) == "frame 3 of a.tif"
    assert VideoStream("a", describe_frame=lambda i: f"t{i:03d}.tif").describe_frame(3) == (
        "t003.tif"
    )


def test_frames_too_large_for_one_tile_go_in_the_cheapest_tiles_that_fit() -> None:
    from unetrt.pipeline import TilePolicy

    policy = TilePolicy(alignment=8, halo=56, tile=None, max_tile_pixels=2048 * 1100)
    plan = policy.plan(2048, 2048)
    # Two strips of 2048 x 1080 (two 56-px halos of overlap) beat four squares of 1080.
    assert plan.n_tiles == 2 and {plan.tile_h, plan.tile_w} == {2048, 1080}
    assert plan.tile_h * plan.tile_w <= 2048 * 1100
    small = TilePolicy(alignment=8, halo=56, tile=None, max_tile_pixels=1200 * 1200)
    plan = small.plan(2048, 2048)
    assert (plan.n_tiles, plan.tile_h, plan.tile_w) == (4, 1080, 1080)
    whole = TilePolicy(alignment=8, halo=56, tile=None, max_tile_pixels=2048 * 2048)
    assert whole.plan(2048, 2048).n_tiles == 1


def test_a_small_memory_budget_tiles_exactly(unet_path: Path) -> None:
    frame = np.random.default_rng(2).integers(0, 255, (90, 130), dtype=np.uint8)
    with Segmenter(unet_path) as seg:
        reference = seg.predict_frame(frame)
    with Segmenter(unet_path, max_tile_pixels=60 * 130) as seg:
        assert seg.plan_for(90, 130).n_tiles > 1
        np.testing.assert_array_equal(seg.predict_frame(frame), reference)


def test_the_memory_budget_follows_the_graph_and_the_backend(unet_path: Path) -> None:
    from unetrt.segmenter import ACTIVATION_OVERHEAD, DEFAULT_MEMORY_BUDGET

    with Segmenter(unet_path, backend="onnxruntime", batch=2) as seg:
        per_pixel = seg.model.activation_bytes
        assert per_pixel is not None and per_pixel > 0
        expected = int(DEFAULT_MEMORY_BUDGET / (per_pixel * ACTIVATION_OVERHEAD["onnxruntime"]) / 2)
        assert seg._tiles.max_tile_pixels == expected
