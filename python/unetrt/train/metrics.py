"""Keras metrics for training: Dice and Jaccard (IoU) of the thresholded prediction.

They compute, on each batch, exactly what `unetrt.metrics.dice` and `unetrt.metrics.iou`
compute on the batch's masks (Keras then averages the batch values over an epoch).
A one-channel sigmoid output is thresholded at 0.5 against ``y_true[..., 0] > 0.5``
(a weight-map channel after the mask is ignored). A K-channel softmax output is taken
by argmax against one-hot ``y_true`` (K channels) or integer labels (one channel), and
the scores are averaged over the classes 1 .. K-1, background skipped. A class empty in
both scores 1.0.

The seed's Jaccard metrics scored an empty-vs-empty batch 0 and, for integer labels,
took the argmax of the prediction cast to integers (probabilities all became 0, so
the predicted class was always background); these do neither.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


def _overlaps(y_true: Any, y_pred: Any) -> tuple[Any, Any, Any]:
    """Per foreground class: |P & T|, |P|, |T| over the batch."""
    k = y_pred.shape[-1]
    if k == 1:
        pred = ops.cast(y_pred[..., 0] > 0.5, "int32")
        true = ops.cast(y_true[..., 0] > 0.5, "int32")
        k = 2
    else:
        pred = ops.argmax(y_pred, axis=-1)
        if y_true.shape[-1] == k:
            true = ops.argmax(y_true, axis=-1)
        else:
            true = ops.cast(y_true[..., 0], "int32")
    p = ops.one_hot(pred, k, dtype="float32")[..., 1:]
    t = ops.one_hot(true, k, dtype="float32")[..., 1:]
    axes = tuple(range(len(p.shape) - 1))
    return ops.sum(p * t, axis=axes), ops.sum(p, axis=axes), ops.sum(t, axis=axes)


@keras.saving.register_keras_serializable(package="unetrt")
def dice_coefficient(y_true: Any, y_pred: Any) -> Any:
    """Dice coefficient of the thresholded (or argmax) prediction, mean over classes."""
    overlap, n_pred, n_true = _overlaps(y_true, y_pred)
    total = n_pred + n_true
    return ops.mean(ops.where(total > 0, 2.0 * overlap / ops.maximum(total, 1.0), 1.0))


@keras.saving.register_keras_serializable(package="unetrt")
def jaccard(y_true: Any, y_pred: Any) -> Any:
    """Jaccard index (IoU) of the thresholded (or argmax) prediction, mean over classes."""
    overlap, n_pred, n_true = _overlaps(y_true, y_pred)
    union = n_pred + n_true - overlap
    return ops.mean(ops.where(union > 0, overlap / ops.maximum(union, 1.0), 1.0))
