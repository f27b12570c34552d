"""Losses against NumPy reference formulas; the U-Net border weight map by hand."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from scipy import ndimage

keras = pytest.importorskip("keras")

from unetrt.errors import ConfigError  # noqa: E402
from unetrt.train.losses import (  # noqa: E402
    EPSILON,
    LOSS_NAMES,
    SegmentationLoss,
    get_loss,
    unet_border_weights,
)

RTOL = 1e-5


# ---- NumPy references (float64 after a float32 clip, as the model computes it) ----


def np_clip(p: np.ndarray) -> np.ndarray:
    lo, hi = np.float32(EPSILON), np.float32(1) - np.float32(EPSILON)
    return np.clip(p.astype(np.float32), lo, hi).astype(np.float64)


def np_pixel_bce(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np_clip(p)
    return -(t * np.log(p) + (1 - t) * np.log(1 - p))


def np_dice_loss(t: np.ndarray, p: np.ndarray, smooth: float = 1.0) -> float:
    return 1 - (2 * np.sum(t * p) + smooth) / (t.sum() + p.sum() + smooth)


def np_seed_border_weights(mask: np.ndarray, size: int = 11, extra: float = 2.0) -> np.ndarray:
    """Mean over the window with padding excluded (as TensorFlow's 'same' average pool)."""
    box = np.ones((1, size, size, 1))
    total = ndimage.convolve(mask.astype(np.float64), box, mode="constant")
    count = ndimage.convolve(np.ones_like(mask, np.float64), box, mode="constant")
    mean = total / count
    w = 1 + extra * ((mean > 0.005) & (mean < 0.995))
    return w * w.size / w.sum()


def np_weighted(t: np.ndarray, p: np.ndarray, w: np.ndarray, dice: bool) -> float:
    w = w * w.size / w.sum()
    value = np.sum(w * np_pixel_bce(t, p)) / w.sum()
    if dice:
        value += 1 - (2 * np.sum(w * t * p) + 1) / (np.sum(w * t) + np.sum(w * p) + 1)
    return float(value)


def np_cce(onehot: np.ndarray, p: np.ndarray, class_weights=None) -> float:
    w = np.ones(p.shape[-1]) if class_weights is None else np.asarray(class_weights)
    logp = np.log(np_clip(p))
    return float(np.mean(-np.sum(onehot * w * logp, axis=-1)))


# ---- data ----


@pytest.fixture
def binary() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.zeros((2, 32, 32, 1), np.float32)
    t[0, 5:20, 8:25] = 1
    t[1, 10:30, 2:12] = 1
    p = rng.random(t.shape).astype(np.float32)
    p[0, 0, 0, 0] = 0.0  # exercise the clipping
    p[1, 0, 0, 0] = 1.0
    return t, p


@pytest.fixture
def categorical() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, (2, 16, 16, 1))
    logits = rng.normal(size=(2, 16, 16, 3))
    p = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    onehot = np.eye(3, dtype=np.float32)[labels[..., 0]]
    return labels.astype(np.float32), onehot, p


def value(loss, y_true, y_pred) -> float:
    return float(keras.ops.convert_to_numpy(loss(y_true, y_pred)))


# ---- binary losses ----


def test_bce_and_dice(binary) -> None:
    t, p = binary
    for name in ("bce", "binary_crossentropy"):
        assert value(get_loss(name), t, p) == pytest.approx(np_pixel_bce(t, p).mean(), rel=RTOL)
    assert value(get_loss("dice"), t, p) == pytest.approx(np_dice_loss(t, p), rel=RTOL)
    assert value(get_loss("dice", smooth=1e-3), t, p) == pytest.approx(
        np_dice_loss(t, p, 1e-3), rel=RTOL
    )
    expected = np_pixel_bce(t, p).mean() + np_dice_loss(t, p)
    assert value(get_loss("bce_dice"), t, p) == pytest.approx(expected, rel=RTOL)


def test_bce_matches_keras(binary) -> None:
    t, p = binary
    reference = keras.losses.BinaryCrossentropy()(t, p)
    assert value(get_loss("bce"), t, p) == pytest.approx(float(reference), rel=1e-4)


