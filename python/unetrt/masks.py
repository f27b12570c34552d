"""From model output to masks: activation, thresholds, class indices, post-processing.

One module for what turns the stitched model output into what the user gets, so that
every executor (CPU now, CUDA later) and every caller (`Segmenter`, evaluation) reads
the output the same way:

- `activate`: logits become probabilities (sigmoid for one channel, softmax for
  several); sigmoid and softmax outputs pass unchanged;
- `threshold_mask` / `argmax_mask`: the C++ kernels for one-channel and class outputs;
- `to_mask`: the whole rule, including several independent sigmoid channels and the
  optional `unetrt.postprocess.PostProcess`.
"""

from __future__ import annotations

import numpy as np

from . import _core
from .contract import ModelContract
from .postprocess import PostProcess
from .tiling import check_buffer


def activate(outputs: np.ndarray, kind: str, axis: int) -> np.ndarray:
    """Probabilities from a batch of model outputs.

    Args:
        outputs: float32 model outputs.
        kind: The contract's output kind: ``"sigmoid"``, ``"softmax"`` or ``"logits"``.
        axis: The channel axis of ``outputs``.

    Returns:
        ``outputs`` itself for sigmoid and softmax models; for logits, the sigmoid of a
        one-channel output or the softmax over the channels of a K-channel one (new
        float32 array).
    """
    if kind != "logits":
        return outputs
    from scipy.special import expit, softmax

    if outputs.shape[axis] == 1:
        return expit(outputs)
    return softmax(outputs, axis=axis).astype(np.float32, copy=False)


def to_mask(
    probabilities: np.ndarray,
    contract: ModelContract,
    postprocess: PostProcess | None = None,
    *,
    threads: int = 0,
) -> np.ndarray:
    """Turn one frame's probabilities into its mask, then post-process it.

    Args:
        probabilities: float32 (H, W) for one-channel models, (H, W, K) for K channels.
        contract: Gives the threshold and whether channels are softmax classes or
            independent sigmoids.
        postprocess: Optional post-processing.
        threads: Threads for the kernels, 0 for all.

    Returns:
        uint8 0/255 for one-channel models; the class index for softmax classes; for
        several sigmoid channels, 1 + the most probable channel where it passes the
        threshold, else 0; uint16 instance labels when post-processing labels.
    """
    mask = mask_of(probabilities, contract, threads=threads)
    return postprocess_mask(mask, postprocess)


def mask_of(probabilities: np.ndarray, contract: ModelContract, *, threads: int = 0) -> np.ndarray:
    """The mask rule of `to_mask` without post-processing (what a GPU executor computes
    on the device: the same per-pixel rule, ``pixel::class_mask`` in the C++ core)."""
    if probabilities.ndim == 2:
        return threshold_mask(probabilities, contract.threshold, threads=threads)
    independent = contract.output == "sigmoid"  # independent channels, no background
    return argmax_mask(
        probabilities, threads=threads, independent=independent, threshold=contract.threshold
    )


def postprocess_mask(mask: np.ndarray, postprocess: PostProcess | None) -> np.ndarray:
    """The post-processing step of `to_mask` (none when ``postprocess`` is None or idle)."""
    return postprocess.apply(mask) if postprocess is not None and postprocess.active else mask


def threshold_mask(
    prob: np.ndarray, threshold: float, *, out: np.ndarray | None = None, threads: int = 0
) -> np.ndarray:
    """Foreground mask of a probability map.

    Args:
        prob: float32 probabilities, any shape (typically (H, W)).
        threshold: Pixels with probability strictly above it are foreground.
        out: uint8 buffer of prob's shape; allocated when None.
        threads: Threads to use, 0 for all.

    Returns:
        uint8 mask: 255 for foreground, 0 elsewhere (and where prob is NaN).
    """
    prob = np.ascontiguousarray(prob, dtype=np.float32)
    if out is None:
        out = np.empty(prob.shape, np.uint8)
    else:
        check_buffer(out, prob.shape, np.uint8)
    _core.threshold_mask(prob, float(threshold), out, threads)
    return out


def argmax_mask(
    prob: np.ndarray,
    *,
    out: np.ndarray | None = None,
    threads: int = 0,
    independent: bool = False,
    threshold: float = 0.5,
) -> np.ndarray:
    """Class-index mask of per-class scores.

    Args:
        prob: float32 (H, W, K) scores or probabilities, K <= 256 classes.
        out: uint8 (H, W) buffer; allocated when None.
        threads: Threads to use, 0 for all.
        independent: The K channels are independent sigmoids (K <= 255): a pixel gets
            1 + its most probable channel where that passes ``threshold``, else 0.
        threshold: See ``independent``.

    Returns:
        uint8 (H, W): the index of the largest class value per pixel (the first one
        on ties, like ``numpy.argmax``; pixels with NaN scores get an unspecified class).
    """
    prob = np.ascontiguousarray(prob, dtype=np.float32)
    if prob.ndim < 1 or not 1 <= prob.shape[-1] <= (255 if independent else 256):
        raise ValueError(f"prob must end with a class axis of 1 to 256 classes, got {prob.shape}")
    if out is None:
        out = np.empty(prob.shape[:-1], np.uint8)
    else:
        check_buffer(out, prob.shape[:-1], np.uint8)
    _core.class_mask(prob, bool(independent), float(threshold), out, threads)
    return out
