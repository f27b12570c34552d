"""Evaluate a model against ground-truth masks: per-frame and mean Dice, IoU, pixel difference.

Two pixel differences are reported: ours (the percentage of pixels whose foreground
state differs between mask and truth) and the seed notebook's, computed on the
probabilities (``100 * mean |truth - probability|``, `unetrt.metrics.probability_difference`),
so results can be compared with figures reported that way.

A temporal model runs the whole video in order (its state, or window, needs every frame
before a scored one); the frames that have a mask are scored.

The engine (`unetrt.Segmenter`, with the options it is given) segments the frames, and
each predicted mask is compared with its ground truth using `unetrt.metrics`. Both
sides count as foreground where they are ``> 0``: instance label masks work as they are,
and for a multi-class model every class but the background is foreground.

Frames and masks are paired

- by frame number (``pair="number"``): the last group of digits in each file name
  (`unetrt.io.frame_number`, the rule training data uses too), as in the Cell Tracking
  Challenge (``t010.tif`` <-> ``man_seg010.tif``). Every mask needs a frame; frames
  without a mask are not scored, so a folder of hand-drawn masks for a few frames
  evaluates against the whole video.
- in order (``pair="order"``): frame ``i`` with mask ``i``; the counts must match.
- ``pair="auto"`` (the default) pairs by number when both sides are folders (or globs)
  of single-frame files whose names all carry distinct numbers, else in order.
"""

from __future__ import annotations

import csv as csv_module
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from .errors import ConfigError, InputError, OutputError
from .io import FrameSource, atomic_output, frame_number, open_frames

PAIRINGS = ("auto", "number", "order")
CSV_COLUMNS = (
    "frame",
    "image",
    "mask",
    "dice",
    "iou",
    "pixel_difference_percent",
    "probability_difference_percent",
)


@dataclass(frozen=True)
class FrameScore:
    """The scores of one frame.

    Attributes:
        image: The frame: its file name, or ``"<stack name>[i]"`` for a frame of a stack.
        mask: The ground truth, named the same way.
        dice: Dice coefficient of the foregrounds.
        iou: Intersection over union of the foregrounds.
        pixel_difference: Percentage of pixels whose foreground state differs.
        probability_difference: The seed's pixel difference, on probabilities (percent).
    """

    image: str
    mask: str
    dice: float
    iou: float
    pixel_difference: float
    probability_difference: float