def test_dice_is_zero_for_a_perfect_and_empty_prediction(binary) -> None:
    t, _ = binary
    assert value(get_loss("dice"), t, t) == pytest.approx(0.0, abs=1e-6)
    empty = np.zeros_like(t)
    assert value(get_loss("dice"), empty, empty) == pytest.approx(0.0, abs=1e-6)


def test_weighted_losses_with_a_weight_map_channel(binary) -> None:
    t, p = binary
    w = np.random.default_rng(2).uniform(0.5, 5.0, t.shape).astype(np.float32)
    y_true = np.concatenate([t, w], axis=-1)
    assert value(get_loss("weighted_bce"), y_true, p) == pytest.approx(
        np_weighted(t, p, w, dice=False), rel=RTOL
    )
    assert value(get_loss("weighted_bce_dice"), y_true, p) == pytest.approx(
        np_weighted(t, p, w, dice=True), rel=RTOL
    )


def test_weighted_losses_default_to_the_seed_border_weights(binary) -> None:
    t, p = binary
    w = np_seed_border_weights(t)
    assert value(get_loss("weighted_bce"), t, p) == pytest.approx(
        np_weighted(t, p, w, dice=False), rel=RTOL
    )
    assert value(get_loss("weighted_bce_dice"), t, p) == pytest.approx(
        np_weighted(t, p, w, dice=True), rel=RTOL
    )
    w5 = np_seed_border_weights(t, size=5, extra=4.0)
    loss = get_loss("weighted_bce_dice", border_size=5, border_weight=4.0)
    assert value(loss, t, p) == pytest.approx(np_weighted(t, p, w5, dice=True), rel=RTOL)


def test_weights_reach_background_border_pixels(binary) -> None:
    """The seed's pos_weight formula ignored the weight of background pixels; ours does not."""
    t, _ = binary
    p = np.full_like(t, 0.9)  # right on the foreground, wrong on the background
    w = np.where(t == 0, 5.0, 1.0).astype(np.float32)
    y_true = np.concatenate([t, w], axis=-1)
    bg, fg = -np.log(0.1), -np.log(0.9)
    n_bg, n_fg = np.sum(t == 0), np.sum(t == 1)
    expected = (5 * n_bg * bg + n_fg * fg) / (5 * n_bg + n_fg)
    assert value(get_loss("weighted_bce"), y_true, p) == pytest.approx(expected, rel=RTOL)
    assert expected > value(get_loss("bce"), t, p) * 1.05


def test_weighted_loss_rejects_extra_channels(binary) -> None:
    t, p = binary
    with pytest.raises(ConfigError, match="1 channel"):
        get_loss("weighted_bce")(np.concatenate([t, t, t], -1), p)


# ---- categorical losses ----


def test_categorical_crossentropy(categorical) -> None:
    labels, onehot, p = categorical
    for name in ("categorical_crossentropy", "cce"):
        assert value(get_loss(name), onehot, p) == pytest.approx(np_cce(onehot, p), rel=RTOL)
    weighted = get_loss("cce", class_weights=[0.5, 1.0, 4.0])
    expected = np_cce(onehot, p, [0.5, 1.0, 4.0])
    assert value(weighted, onehot, p) == pytest.approx(expected, rel=RTOL)


def test_sparse_categorical_crossentropy(categorical) -> None:
    labels, onehot, p = categorical
    for name in ("sparse_categorical_crossentropy", "sparse_cce", "sparse_cross_entropy"):
        assert value(get_loss(name), labels, p) == pytest.approx(np_cce(onehot, p), rel=RTOL)
    reference = float(keras.losses.SparseCategoricalCrossentropy()(labels, p))
    assert value(get_loss("sparse_cce"), labels, p) == pytest.approx(reference, rel=1e-4)
    weighted = get_loss("sparse_cce", class_weights=[1.0, 2.0, 3.0])
    expected = np_cce(onehot, p, [1.0, 2.0, 3.0])
    assert value(weighted, labels, p) == pytest.approx(expected, rel=RTOL)


# ---- two heads and the registry ----


