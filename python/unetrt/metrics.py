"""Segmentation metrics in NumPy: Dice, IoU (Jaccard), pixel difference, accuracy.

Inputs are masks or label maps of the same shape (threshold probabilities first).
Binary metrics (``classes=None``) compare foregrounds: every pixel ``> 0`` (so instance
label maps work as masks). Multi-class metrics (``classes=K``) take label maps with
values in ``0 .. K-1`` and average over the classes ``1 .. K-1``, background skipped.
A class empty in both prediction and truth scores 1.0: nothing to find, nothing found.
Scores are computed over the whole array, so a stack of frames counts as one volume.

These are the numbers ``unetrt evaluate`` reports and the oracle of the Keras metrics
in ``unetrt.train.metrics``.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError


def _check(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, true = np.asarray(pred), np.asarray(true)
    if pred.shape != true.shape:
        raise InputError(
            f"prediction and ground truth must have the same shape, got {pred.shape} "
            f"and {true.shape}"
        )
    return pred, true


def _check_labels(pred: np.ndarray, true: np.ndarray, classes: int) -> None:
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise InputError(f"classes must be an integer >= 2 (background included), got {classes!r}")
    for name, labels in (("prediction", pred), ("ground truth", true)):
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            raise InputError(
                f"{name} labels must lie in 0..{classes - 1}, "
                f"got values from {labels.min()} to {labels.max()}"
            )


def _overlaps(
    pred: np.ndarray, true: np.ndarray, classes: int | None
) -> list[tuple[int, int, int]]:
    """``(|P & T|, |P|, |T|)`` of each scored class."""
    pred, true = _check(pred, true)
    if classes is None:
        pairs = [(pred > 0, true > 0)]
    else:
        _check_labels(pred, true, classes)
        pairs = [(pred == c, true == c) for c in range(1, classes)]
    return [(int(np.logical_and(p, t).sum()), int(p.sum()), int(t.sum())) for p, t in pairs]


def dice(pred: np.ndarray, true: np.ndarray, classes: int | None = None) -> float:
    """Dice coefficient ``2 |P & T| / (|P| + |T|)``, averaged over foreground classes.

    Args:
        pred: Predicted mask or label map.
        true: Ground-truth mask or label map, same shape.
        classes: ``None`` for binary (foreground ``> 0``), else the number of classes,
            background included.

    Returns:
        The score in [0, 1].

    Raises:
        InputError: On different shapes or labels outside ``0 .. classes-1``.
    """
    scores = [2 * i / (p + t) if p + t else 1.0 for i, p, t in _overlaps(pred, true, classes)]
    return float(np.mean(scores))


def iou(pred: np.ndarray, true: np.ndarray, classes: int | None = None) -> float:
    """Intersection over union (Jaccard index) ``|P & T| / |P | T|``; arguments as `dice`."""
    scores = [i / (p + t - i) if p + t else 1.0 for i, p, t in _overlaps(pred, true, classes)]
    return float(np.mean(scores))


def pixel_difference(pred: np.ndarray, true: np.ndarray) -> float:
    """Percentage of pixels whose foreground (``> 0``) differs between the two masks.

    Raises:
        InputError: On different shapes.
    """
    pred, true = _check(pred, true)
    if pred.size == 0:
        return 0.0
    return float(100.0 * np.count_nonzero((pred > 0) != (true > 0)) / pred.size)


def probability_difference(probability: np.ndarray, true: np.ndarray) -> float:
    """The seed notebook's pixel difference: ``100 * mean |truth - probability|``, the
    truth being 1 on foreground (``> 0``) and 0 elsewhere, the probability the model's
    foreground probability (not thresholded).

    Raises:
        InputError: On different shapes.
    """
    probability, true = _check(probability, true)
    if probability.size == 0:
        return 0.0
    diff = np.abs((true > 0).astype(np.float64) - probability.astype(np.float64))
    return float(100.0 * diff.mean())


def accuracy(pred: np.ndarray, true: np.ndarray, classes: int | None = None) -> float:
    """Fraction of pixels classified right: same foreground state, or same label.

    Args:
        pred: Predicted mask or label map.
        true: Ground-truth mask or label map, same shape.
        classes: ``None`` to compare foregrounds (``> 0``), else compare labels
            (checked to lie in ``0 .. classes-1``).

    Raises:
        InputError: On different shapes or labels out of range.
    """
    pred, true = _check(pred, true)
    if classes is None:
        right = (pred > 0) == (true > 0)
    else:
        _check_labels(pred, true, classes)
        right = pred == true
    return float(np.mean(right)) if right.size else 1.0
