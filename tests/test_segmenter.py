"""Segmenter: tiled inference is exact, batching is invisible, stacks stream to disk."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unetrt import Segmenter
from unetrt.contract import ModelContract
from unetrt.errors import ConfigError, InputError
from unetrt.normalize import Normalization, affine_for, frame_statistics
from unetrt.postprocess import PostProcess
from unetrt.testing import affine_model, save, unet_model, unet_receptive_radius

POOLS = 2
ALIGN = 2**POOLS


def _unet(tmp_path, layout="NHWC", classes=1, output="sigmoid", name="unet.onnx", **contract):
    halo = unet_receptive_radius(pools=POOLS, kernel=3)
    c = ModelContract(alignment=ALIGN, halo=halo, layout=layout, output=output, **contract)
    path = tmp_path / name
    model = unet_model(
        filters=4, pools=POOLS, kernel=3, classes=classes, layout=layout, output=output, contract=c
    )
    save(model, path)
    return path


def _reference(seg: Segmenter, frame: np.ndarray) -> np.ndarray:
    """The model run once on the whole frame, reflect-padded to the alignment, cropped."""
    spec = seg.contract.normalization
    a = affine_for(frame_statistics(frame, spec), spec, frame.dtype)
    x = np.clip(frame.astype(np.float32) * np.float32(a.scale) + np.float32(a.offset), a.lo, a.hi)
    h, w = frame.shape[:2]
    ph, pw = -(-h // ALIGN) * ALIGN - h, -(-w // ALIGN) * ALIGN - w
    x = np.pad(x, ((0, ph), (0, pw)), mode="reflect")
    if seg.contract.layout == "NHWC":
        out = seg.model.predict(x[None, :, :, None])[0]
    else:
        out = np.moveaxis(seg.model.predict(x[None, None])[0], 0, -1)
    out = out[:h, :w]
    return out[..., 0] if out.shape[-1] == 1 else out


@pytest.fixture(scope="module")
def unet_path(tmp_path_factory):
    return _unet(tmp_path_factory.mktemp("models"))


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("shape", [(137, 53), (70, 145), (64, 64)])
def test_tiled_crop_equals_whole_frame(tmp_path, layout, shape):
    path = _unet(tmp_path, layout=layout)
    frame = np.random.default_rng(0).integers(0, 65535, shape, dtype=np.uint16)
    with Segmenter(path, tile=56, batch=3) as seg:
        plan = seg.plan_for(*shape)
        assert plan.n_tiles > 1 or max(shape) <= 64
        got = seg.predict_frame(frame)
        np.testing.assert_allclose(got, _reference(seg, frame), atol=1e-4)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    h=st.integers(1, 150),
    w=st.integers(1, 150),
    tile=st.sampled_from([52, 56, 64, 72]),
    batch=st.integers(1, 4),
    dtype=st.sampled_from([np.uint8, np.uint16, np.float32]),
)
def test_tiled_crop_exact_any_size(unet_path, h, w, tile, batch, dtype):
    rng = np.random.default_rng(h * 100 + w)
    frame = (rng.random((h, w)) * (255 if dtype == np.uint8 else 4000)).astype(dtype)
    with Segmenter(unet_path, tile=tile, batch=batch) as seg:
        np.testing.assert_allclose(seg.predict_frame(frame), _reference(seg, frame), atol=1e-4)


def test_tile_too_small_for_halo_is_a_clear_error(unet_path):
    with Segmenter(unet_path, tile=ALIGN * 2) as seg, pytest.raises(ConfigError, match="halo"):
        seg.predict_frame(np.zeros((100, 100), np.uint8))


def test_batching_across_frames_is_invisible(unet_path):
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (95, 121), dtype=np.uint8) for _ in range(5)]
    with (
        Segmenter(unet_path, tile=56, batch=1) as one,
        Segmenter(unet_path, tile=56, batch=7) as many,
    ):
        singles = [one.predict_frame(f) for f in frames]
        batched = list(many.predict_frames(frames))
    assert len(batched) == len(frames)
    for a, b in zip(singles, batched, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_frames_of_different_sizes_in_one_stream(unet_path):
    frames = [np.full((30, 30), 7, np.uint8), np.full((50, 20), 9, np.uint8)]
    with Segmenter(unet_path, batch=4) as seg:
        out = list(seg.predict_frames(frames))
    assert [o.shape for o in out] == [(30, 30), (50, 20)]


def test_blend_with_pointwise_model_is_exact(tmp_path):
    path = tmp_path / "affine.onnx"
    save(affine_model(scale=2.0, offset=-1.0), path)
    frame = np.random.default_rng(2).random((77, 91)).astype(np.float32)
    spec = Normalization(method="none")
    with Segmenter(path, tile=32, halo=8, stitch="blend", normalization=spec) as seg:
        assert seg.contract.output == "logits"  # inferred from the probe outputs
        got = seg.predict_frame(frame)
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-(2 * frame - 1))), atol=1e-6)


def test_blend_close_to_crop_for_unet(unet_path):
    frame = np.random.default_rng(3).integers(0, 255, (150, 150), dtype=np.uint8)
    with Segmenter(unet_path, tile=64, stitch="blend") as blend, Segmenter(unet_path) as whole:
        diff = np.abs(blend.predict_frame(frame) - whole.predict_frame(frame))
    # Blending weighs in tile borders that lack context, so it is close, not exact.
    assert diff.mean() < 0.05


def test_softmax_classes_give_argmax_mask(tmp_path):
    halo = unet_receptive_radius(pools=POOLS, kernel=3)
    contract = ModelContract(
        alignment=ALIGN, halo=halo, output="softmax", classes=("background", "cell", "contour")
    )
    path = tmp_path / "cls.onnx"
    save(unet_model(filters=4, pools=POOLS, classes=3, output="softmax", contract=contract), path)
    frame = np.random.default_rng(4).integers(0, 255, (80, 110), dtype=np.uint8)
    with Segmenter(path, tile=56) as seg:
        probs = seg.predict_frame(frame)
        mask = seg.segment_frame(frame)
        ref = _reference(seg, frame)
    assert probs.shape == (80, 110, 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, ref, atol=1e-4)
    np.testing.assert_array_equal(mask, np.argmax(probs, axis=-1).astype(np.uint8))


def test_threshold_mask_and_postprocessing(unet_path):
    frame = np.random.default_rng(5).integers(0, 255, (48, 48), dtype=np.uint8)
    with Segmenter(unet_path, threshold=0.5) as seg:
        probs = seg.predict_frame(frame)
        mask = seg.segment_frame(frame)
    np.testing.assert_array_equal(mask, np.where(probs > 0.5, 255, 0).astype(np.uint8))
    with Segmenter(unet_path, postprocess=PostProcess(label=True)) as seg:
        labels = seg.segment_frame(frame)
    assert labels.dtype == np.uint16
    np.testing.assert_array_equal(labels > 0, mask > 0)


def test_wrong_channels_is_an_input_error(unet_path):
    with Segmenter(unet_path) as seg, pytest.raises(InputError, match=r"\(H, W\).*\(20, 20, 3\)"):
        seg.predict_frame(np.zeros((20, 20, 3), np.uint8))


def test_stack_scope_uses_fixed_statistics(unet_path, tmp_path):
    rng = np.random.default_rng(6)
    bright = rng.integers(100, 200, (32, 32), dtype=np.uint8)
    dark = (bright // 2).astype(np.uint8)
    with Segmenter(unet_path, normalization={"scope": "stack"}) as seg:
        with pytest.raises(ConfigError, match="fit_stack"):
            seg.predict_frame(dark)
        seg.fit_stack([bright])
        a = seg.predict_frame(dark)
    with Segmenter(unet_path) as per_frame:
        b = per_frame.predict_frame(dark)
    assert not np.allclose(a, b, atol=1e-3)  # the mean of the stack, not of the frame
    # Exactly: the dark frame normalized with the bright frame's mean, through an identity.
    path = tmp_path / "identity.onnx"
    save(affine_model(scale=1.0, offset=0.0), path)
    with Segmenter(path, normalization=Normalization(method="mean", scope="stack")) as ident:
        ident.fit_stack([bright])
        got = ident.predict_frame(dark)
    expected = np.clip(
        dark.astype(np.float32) * np.float32(1 / 255)
        + np.float32(0.5 - bright.mean(dtype=np.float64) / 255),
        0.0,
        1.0,
    )
    np.testing.assert_array_equal(got, expected)


def test_segment_stack_to_disk(unet_path, tmp_path):
    rng = np.random.default_rng(7)
    stack = rng.integers(0, 4000, (6, 75, 97), dtype=np.uint16)
    src = tmp_path / "video.tif"
    tifffile.imwrite(src, stack)
    with Segmenter(unet_path, tile=56, batch=2) as seg:
        summary = seg.segment(
            src, probabilities=tmp_path / "p.tif", frames=slice(1, 5), progress=False
        )
        expected = [seg.segment_frame(f) for f in stack[1:5]]
        expected_p = [seg.predict_frame(f) for f in stack[1:5]]
    assert summary.frames == 4
    assert summary.output == tmp_path / "video_mask.tif"
    masks = tifffile.imread(summary.output)
    assert masks.shape == (4, 75, 97) and masks.dtype == np.uint8
    np.testing.assert_array_equal(masks, np.stack(expected))
    np.testing.assert_allclose(tifffile.imread(tmp_path / "p.tif"), np.stack(expected_p), atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.tif", "video.tif", "video_mask.tif"]


def test_refuses_to_overwrite_input(unet_path, tmp_path):
    src = tmp_path / "video.tif"
    tifffile.imwrite(src, np.zeros((2, 16, 16), np.uint8))
    from unetrt.errors import OutputError

    with Segmenter(unet_path) as seg, pytest.raises(OutputError, match="overwrite the input"):
        seg.segment(src, src, progress=False)


def test_failed_run_leaves_no_output(unet_path, tmp_path, monkeypatch):
    src = tmp_path / "video.tif"
    tifffile.imwrite(src, np.zeros((5, 16, 16), np.uint8))
    seg = Segmenter(unet_path)
    calls = {"n": 0}
    real_run = seg.model.backend.run

    def failing_run(feeds, out=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_run(feeds, out)

    monkeypatch.setattr(seg.model.backend, "run", failing_run)
    with pytest.raises(KeyboardInterrupt):
        seg.segment(src, tmp_path / "out.tif", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video.tif"]


@pytest.mark.parametrize("dtype", [np.int16, np.uint32, np.float64])
def test_other_dtypes_normalize_as_in_training(tmp_path, dtype):
    from unetrt.normalize import normalize_frame

    path = tmp_path / "identity.onnx"
    save(affine_model(scale=1.0, offset=0.0), path)
    frame = np.random.default_rng(8).integers(0, 3000, (33, 41)).astype(dtype)
    spec = Normalization(method="mean")
    with Segmenter(path, normalization=spec) as seg:
        got = seg.predict_frame(frame)
    np.testing.assert_allclose(got, normalize_frame(frame, spec), atol=1e-6)


def test_several_sigmoid_channels_mask_is_one_plus_channel(tmp_path):
    path = tmp_path / "identity2.onnx"
    save(affine_model(scale=1.0, offset=0.0, channels=2), path)
    frame = np.zeros((4, 4, 2), np.float32)
    frame[0, 0] = (0.9, 0.1)
    frame[0, 1] = (0.2, 0.7)
    frame[0, 2] = (0.05, 0.1)
    spec = Normalization(method="none")
    with Segmenter(path, normalization=spec) as seg:
        assert seg.contract.output == "sigmoid"
        mask = seg.segment_frame(frame)
    assert mask[0, :3].tolist() == [1, 2, 0]


def test_fixed_batch_model_pads_partial_batches(tmp_path):
    model = affine_model(scale=3.0, offset=0.0)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    path = tmp_path / "batch4.onnx"
    save(model, path)
    frames = [np.full((20, 20), float(i), np.float32) for i in range(5)]
    spec = Normalization(method="none")
    with Segmenter(path, normalization=spec) as seg:
        assert seg.batch == 4
        out = list(seg.predict_frames(frames))
    # values beyond [0, 1] make the probe infer logits, so the engine applies a sigmoid
    expected = 1 / (1 + np.exp(-3.0 * np.arange(5)))
    np.testing.assert_allclose([o[0, 0] for o in out], expected, rtol=1e-6)
    with pytest.raises(ConfigError, match="exactly 4"):
        Segmenter(path, batch=3)