def test_two_head_losses_are_weighted_per_head(binary) -> None:
    t, p = binary
    heads = get_loss(
        "multiple_output", mask="bce", target="dice", weights=(1.0, 1000.0)
    )  # the seed's category_weights [1, 1000]
    assert set(heads) == {"mask", "target"}
    assert value(heads["mask"], t, p) == pytest.approx(np_pixel_bce(t, p).mean(), rel=RTOL)
    assert value(heads["target"], t, p) == pytest.approx(1000 * np_dice_loss(t, p), rel=RTOL)


def test_two_head_losses_train_a_two_head_model(binary) -> None:
    from unetrt.train.models import UNetConfig, build_unet

    t, _ = binary
    model = build_unet(UNetConfig(pools=2, filters=2, output="two_heads"))
    model.compile(optimizer="adam", loss=get_loss("two_heads", weights=(1.0, 2.0)))
    x = np.random.default_rng(0).random(t.shape, "float32")
    result = model.evaluate(x, {"mask": t, "target": 1 - t}, verbose=0, return_dict=True)
    mask, target = (keras.ops.convert_to_numpy(y) for y in model(x))
    expected = np_pixel_bce(t, mask).mean() + 2 * np_pixel_bce(1 - t, target).mean()
    assert result["loss"] == pytest.approx(expected, rel=1e-4)


def test_losses_serialize() -> None:
    loss = get_loss("weighted_bce_dice", border_weight=3.0)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, SegmentationLoss)
    assert (again.loss, again.params, again.weight) == (
        "weighted_bce_dice",
        {"border_weight": 3.0},
        1.0,
    )


def test_unknown_names_and_parameters() -> None:
    with pytest.raises(ConfigError, match="weighted_bce_dice") as info:
        get_loss("focal")
    assert "focal" in str(info.value)
    with pytest.raises(ConfigError, match="smooth"):
        get_loss("bce", smooth=1.0)
    with pytest.raises(ConfigError, match="single-output"):
        get_loss("two_heads", mask="two_heads")
    assert {"bce", "sparse_cce", "multiple_output", "weighted_bce_dice"} <= set(LOSS_NAMES)


# ---- U-Net border weights ----


def test_unet_border_weights_by_hand() -> None:
    # Two 3x3 objects on a 9x13 frame, 3 background columns apart.
    labels = np.zeros((9, 13), np.int32)
    labels[3:6, 2:5] = 1
    labels[3:6, 8:11] = 2
    w = unet_border_weights(labels, w0=10, sigma=5, class_balance=False)
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w[labels > 0], 1.0)  # no separation term inside objects
    # (4, 6): the middle of the gap, 2 pixels from each object.
    assert w[4, 6] == pytest.approx(1 + 10 * np.exp(-((2 + 2) ** 2) / 50), rel=1e-6)
    # (4, 5): next to object 1 (1 pixel) and 3 pixels from object 2.
    assert w[4, 5] == pytest.approx(1 + 10 * np.exp(-((1 + 3) ** 2) / 50), rel=1e-6)
    # (0, 0): corner; distances sqrt(3**2 + 2**2) and sqrt(3**2 + 8**2).
    d1, d2 = np.hypot(3, 2), np.hypot(3, 8)
    assert w[0, 0] == pytest.approx(1 + 10 * np.exp(-((d1 + d2) ** 2) / 50), rel=1e-6)


def test_unet_border_weights_class_balance() -> None:
    labels = np.zeros((8, 8), np.int32)
    labels[:2, :] = 1  # 16 foreground pixels, 48 background, one object
    w = unet_border_weights(labels, class_balance=True)
    np.testing.assert_allclose(w[labels > 0], 64 / 32)
    np.testing.assert_allclose(w[labels == 0], 64 / 96)
    assert w.sum() == pytest.approx(64)
    np.testing.assert_array_equal(unet_border_weights(np.zeros((4, 4), int)), 1.0)


def test_unet_border_weights_needs_2d() -> None:
    with pytest.raises(ConfigError, match=r"\(2, 4, 4\)"):
        unet_border_weights(np.zeros((2, 4, 4), int))
