"""Segmentation losses (Keras 3 ops) and the U-Net border weight map (NumPy).

Every loss takes ``(y_true, y_pred)`` with ``y_pred`` the model's probabilities (sigmoid
or softmax, never logits) and returns one scalar: the mean over every pixel of the
batch, or a ratio of sums over the whole batch for the Dice terms.

Targets:

- Binary losses (``bce``, ``dice``, ``bce_dice``): ``y_true`` is the mask, same shape as
  ``y_pred`` ``(batch, H, W, 1)``, values 0 or 1.
- Weighted binary losses (``weighted_bce``, ``weighted_bce_dice``): ``y_true[..., 0]``
  is the mask and ``y_true[..., 1]``, when present, a per-pixel weight map (e.g. from
  `unet_border_weights`). With a one-channel ``y_true`` the weights are the seed's
  border weights, computed from the mask on the fly (`border_weights`).
- ``categorical_crossentropy``: one-hot ``y_true`` ``(batch, H, W, K)``.
- ``sparse_categorical_crossentropy``: integer labels ``(batch, H, W, 1)``.

Names follow the seed suite's ``model_lossfunction`` values (`get_loss` lists them).
Where we differ from the seed: its ``weighted_bce`` was TensorFlow's
``weighted_cross_entropy_with_logits`` with the weight map as ``pos_weight``, which
weights only foreground pixels, so a border pixel in the background got weight 1;
here the weight multiplies the whole cross-entropy of its pixel. Its weighted Dice
used the squared weights; here the weights themselves.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops
from scipy import ndimage

from ..errors import ConfigError

EPSILON = 1e-7
"""Probabilities are clipped to [EPSILON, 1 - EPSILON] before a logarithm (as Keras)."""

LossFn = Callable[[Any, Any], Any]


def _clip(p: Any) -> Any:
    return ops.clip(p, EPSILON, 1.0 - EPSILON)


def _pixel_bce(t: Any, p: Any) -> Any:
    p = _clip(p)
    return -(t * ops.log(p) + (1.0 - t) * ops.log(1.0 - p))


def binary_crossentropy(y_true: Any, y_pred: Any) -> Any:
    """Mean binary cross-entropy of the foreground probabilities."""
    return ops.mean(_pixel_bce(ops.cast(y_true, y_pred.dtype), y_pred))


def dice_loss(y_true: Any, y_pred: Any, smooth: float = 1.0) -> Any:
    """Soft Dice loss ``1 - (2 sum(t p) + s) / (sum(t) + sum(p) + s)`` over the batch.

    Args:
        y_true: The mask.
        y_pred: Foreground probabilities, same shape.
        smooth: ``s``, keeps the loss defined (0) when mask and prediction are empty.
    """
    t = ops.cast(y_true, y_pred.dtype)
    overlap = ops.sum(t * y_pred)
    return 1.0 - (2.0 * overlap + smooth) / (ops.sum(t) + ops.sum(y_pred) + smooth)


def bce_dice(y_true: Any, y_pred: Any, smooth: float = 1.0) -> Any:
    """Binary cross-entropy plus soft Dice loss."""
    return binary_crossentropy(y_true, y_pred) + dice_loss(y_true, y_pred, smooth)


def border_weights(mask: Any, border_size: int = 11, border_weight: float = 2.0) -> Any:
    """The seed's on-the-fly border weights of a batch of masks ``(batch, H, W, 1)``.

    A pixel is on a border when the mean of the mask over the ``border_size`` square
    around it (padding excluded) is strictly between 0.005 and 0.995; it weighs
    ``1 + border_weight``, others 1; the map is then scaled so that it sums to the
    number of pixels.
    """
    mean = ops.average_pool(mask, border_size, strides=1, padding="same")
    border = ops.cast((mean > 0.005) & (mean < 0.995), mask.dtype)
    weights = 1.0 + border_weight * border
    return weights * (ops.cast(ops.size(weights), mask.dtype) / ops.sum(weights))


def _mask_and_weights(
    y_true: Any, dtype: Any, border_size: int, border_weight: float
) -> tuple[Any, Any]:
    y_true = ops.cast(y_true, dtype)
    mask = y_true[..., :1]
    if y_true.shape[-1] == 2:
        weights = y_true[..., 1:]
        return mask, weights * (ops.cast(ops.size(weights), dtype) / ops.sum(weights))
    if y_true.shape[-1] != 1:
        raise ConfigError(
            f"a weighted binary loss needs y_true with 1 channel (mask) or 2 (mask, weight "
            f"map), got shape {tuple(y_true.shape)}"
        )
    return mask, border_weights(mask, border_size, border_weight)


def weighted_bce(
    y_true: Any, y_pred: Any, border_size: int = 11, border_weight: float = 2.0
) -> Any:
    """Per-pixel weighted binary cross-entropy, ``sum(w * bce) / sum(w)``.

    Args:
        y_true: The mask in channel 0 and, optionally, the weight map in channel 1.
        y_pred: Foreground probabilities ``(batch, H, W, 1)``.
        border_size: Window of the seed's border weights (without a weight map).
        border_weight: Extra weight of a border pixel (without a weight map).
    """
    mask, w = _mask_and_weights(y_true, y_pred.dtype, border_size, border_weight)
    return ops.sum(w * _pixel_bce(mask, y_pred)) / ops.sum(w)


def weighted_bce_dice(
    y_true: Any,
    y_pred: Any,
    border_size: int = 11,
    border_weight: float = 2.0,
    smooth: float = 1.0,
) -> Any:
    """The seed's ``weighted_bce_dice``: weighted BCE plus weighted soft Dice loss.

    The Dice term is ``1 - (2 sum(w t p) + s) / (sum(w t) + sum(w p) + s)``; the weights
    are those of `weighted_bce`, normalized to sum to the number of pixels.
    """
    mask, w = _mask_and_weights(y_true, y_pred.dtype, border_size, border_weight)
    bce = ops.sum(w * _pixel_bce(mask, y_pred)) / ops.sum(w)
    overlap = ops.sum(w * mask * y_pred)
    dice = 1.0 - (2.0 * overlap + smooth) / (ops.sum(w * mask) + ops.sum(w * y_pred) + smooth)
    return bce + dice


def categorical_crossentropy(
    y_true: Any, y_pred: Any, class_weights: Sequence[float] | None = None
) -> Any:
    """Mean categorical cross-entropy, each pixel weighted by its true class's weight.

    Args:
        y_true: One-hot targets ``(batch, H, W, K)``.
        y_pred: Class probabilities, same shape.
        class_weights: ``K`` weights, background first; ``None`` for all 1.
    """
    t = ops.cast(y_true, y_pred.dtype)
    if class_weights is not None:
        t = t * ops.convert_to_tensor(np.asarray(class_weights, "float32"), y_pred.dtype)
    return ops.mean(-ops.sum(t * ops.log(_clip(y_pred)), axis=-1))


def sparse_categorical_crossentropy(
    y_true: Any, y_pred: Any, class_weights: Sequence[float] | None = None
) -> Any:
    """`categorical_crossentropy` with integer labels ``(batch, H, W, 1)`` as targets."""
    labels = ops.cast(y_true[..., 0], "int32")
    one_hot = ops.one_hot(labels, y_pred.shape[-1], dtype=y_pred.dtype)
    return categorical_crossentropy(one_hot, y_pred, class_weights)


_LOSSES: dict[str, LossFn] = {
    "binary_crossentropy": binary_crossentropy,
    "dice": dice_loss,
    "bce_dice": bce_dice,
    "weighted_bce": weighted_bce,
    "weighted_bce_dice": weighted_bce_dice,
    "categorical_crossentropy": categorical_crossentropy,
    "sparse_categorical_crossentropy": sparse_categorical_crossentropy,
}
_ALIASES = {
    "bce": "binary_crossentropy",
    "cce": "categorical_crossentropy",
    # the seed's spellings
    "sparse_cce": "sparse_categorical_crossentropy",
    "sparse_cross_entropy": "sparse_categorical_crossentropy",
    "multiple_output": "two_heads",
}
LOSS_NAMES: tuple[str, ...] = (*_LOSSES, "two_heads", *_ALIASES)
"""Every name `get_loss` accepts."""


@keras.saving.register_keras_serializable(package="unetrt")
class SegmentationLoss(keras.losses.Loss):
    """A loss of this module by name, its parameters and a scale factor.

    Serializable with the model, unlike a closure.
    """

    def __init__(
        self,
        loss: str,
        params: dict[str, Any] | None = None,
        weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("name", loss)
        super().__init__(**kwargs)
        self.loss = loss
        self.params = dict(params or {})
        self.weight = float(weight)
        self._fn = _LOSSES[loss]

    def call(self, y_true: Any, y_pred: Any) -> Any:
        value = self._fn(y_true, y_pred, **self.params)
        return value if self.weight == 1.0 else self.weight * value

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(loss=self.loss, params=self.params, weight=self.weight)
        return config


def _canonical(name: str) -> str:
    canonical = _ALIASES.get(name, name)
    if canonical not in _LOSSES and canonical != "two_heads":
        raise ConfigError(f"unknown loss {name!r}; valid losses: {', '.join(LOSS_NAMES)}")
    return canonical


def get_loss(name: str, **params: Any) -> SegmentationLoss | dict[str, SegmentationLoss]:
    """A loss by name, ready for ``model.compile(loss=...)``.

    Args:
        name: One of `LOSS_NAMES`. The seed's ``model_lossfunction`` values map as:
            ``binary_crossentropy``, ``weighted_bce``, ``weighted_bce_dice``,
            ``categorical_crossentropy``, ``sparse_cce`` (also its default spelling
            ``sparse_cross_entropy``, which the seed itself silently trained as
            categorical cross-entropy) and ``multiple_output`` (= ``two_heads``).
        **params: Keyword parameters of the loss function (e.g. ``smooth``,
            ``class_weights``, ``border_weight``). For ``two_heads``: ``mask`` and
            ``target`` (loss names, default ``"binary_crossentropy"``), ``mask_params``
            and ``target_params`` (their parameters) and ``weights`` (two numbers,
            default ``(1, 1)``).

    Returns:
        A Keras loss; for ``two_heads`` a dict ``{"mask": loss, "target": loss}`` whose
        losses are already scaled by the head weights.

    Raises:
        ConfigError: On an unknown loss name or parameter.
    """
    canonical = _canonical(name)
    if canonical == "two_heads":
        return _two_heads(**params)
    accepted = set(list(inspect.signature(_LOSSES[canonical]).parameters)[2:])
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ConfigError(
            f"loss {name!r} has no parameter {', '.join(unknown)}; "
            f"it accepts: {', '.join(sorted(accepted)) or 'none'}"
        )
    return SegmentationLoss(canonical, params)


def _two_heads(
    mask: str = "binary_crossentropy",
    target: str = "binary_crossentropy",
    mask_params: dict[str, Any] | None = None,
    target_params: dict[str, Any] | None = None,
    weights: Sequence[float] = (1.0, 1.0),
) -> dict[str, SegmentationLoss]:
    if len(weights) != 2:
        raise ConfigError(f"two_heads loss weights must be two numbers, got {weights!r}")
    heads = {}
    for head, loss_name, params, weight in (
        ("mask", mask, mask_params, weights[0]),
        ("target", target, target_params, weights[1]),
    ):
        if _canonical(loss_name) == "two_heads":
            raise ConfigError(f"the {head} head needs a single-output loss, got {loss_name!r}")
        loss = get_loss(loss_name, **(params or {}))
        assert isinstance(loss, SegmentationLoss)
        heads[head] = SegmentationLoss(loss.loss, loss.params, weight, name=f"{head}_{loss.loss}")
    return heads


def unet_border_weights(
    instance_mask: np.ndarray, w0: float = 10.0, sigma: float = 5.0, class_balance: bool = True
) -> np.ndarray:
    """The U-Net weight map of Ronneberger et al. (2015) for one 2D instance mask.

    ``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))``, where ``d1``
    and ``d2`` are the distances to the nearest and second-nearest object. The
    separation term is applied to background pixels only (inside an object ``d1`` is 0
    and the term would only blur its edge) and only when there are two objects or more.

    Args:
        instance_mask: ``(H, W)`` integer labels, 0 for background, one id per object.
        w0: Weight of the separation term.
        sigma: Width of the separation term in pixels.
        class_balance: ``w_c`` balances the two classes (each class's weights sum to
            half the pixel count); otherwise ``w_c = 1``.

    Returns:
        The float32 weight map, same shape.

    Raises:
        ConfigError: If the mask is not 2D.
    """
    labels = np.asarray(instance_mask)
    if labels.ndim != 2:
        raise ConfigError(f"unet_border_weights needs a 2D instance mask, got shape {labels.shape}")
    foreground = labels > 0
    weights = np.ones(labels.shape, np.float64)
    if class_balance:
        n_fg = int(foreground.sum())
        n_bg = foreground.size - n_fg
        if n_fg and n_bg:
            weights[foreground] = foreground.size / (2.0 * n_fg)
            weights[~foreground] = foreground.size / (2.0 * n_bg)
    ids = np.unique(labels[foreground])
    if len(ids) >= 2:
        d1 = np.full(labels.shape, np.inf)
        d2 = np.full(labels.shape, np.inf)
        for i in ids:
            d = ndimage.distance_transform_edt(labels != i)
            d2 = np.minimum(d2, np.maximum(d1, d))
            d1 = np.minimum(d1, d)
        separation = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2))
        weights += np.where(foreground, 0.0, separation)
    return weights.astype(np.float32)
