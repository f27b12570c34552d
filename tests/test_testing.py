from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import reference as ref

from unetrt import testing
from unetrt.contract import ModelContract, StateSpec
from unetrt.errors import ConfigError


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("pools", [1, 2, 3])
def test_unet_radius_formula_matches_impulses_at_every_position(pools: int) -> None:
    # Exhaustive oracle for the formula: one impulse per position modulo 2**pools.
    session = _session(testing.unet_model(filters=4, pools=pools, layout="NCHW", seed=2))
    size, a = 160, 2**pools
    rng = np.random.default_rng(0)
    image = rng.random((1, 1, size, size), dtype=np.float32)
    base = session.run(None, {"image": image})[0][0, 0]
    radius = 0
    for d in range(a):
        c = size // 2 // a * a + d
        hit = image.copy()
        hit[0, 0, c, c] += 100.0
        rows, cols = np.nonzero(session.run(None, {"image": hit})[0][0, 0] != base)
        radius = max(radius, c - rows.min(), rows.max() - c, c - cols.min(), cols.max() - c)
    assert radius == testing.unet_receptive_radius(pools)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize(("classes", "output"), [(1, "sigmoid"), (3, "softmax"), (2, "logits")])
def test_unet_shapes_and_activations(layout: str, classes: int, output: str) -> None:
    model = testing.unet_model(filters=4, pools=2, classes=classes, layout=layout, output=output)
    x = np.random.default_rng(0).random((2, 32, 48, 1), dtype=np.float32)
    if layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    y = _session(model).run(None, {"image": x})[0]
    axis = 3 if layout == "NHWC" else 1
    assert y.shape == (*x.shape[:axis], classes, *x.shape[axis + 1 :])
    assert y.std() > 1e-3  # He initialisation keeps the activations alive
    if output == "softmax":
        np.testing.assert_allclose(y.sum(axis=axis), 1.0, atol=1e-5)
    if output == "sigmoid":
        assert y.min() > 0.0 and y.max() < 1.0


def test_layouts_compute_the_same_network() -> None:
    x = np.random.default_rng(0).random((1, 16, 16, 2), dtype=np.float32)
    nhwc = _session(testing.unet_model(filters=4, pools=2, channels_in=2, layout="NHWC"))
    nchw = _session(testing.unet_model(filters=4, pools=2, channels_in=2, layout="NCHW"))
    y1 = nhwc.run(None, {"image": x})[0]
    y2 = nchw.run(None, {"image": x.transpose(0, 3, 1, 2)})[0]
    np.testing.assert_allclose(y1, y2.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-6)


def test_conv_stack_and_affine() -> None:
    model = testing.conv_stack_model((3, 5), (2, 1), channels=2, filters=3, layout="NCHW")
    x = np.zeros((1, 2, 20, 20), np.float32)
    assert _session(model).run(None, {"image": x})[0].shape == (1, 1, 20, 20)
    assert testing.conv_stack_radius((3, 5), (2, 1)) == 4
    y = _session(testing.affine_model(3.0, 1.0)).run(
        None, {"image": np.ones((1, 2, 2, 1), np.float32)}
    )
    np.testing.assert_array_equal(y[0], np.full((1, 2, 2, 1), 4.0, np.float32))


def test_contract_goes_into_metadata(tmp_path: Path) -> None:
    contract = ModelContract(alignment=4, halo=24)
    path = tmp_path / "unet.onnx"
    testing.save(testing.unet_model(filters=2, pools=2, contract=contract), path)
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert ModelContract.from_json(props["unetrt"]) == contract


def test_weights_depend_on_the_seed() -> None:
    a = testing.unet_model(filters=2, pools=1, seed=0).SerializeToString()
    assert a == testing.unet_model(filters=2, pools=1, seed=0).SerializeToString()
    assert a != testing.unet_model(filters=2, pools=1, seed=1).SerializeToString()


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="upsampling must be"):
        testing.unet_model(upsampling="bilinear")
    with pytest.raises(ConfigError, match="output must be"):
        testing.unet_model(output="relu")
    with pytest.raises(ConfigError, match="kernel must be odd, got 4"):
        testing.unet_model(kernel=4)
    with pytest.raises(ConfigError, match="pools must be at least 1, got 0"):
        testing.unet_model(pools=0)
    with pytest.raises(ConfigError, match="layout must be"):
        testing.unet_model(layout="HWC")
    with pytest.raises(ConfigError, match="one dilation per kernel"):
        testing.conv_stack_model((3, 3), (1,))
    with pytest.raises(ConfigError, match="kernel sizes must be odd"):
        testing.conv_stack_model((2,))
    with pytest.raises(ConfigError, match="kernel must be odd, got 2"):
        testing.convlstm_step_model(kernel=2)
    with pytest.raises(ConfigError, match="filters must be at least 1, got 0"):
        testing.convlstm_step_model(filters=0)
    with pytest.raises(ConfigError, match="kernel must be odd, got 4"):
        testing.convlstm_step_radius(4)


