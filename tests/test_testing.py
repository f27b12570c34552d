from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from unetrt import testing
from unetrt.contract import ModelContract
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