@dataclass(frozen=True)
class EvaluationReport:
    """Per-frame scores of a model on annotated frames, and their means."""

    model: str
    frames: tuple[FrameScore, ...]

    @property
    def mean_dice(self) -> float:
        """Mean of the per-frame Dice coefficients."""
        return float(np.mean([f.dice for f in self.frames]))

    @property
    def mean_iou(self) -> float:
        """Mean of the per-frame IoUs."""
        return float(np.mean([f.iou for f in self.frames]))

    @property
    def mean_pixel_difference(self) -> float:
        """Mean of the per-frame pixel differences (percent)."""
        return float(np.mean([f.pixel_difference for f in self.frames]))

    @property
    def mean_probability_difference(self) -> float:
        """Mean of the per-frame probability-based pixel differences (percent)."""
        return float(np.mean([f.probability_difference for f in self.frames]))

    def table(self) -> str:
        """The scores as a text table: one row per frame, then the mean."""
        width = max(len("image"), *(len(f.image) for f in self.frames))
        lines = [f"{'image':<{width}}  {'dice':>7}  {'iou':>7}  {'pixdiff%':>8}  {'probdiff%':>9}"]
        for f in self.frames:
            lines.append(
                f"{f.image:<{width}}  {f.dice:7.4f}  {f.iou:7.4f}  {f.pixel_difference:8.3f}"
                f"  {f.probability_difference:9.3f}"
            )
        lines.append(
            f"{'mean (' + str(len(self.frames)) + ')':<{width}}  {self.mean_dice:7.4f}  "
            f"{self.mean_iou:7.4f}  {self.mean_pixel_difference:8.3f}  "
            f"{self.mean_probability_difference:9.3f}"
        )
        return "\n".join(lines)

    def write_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the per-frame rows and a final ``mean`` row to a CSV file.

        The file is written under a temporary name and renamed when complete.

        Raises:
            OutputError: If the file cannot be written.
        """
        path = Path(path)
        rows: list[Sequence[object]] = [
            (i, f.image, f.mask, f.dice, f.iou, f.pixel_difference, f.probability_difference)
            for i, f in enumerate(self.frames)
        ]
        means = (self.mean_dice, self.mean_iou, self.mean_pixel_difference)
        rows.append(("mean", "", "", *means, self.mean_probability_difference))
        with atomic_output(path) as partial, partial.open("w", newline="") as handle:
            writer = csv_module.writer(handle)
            writer.writerow(CSV_COLUMNS)
            writer.writerows(rows)
        return path

    def __str__(self) -> str:
        return self.table()


def evaluate(
    model: str | os.PathLike[str] | None,
    images: str | os.PathLike[str],
    masks: str | os.PathLike[str],
    *,
    csv: str | os.PathLike[str] | None = None,
    pair: str = "auto",
    **segmenter_options: Any,
) -> EvaluationReport:
    """Segment annotated frames with a model and score the masks against the truth.

    Args:
        model: ONNX model or built-in model name (``"default"``); None is the default.
        images: The frames: a multi-page TIFF, a folder or a glob of single frames.
        masks: The ground truth, in the same forms: binary or instance masks
            (foreground ``> 0``).
        csv: Optional CSV file for the per-frame scores and their mean.
        pair: How frames and masks are paired: ``"auto"``, ``"number"`` or ``"order"``
            (see the module docstring).
        **segmenter_options: Passed to `unetrt.Segmenter` (``tile``, ``batch``,
            ``threshold``, ``postprocess``, ...).

    Returns:
        The per-frame scores and their means.

    Raises:
        InputError: If the frames or masks cannot be read, do not pair up (the counts are
            named), or a mask's shape differs from its frame's.
        ConfigError: On an unknown pairing.
        OutputError: If the CSV cannot be written.
    """
    from .segmenter import Segmenter

    if pair not in PAIRINGS:
        raise ConfigError(f"pair must be one of {PAIRINGS}, got {pair!r}")
    if csv is not None and not Path(csv).parent.is_dir():
        raise OutputError(f"cannot write {csv}: folder {Path(csv).parent} does not exist")
    with open_frames(images) as frames, open_frames(masks) as truths:
        pairs = pair_frames(frames, truths, pair)
        with Segmenter(model, **segmenter_options) as segmenter:
            stream = segmenter.stream(source=frames)  # stack statistics, when needed

            # A temporal model reads every frame up to the last scored one, in order.
            mask_of = dict(pairs)
            whole = segmenter.temporal is not None and pairs
            run = range(pairs[-1][0] + 1) if whole else list(mask_of)

            def run_frames() -> Iterator[np.ndarray]:
                for i in run:
                    yield frames.read(i)

            scores = []
            for i, probs in zip(run, segmenter.predict_frames(run_frames(), stream), strict=True):
                if i not in mask_of:
                    continue
                j = mask_of[i]
                predicted = segmenter.to_mask(probs)
                truth = truths.read(j)
                image_name, mask_name = _frame_name(frames, i), _frame_name(truths, j)
                if truth.shape[:2] != predicted.shape[:2] or truth.ndim != 2:
                    raise InputError(
                        f"mask {mask_name} has shape {truth.shape} but frame {image_name} "
                        f"has {predicted.shape[:2]}; masks must be 2D and match their frames"
                    )
                scores.append(
                    FrameScore(
                        image=image_name,
                        mask=mask_name,
                        dice=metrics.dice(predicted, truth),
                        iou=metrics.iou(predicted, truth),
                        pixel_difference=metrics.pixel_difference(predicted, truth),
                        probability_difference=metrics.probability_difference(
                            _foreground_probability(probs, segmenter.contract.output), truth
                        ),
                    )
                )
            model_name = str(segmenter.model.path)
    report = EvaluationReport(model=model_name, frames=tuple(scores))
    if csv is not None:
        report.write_csv(csv)
    return report


def _foreground_probability(probs: np.ndarray, output: str) -> np.ndarray:
    """(H, W) foreground probability: the one channel, or for several classes one minus
    the background's softmax probability (the largest sigmoid, for sigmoid classes)."""
    if probs.ndim == 2:
        return probs
    return probs.max(axis=-1) if output == "sigmoid" else 1.0 - probs[..., 0]


# ------------------------------------------------------------------------- pairing
def _numbers(source: FrameSource) -> list[int] | None:
    """Frame numbers of a one-file-per-frame source, or None if it has none to offer."""
    if len(source.files) != len(source):
        return None
    numbers = [n for n in map(frame_number, source.files) if n is not None]
    if len(numbers) != len(source.files) or len(set(numbers)) != len(numbers):
        return None
    return numbers


def pair_frames(frames: FrameSource, truths: FrameSource, pair: str) -> list[tuple[int, int]]:
    """(frame index, mask index) of each scored frame, in frame order."""
    frame_numbers, mask_numbers = _numbers(frames), _numbers(truths)
    by_number = pair == "number" or (
        pair == "auto" and frame_numbers is not None and mask_numbers is not None
    )
    if not by_number:
        if len(frames) != len(truths):
            raise InputError(
                f"{frames.name} has {len(frames)} frames but {truths.name} has "
                f"{len(truths)} masks; pairing in order needs as many masks as frames "
                f"(name files with frame numbers to pair by number)"
            )
        return [(i, i) for i in range(len(frames))]
    for source, numbers in ((frames, frame_numbers), (truths, mask_numbers)):
        if numbers is None:
            raise InputError(
                f"cannot pair by frame number: {source.name} is not a folder of files "
                f"whose names all carry distinct numbers"
            )
    assert frame_numbers is not None and mask_numbers is not None
    index_of = {n: i for i, n in enumerate(frame_numbers)}
    missing = sorted(set(mask_numbers) - set(index_of))
    if missing:
        shown = ", ".join(str(n) for n in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise InputError(
            f"{len(missing)} of the {len(truths)} masks in {truths.name} have no frame with "
            f"their number in {frames.name} ({len(frames)} frames): {shown}"
        )
    return sorted((index_of[n], j) for j, n in enumerate(mask_numbers))


def _frame_name(source: FrameSource, index: int) -> str:
    if len(source.files) == len(source):
        return source.files[index].name
    return f"{source.name}[{index}]"
