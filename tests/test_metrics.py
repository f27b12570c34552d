"""NumPy metrics on hand-made arrays; the Keras metrics against them."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from unetrt import metrics
from unetrt.errors import InputError

# A 4x4 mask pair: truth has 4 foreground pixels, prediction 3, 2 of them shared.
TRUE = np.array(
    [
        [0, 1, 1, 0],
        [0, 1, 1, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ]
)
PRED = np.array(
    [
        [0, 1, 0, 0],
        [0, 1, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 1],
    ]
)


def test_binary_metrics_by_hand() -> None:
    assert metrics.dice(PRED, TRUE) == 2 * 2 / (3 + 4)
    assert metrics.iou(PRED, TRUE) == 2 / 5
    assert metrics.pixel_difference(PRED, TRUE) == 100 * 3 / 16
    assert metrics.accuracy(PRED, TRUE) == 13 / 16


def test_probability_difference_is_the_seeds_mean_absolute_error() -> None:
    # |truth - p| over 4 pixels: truth (instance label 5 counts as 1) 1, 1, 0, 0.
    probability = np.array([[0.75, 1.0], [0.5, 0.0]], np.float32)
    truth = np.array([[5, 1], [0, 0]])
    assert metrics.probability_difference(probability, truth) == 100 * (0.25 + 0 + 0.5 + 0) / 4
    # On a binary prediction it is the binary pixel difference.
    assert metrics.probability_difference(PRED.astype(np.float32), TRUE) == 100 * 3 / 16
    with pytest.raises(InputError):
        metrics.probability_difference(probability, truth[:1])


def test_binary_foreground_is_any_positive_value() -> None:
    instances = TRUE * np.array([[1, 2, 3, 4]])  # instance labels 2 and 3
    assert metrics.dice(PRED.astype(bool), instances) == 4 / 7
    assert metrics.iou(PRED * 7, instances) == 2 / 5


def test_empty_versus_empty_is_perfect() -> None:
    empty = np.zeros((3, 3), np.uint8)
    assert metrics.dice(empty, empty) == 1.0
    assert metrics.iou(empty, empty) == 1.0
    assert metrics.pixel_difference(empty, empty) == 0.0
    assert metrics.accuracy(empty, empty) == 1.0
    full = np.ones_like(empty)
    assert metrics.dice(empty, full) == 0.0
    assert metrics.iou(full, empty) == 0.0
    assert metrics.pixel_difference(full, empty) == 100.0


def test_multiclass_metrics_skip_background_and_average_classes() -> None:
    true = np.array([[0, 1, 1], [2, 2, 0]])
    pred = np.array([[0, 1, 2], [2, 2, 2]])
    # class 1: P={(0,1)}, T={(0,1),(0,2)}: dice 2/3, iou 1/2
    # class 2: P={(0,2),(1,0),(1,1),(1,2)}, T={(1,0),(1,1)}: dice 4/6, iou 2/4
    assert metrics.dice(pred, true, classes=3) == pytest.approx((2 / 3 + 4 / 6) / 2)
    assert metrics.iou(pred, true, classes=3) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert metrics.accuracy(pred, true, classes=3) == 4 / 6
    # class 3 absent from both counts as 1.0
    assert metrics.iou(pred, true, classes=4) == pytest.approx((1 / 2 + 2 / 4 + 1) / 3)


def test_metric_errors_name_the_problem() -> None:
    with pytest.raises(InputError, match=r"\(4, 4\) and \(2, 2\)"):
        metrics.dice(PRED, np.zeros((2, 2)))
    with pytest.raises(InputError, match="0..2"):
        metrics.iou(PRED * 3, TRUE, classes=3)
    with pytest.raises(InputError, match="classes"):
        metrics.dice(PRED, TRUE, classes=1)
    with pytest.raises(InputError, match="shape"):
        metrics.pixel_difference(PRED, TRUE[:2])


# ---- Keras metrics against the NumPy ones ----


@pytest.fixture(scope="module")
def keras_metrics():
    pytest.importorskip("keras")
    from unetrt.train import metrics as train_metrics

    return train_metrics


def as_float(x) -> float:
    import keras

    return float(keras.ops.convert_to_numpy(x))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_keras_binary_metrics_match_numpy(keras_metrics, seed: int) -> None:
    rng = np.random.default_rng(seed)
    true = (rng.random((2, 16, 16, 1)) > 0.6).astype(np.float32)
    prob = rng.random((2, 16, 16, 1)).astype(np.float32)
    weights = rng.random((2, 16, 16, 1)).astype(np.float32)
    y_true = np.concatenate([true, weights], axis=-1)  # a weight map channel is ignored
    pred = prob > 0.5
    assert as_float(keras_metrics.dice_coefficient(y_true, prob)) == pytest.approx(
        metrics.dice(pred, true), rel=1e-6
    )
    assert as_float(keras_metrics.jaccard(true, prob)) == pytest.approx(
        metrics.iou(pred, true), rel=1e-6
    )


@pytest.mark.parametrize("sparse", [False, True])
def test_keras_multiclass_metrics_match_numpy(keras_metrics, sparse: bool) -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, (2, 16, 16))
    prob = rng.dirichlet(np.ones(3), (2, 16, 16)).astype(np.float32)
    y_true = labels[..., None].astype(np.float32) if sparse else np.eye(3)[labels]
    pred = prob.argmax(-1)
    assert as_float(keras_metrics.dice_coefficient(y_true, prob)) == pytest.approx(
        metrics.dice(pred, labels, classes=3), rel=1e-6
    )
    assert as_float(keras_metrics.jaccard(y_true, prob)) == pytest.approx(
        metrics.iou(pred, labels, classes=3), rel=1e-6
    )


def test_keras_metrics_empty_versus_empty(keras_metrics) -> None:
    zeros = np.zeros((1, 8, 8, 1), np.float32)
    assert as_float(keras_metrics.dice_coefficient(zeros, zeros)) == 1.0
    assert as_float(keras_metrics.jaccard(zeros, zeros + 0.2)) == 1.0
    assert as_float(keras_metrics.jaccard(zeros, zeros + 0.9)) == 0.0


def test_keras_metrics_in_compile(keras_metrics) -> None:
    import keras

    from unetrt.train.losses import get_loss
    from unetrt.train.models import UNetConfig, build_unet

    model = build_unet(UNetConfig(pools=1, filters=2))
    model.compile(
        loss=get_loss("bce"), metrics=[keras_metrics.dice_coefficient, keras_metrics.jaccard]
    )
    rng = np.random.default_rng(0)
    x = rng.random((2, 8, 8, 1), "float32")
    y = (rng.random((2, 8, 8, 1)) > 0.5).astype("float32")
    result = model.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)
    pred = keras.ops.convert_to_numpy(model(x)) > 0.5
    assert result["jaccard"] == pytest.approx(metrics.iou(pred, y), rel=1e-5)
    assert result["dice_coefficient"] == pytest.approx(metrics.dice(pred, y), rel=1e-5)
