"""From model output to masks: the C++ mask kernels, activation and the whole rule."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, softmax

from unetrt import masks
from unetrt.contract import ModelContract
from unetrt.postprocess import PostProcess

# ---------------------------------------------------------------- kernels


def test_threshold_mask() -> None:
    prob = np.random.default_rng(0).random((300, 200), np.float32)
    prob[0, :3] = [0.5, np.nan, np.nextafter(np.float32(0.5), np.float32(1))]
    mask = masks.threshold_mask(prob, 0.5)
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, np.where(prob > 0.5, 255, 0))
    np.testing.assert_array_equal(mask[0, :3], [0, 0, 255])


@pytest.mark.parametrize("classes", [1, 2, 5])
def test_argmax_mask(classes: int) -> None:
    # Coarse values make ties, which must go to the first class as in numpy.
    prob = np.random.default_rng(0).integers(0, 4, (120, 70, classes)).astype(np.float32)
    mask = masks.argmax_mask(prob, threads=2)
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, np.argmax(prob, axis=-1))


def test_masks_into_caller_buffers() -> None:
    prob = np.random.default_rng(0).random((50, 40, 3), np.float32)
    out = np.empty((50, 40), np.uint8)
    assert masks.argmax_mask(prob, out=out) is out
    assert masks.threshold_mask(prob[..., 0], 0.3, out=out) is out
    with pytest.raises(ValueError, match="out must be a uint8 array"):
        masks.threshold_mask(prob, 0.3, out=out)
    with pytest.raises(ValueError, match="1 to 256 classes"):
        masks.argmax_mask(np.zeros((4, 4, 300), np.float32))


# ---------------------------------------------------------------- activation and rule


def test_activate_only_touches_logits() -> None:
    x = np.random.default_rng(1).normal(size=(2, 5, 6, 3)).astype(np.float32)
    assert masks.activate(x, "sigmoid", 3) is x
    assert masks.activate(x, "softmax", 3) is x
    np.testing.assert_allclose(masks.activate(x, "logits", 3), softmax(x, axis=3), rtol=1e-6)
    one = x[..., :1]
    np.testing.assert_allclose(masks.activate(one, "logits", 3), expit(one), rtol=1e-6)
    nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(masks.activate(nchw, "logits", 1), softmax(nchw, axis=1), rtol=1e-6)


def test_to_mask_rules() -> None:
    prob = np.array([[0.2, 0.6], [0.7, 0.5]], np.float32)
    contract = ModelContract(threshold=0.55)
    np.testing.assert_array_equal(masks.to_mask(prob, contract), [[0, 255], [255, 0]])
    classes = np.zeros((1, 3, 3), np.float32)
    classes[0, 0] = (0.7, 0.2, 0.1)
    classes[0, 1] = (0.1, 0.3, 0.6)
    classes[0, 2] = (0.2, 0.2, 0.1)
    softmax_contract = ModelContract(output="softmax", classes=("bg", "a", "b"))
    assert masks.to_mask(classes, softmax_contract).tolist() == [[0, 2, 0]]
    # Independent sigmoid channels: 1 + channel where the best one passes the threshold.
    sigmoid_contract = ModelContract(output="sigmoid", classes=("bg", "a", "b", "c"))
    assert masks.to_mask(classes, sigmoid_contract).tolist() == [[1, 3, 0]]
    labels = masks.to_mask(prob, contract, PostProcess(label=True))
    assert labels.dtype == np.uint16 and labels.tolist() == [[0, 1], [1, 0]]