# --- The ConvLSTM step model. ---


class _Step:
    """Runs one step of a step model in onnxruntime on (H, W) frames and HWC states."""

    def __init__(self, model: onnx.ModelProto, layout: str) -> None:
        self.session = _session(model)
        self.layout = layout

    def __call__(
        self, frame: np.ndarray, h: np.ndarray, c: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Batched: frame (N, H, W), states (N, H/2, W/2, F); returns the same forms."""

        def to_model(x: np.ndarray) -> np.ndarray:
            x = np.asarray(x, np.float32)
            return x if self.layout == "NHWC" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))

        def from_model(x: np.ndarray) -> np.ndarray:
            return x if self.layout == "NHWC" else x.transpose(0, 2, 3, 1)

        feeds = {"frame": to_model(frame[..., None]), "h": to_model(h), "c": to_model(c)}
        mask, h_out, c_out = (from_model(y) for y in self.session.run(None, feeds))
        return mask[..., 0], h_out, c_out


def _video(steps: int, height: int = 32, width: int = 48, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((height, width)).astype(np.float32) for _ in range(steps)]


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_convlstm_step_matches_the_numpy_reference(layout: str) -> None:
    model = testing.convlstm_step_model(filters=4, layout=layout, seed=3)
    step = _Step(model, layout)
    h = c = np.zeros((1, 16, 24, 4), np.float32)
    h_ref = c_ref = np.zeros((16, 24, 4))
    for frame in _video(5):
        mask, h, c = step(frame[None], h, c)
        mask_ref, h_ref, c_ref = ref.convlstm_step_reference(model, frame, h_ref, c_ref)
        assert mask.shape == (1, 32, 48) and h.shape == c.shape == (1, 16, 24, 4)
        np.testing.assert_allclose(mask[0], mask_ref, rtol=0, atol=1e-5)
        np.testing.assert_allclose(h[0], h_ref, rtol=0, atol=1e-5)
        np.testing.assert_allclose(c[0], c_ref, rtol=0, atol=1e-5)
    # Alive: neither saturated nor vanishing, the mask on both sides of 1/2.
    assert h.std() > 0.05 and np.abs(h).max() < 0.99 and c.std() > 0.05
    assert mask.std() > 0.05 and mask.min() < 0.5 < mask.max()


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_convlstm_step_graph_has_no_loop_and_the_contract_names_its_tensors(
    layout: str, tmp_path: Path
) -> None:
    contract = testing.convlstm_step_contract(filters=3, layout=layout)
    model = testing.convlstm_step_model(filters=3, layout=layout, contract=contract)
    assert not {n.op_type for n in model.graph.node} & {"Loop", "Scan", "If"}
    assert [i.name for i in model.graph.input] == ["frame", "h", "c"]
    assert [o.name for o in model.graph.output] == ["mask", "h_out", "c_out"]

    def shape(value: onnx.ValueInfoProto) -> list[object]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    half = ["N", "H/2", "W/2", 3] if layout == "NHWC" else ["N", 3, "H/2", "W/2"]
    full = ["N", "H", "W", 1] if layout == "NHWC" else ["N", 1, "H", "W"]
    assert [shape(v) for v in model.graph.input] == [full, half, half]
    assert [shape(v) for v in model.graph.output] == [full, half, half]
    assert contract == ModelContract(
        channels=1,
        layout=layout,
        alignment=2,
        halo=6,
        output="sigmoid",
        temporal="stateful",
        time_steps=3,
        states=(StateSpec("h", "h_out", 3, 2), StateSpec("c", "c_out", 3, 2)),
    )
    testing.save(model, tmp_path / "step.onnx")
    props = {p.key: p.value for p in onnx.load(tmp_path / "step.onnx").metadata_props}
    assert ModelContract.from_json(props["unetrt"]) == contract
    assert testing.convlstm_step_model(filters=3, layout=layout).metadata_props == []
    a = testing.convlstm_step_model(seed=0).SerializeToString()
    assert a == testing.convlstm_step_model(seed=0).SerializeToString()
    assert a != testing.convlstm_step_model(seed=1).SerializeToString()


def _reach(changed: np.ndarray, center: int) -> int:
    """Largest distance from state pixel ``center`` to a changed state pixel (per axis)."""
    rows, cols = np.nonzero(changed)
    return int(max(np.abs(rows - center).max(), np.abs(cols - center).max()))


def test_convlstm_state_spreads_one_state_pixel_per_step() -> None:
    # A 3x3 gate convolution over h: one state pixel of reach per step, no more.
    model = testing.convlstm_step_model(kernel=3, layout="NCHW", seed=0)
    step = _Step(model, "NCHW")
    frames = _video(3, 64, 64)
    h0 = np.zeros((1, 32, 32, 4), np.float32)
    hit = h0.copy()
    hit[0, 16, 16, :] = 0.5
    h_a, c_a, h_b, c_b = h0, h0, hit, h0
    for t, frame in enumerate(frames, start=1):
        _, h_a, c_a = step(frame[None], h_a, c_a)
        _, h_b, c_b = step(frame[None], h_b, c_b)
        assert _reach((h_a != h_b)[0].any(axis=-1), 16) == t
        assert _reach((c_a != c_b)[0].any(axis=-1), 16) == t


def test_convlstm_state_carries_the_past() -> None:
    # The mask of frame 2 depends on frame 0 through the state (and not only nearby).
    model = testing.convlstm_step_model(layout="NHWC", seed=0)
    frames = _video(3)
    other = [frames[0] + 1.0, *frames[1:]]
    a, b = ref.run_video_reference(model, frames)[2], ref.run_video_reference(model, other)[2]
    assert np.abs(a - b).max() > 1e-3


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_convlstm_step_radius_is_exact(kernel: int) -> None:
    # Impulses into each input at both parities; the reach, in frame pixels, into each
    # output (a state pixel counts as the two frame pixels it covers). Expected per path,
    # with r = (kernel - 1) / 2, from the derivation in `convlstm_step_radius`.
    r = (kernel - 1) // 2
    expected = {
        ("frame", "mask"): 4 * r + 1,
        ("frame", "h_out"): 3 * r + 1,
        ("frame", "c_out"): 3 * r + 1,
        ("h", "mask"): 3 * r + 1,
        ("h", "h_out"): 2 * r + 1,
        ("h", "c_out"): 2 * r + 1,
        ("c", "mask"): r + 1,
        ("c", "h_out"): 1,
        ("c", "c_out"): 1,
    }
    session = _session(testing.convlstm_step_model(kernel=kernel, layout="NCHW", seed=2))
    size, f = 64, 4
    rng = np.random.default_rng(0)
    base = {
        "frame": rng.standard_normal((1, 1, size, size)).astype(np.float32),
        "h": (0.3 * rng.standard_normal((1, f, size // 2, size // 2))).astype(np.float32),
        "c": rng.standard_normal((1, f, size // 2, size // 2)).astype(np.float32),
    }
    before = session.run(None, base)
    reach: dict[tuple[str, str], int] = {}
    for name in ("frame", "h", "c"):
        for pos in [size // 2, size // 2 + 1] if name == "frame" else [size // 4]:
            feeds = {k: v.copy() for k, v in base.items()}
            feeds[name][0, :, pos, pos] += 5.0
            lo, hi = (pos, pos) if name == "frame" else (2 * pos, 2 * pos + 1)
            after = session.run(None, feeds)
            for out, y0, y1 in zip(("mask", "h_out", "c_out"), before, after, strict=True):
                for idx in np.nonzero((y0 != y1)[0].any(axis=0)):
                    frame_px = idx if out == "mask" else np.concatenate([2 * idx, 2 * idx + 1])
                    d = max(hi - frame_px.min(), frame_px.max() - lo)
                    reach[name, out] = max(reach.get((name, out), 0), int(d))
    assert reach == expected
    assert max(reach.values()) == testing.convlstm_step_radius(kernel) == 4 * r + 1
    assert testing.convlstm_step_contract(kernel=kernel).halo == 4 * r + 2


def test_video_and_window_references() -> None:
    model = testing.convlstm_step_model(layout="NHWC", seed=0)
    frames = _video(6, 16, 16)
    stream = ref.run_video_reference(model, frames)
    assert len(stream) == 6
    # Resets every 3 frames: two independent clips.
    reset = ref.run_video_reference(model, frames, reset_every=3)
    np.testing.assert_array_equal(reset[3:], ref.run_video_reference(model, frames[3:]))
    np.testing.assert_array_equal(reset[:3], stream[:3])
    assert np.abs(reset[4] - stream[4]).max() > 1e-6
    for t in range(6):
        window = ref.window_reference(model, frames, t, 3)
        clip = [frames[0]] * max(2 - t, 0) + frames[max(t - 2, 0) : t + 1]
        np.testing.assert_array_equal(window, ref.run_video_reference(model, clip)[-1])
    one = ref.window_reference(model, frames, 4, 1)
    np.testing.assert_array_equal(one, ref.run_video_reference(model, frames[4:5])[0])


def test_window_mode_in_one_batch_matches_the_reference() -> None:
    # Window mode as an engine would run it: all clips of a video in one batch, T steps.
    model = testing.convlstm_step_model(layout="NHWC", seed=4)
    step, frames, steps = _Step(model, "NHWC"), _video(5), 3
    clips = np.stack([[frames[max(t - steps + 1 + k, 0)] for k in range(steps)] for t in range(5)])
    h = c = np.zeros((5, 16, 24, 4), np.float32)
    for k in range(steps):
        mask, h, c = step(clips[:, k], h, c)
    for t in range(5):
        np.testing.assert_allclose(
            mask[t], ref.window_reference(model, frames, t, steps), rtol=0, atol=1e-5
        )
