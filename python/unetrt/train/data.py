"""Training data: annotated frames from disk, targets, patch sampling and batches.

Four layouts are read (`DATA_LAYOUTS`):

- ``"folders"``: a folder of frames and a folder of masks (TIFF or PNG). A mask belongs
  to the frame with the same file stem, or else with the same frame number (the last
  group of digits in the name: ``t010.tif`` <-> ``man_seg010.tif``). Frames of one
  shape form one video in frame-number order.
- ``"stacks"``: a multi-page TIFF stack and a mask stack of the same shape, or two
  folders of such stacks matched by file name (one video per stack).
- ``"ctc"``: Cell Tracking Challenge, ``<seq>/t000.tif`` with masks in
  ``<seq>_ST/SEG`` (silver truth, preferred) or ``<seq>_GT/SEG`` (gold truth), or the
  flat layout ``frames/`` + ``silver_truth/`` (preferred) or ``gold_truth/``.
- ``"seed_csv"``: the seed suite's ``inputs/raw_NNN.tif`` + ``labels/instance_ids_NNN.tif``
  with ``videos2im_relation.csv`` (``video;raw_NNN.tif`` rows) grouping the frames
  into videos; without the CSV every frame is its own video.

Frames without a mask are kept as context for clips but never used as targets.
Masks are instance labels or binary masks: foreground is ``label > 0``.

Where we differ from the seed suite's generators, on purpose: every annotated frame
of a video is a clip target (the seed overwrote its random choice with ``t = 1`` and
trained its ConvLSTM on one frame per video); a foreground pixel near the border can
be a patch centre (the window is moved inside the frame; the seed only drew centres
whose window fit); a frame as wide as the patch but taller is still cropped at random
(the seed returned its top-left corner when either side matched); an epoch with fewer
frames than a batch still has one batch (the seed's ``floor`` gave zero).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
from scipy import ndimage

from ..channels import ChannelCode, blanked, check_raw_shape, draw, is_random, select_channels
from ..errors import ConfigError, InputError
from ..io import IMAGE_SUFFIXES, MAX_CHANNELS, frame_number, open_frames
from ..normalize import Normalization, Statistics
from .augment import AugmentConfig, augment_patch
from .names import DATA_LAYOUTS, ENCODINGS, TARGETS
from .sampling import PatchSampler

if TYPE_CHECKING:
    from .config import TrainConfig


# ---------------------------------------------------------------------------- reading
def read_image(path: str | Path, multichannel: bool = False) -> np.ndarray:
    """Read one 2D frame or mask (TIFF or PNG) as stored (uint8, uint16, ...).

    With `multichannel` (frames for ``data_channels``), a frame the engine's reader reads
    as (H, W, C) is kept as it is.

    Raises:
        InputError: If the file is missing, unreadable or not a single grey 2D image.
    """
    path = Path(path)
    array = _read(path)
    if multichannel and array.ndim == 3 and array.shape[-1] <= MAX_CHANNELS:
        return array
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        rgb = array[..., :3]
        if not (
            np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
        ):
            raise InputError(f"{path}: colour image; training needs grey frames and masks")
        array = rgb[..., 0]
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:2])
    if array.ndim != 2:
        raise InputError(f"{path}: expected a 2D image, got shape {array.shape}")
    return array


def read_stack(path: str | Path, multichannel: bool = False) -> np.ndarray:
    """Read a multi-page TIFF (or a single 2D image) as a (time, rows, cols) array, or
    (time, rows, cols, channels) with `multichannel` where the engine's reader sees
    channels.

    Raises:
        InputError: If the file is missing, unreadable or not 2D + time.
    """
    path = Path(path)
    if multichannel:
        with open_frames(path) as source:
            return np.stack(list(source))
    array = _read(path)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise InputError(f"{path}: expected a 2D + time stack, got shape {array.shape}")
    return array


def _read(path: Path) -> np.ndarray:
    # One reader for training and inference: unetrt.io knows TIFF flavours, PNG and
    # corrupt files, and says what is wrong in its InputError.
    with open_frames(path) as source:
        if len(source) == 1:
            return source.read(0)
        return np.stack(list(source))


def _image_files(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise InputError(f"{what} folder {folder} does not exist")
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise InputError(f"{what} folder {folder} holds no TIFF or PNG files")
    return sorted(files, key=lambda p: (frame_number(p) is None, frame_number(p) or 0, p.name))


def numbers_in_folder(folder: str | Path) -> list[int]:
    """Frame numbers of the images in a folder (e.g. the gold-truth masks to exclude).

    Raises:
        InputError: If the folder is missing or a file name has no number.
    """
    numbers = []
    for path in _image_files(Path(folder), "exclude"):
        number = frame_number(path)
        if number is None:
            raise InputError(f"{path}: no frame number in the file name")
        numbers.append(number)
    return numbers


# ----------------------------------------------------------------------- annotations
@dataclass(frozen=True)
class AnnotatedVideo:
    """Frames of one video (or one independent image) and the masks known for them.

    Attributes:
        name: Where it came from (folder, stack or video name), for messages.
        frames: Raw frames in time order, each (rows, cols) (or (rows, cols, channels)
            for ``data_channels``), as stored on disk.
        numbers: Frame number of each frame (from the file name, else its position).
        masks: Mask (rows, cols) of the frame at each annotated position.
    """

    name: str
    frames: tuple[np.ndarray, ...]
    numbers: tuple[int, ...]
    masks: dict[int, np.ndarray] = field(default_factory=dict)

    def without(self, numbers: Iterable[int]) -> AnnotatedVideo:
        """The same video with the masks of the given frame numbers dropped."""
        drop = set(numbers)
        masks = {i: m for i, m in self.masks.items() if self.numbers[i] not in drop}
        return AnnotatedVideo(self.name, self.frames, self.numbers, masks)


def _check_pair(image: np.ndarray, mask: np.ndarray, where: str) -> None:
    if mask.shape != image.shape[: mask.ndim]:
        raise InputError(f"{where}: mask shape {mask.shape} differs from frame shape {image.shape}")
    if mask.dtype.kind not in "biu":
        raise InputError(f"{where}: masks must be integer labels, got dtype {mask.dtype}")


def _as_video(
    name: str, frames: list[np.ndarray], numbers: list[int], masks: dict[int, np.ndarray]
) -> list[AnnotatedVideo]:
    """One video when all frames share a shape, else one video per frame."""
    if len({f.shape for f in frames}) == 1:
        return [AnnotatedVideo(name, tuple(frames), tuple(numbers), masks)]
    return [
        AnnotatedVideo(f"{name}[{n}]", (f,), (n,), {0: masks[i]} if i in masks else {})
        for i, (f, n) in enumerate(zip(frames, numbers, strict=True))
    ]


def load_folders(
    images: str | Path, masks: str | Path, multichannel: bool = False
) -> list[AnnotatedVideo]:
    """Frames and masks from two folders, matched by file stem or frame number.

    Raises:
        InputError: If a folder is missing or empty, no mask matches a frame, or a
            mask does not match its frame's shape.
    """
    image_files = _image_files(Path(images), "frames")
    mask_files = _image_files(Path(masks), "masks")
    by_stem = {p.stem: p for p in mask_files}
    by_number: dict[int, Path] = {}
    for p in mask_files:
        number = frame_number(p)
        if number is not None:
            by_number.setdefault(number, p)
    frames, numbers, found = [], [], {}
    for position, path in enumerate(image_files):
        number = frame_number(path)
        mask_path = by_stem.get(path.stem) or (
            by_number.get(number) if number is not None else None
        )
        frames.append(read_image(path, multichannel))
        numbers.append(position if number is None else number)
        if mask_path is not None:
            mask = read_image(mask_path)
            _check_pair(frames[-1], mask, str(mask_path))
            found[position] = mask
    if not found:
        raise InputError(
            f"no mask in {masks} matches a frame in {images} (by file name or frame number)"
        )
    return _as_video(Path(images).name, frames, numbers, found)


def load_stacks(
    images: str | Path, masks: str | Path, multichannel: bool = False
) -> list[AnnotatedVideo]:
    """A frame stack and a mask stack, or two folders of stacks matched by file name.

    Every frame of a stack is annotated (an empty mask frame means "no cells").

    Raises:
        InputError: If files are missing, unmatched or of different shapes.
    """
    images, masks = Path(images), Path(masks)
    if images.is_dir():
        mask_by_stem = {p.stem: p for p in _image_files(masks, "mask stacks")}
        pairs = [
            (p, mask_by_stem[p.stem])
            for p in _image_files(images, "stacks")
            if p.stem in mask_by_stem
        ]
        if not pairs:
            raise InputError(f"no mask stack in {masks} has the name of a stack in {images}")
    else:
        pairs = [(images, masks)]
    videos = []
    for image_path, mask_path in pairs:
        stack, labels = read_stack(image_path, multichannel), read_stack(mask_path)
        _check_pair(stack, labels, str(mask_path))
        videos.append(
            AnnotatedVideo(
                image_path.stem,
                tuple(stack),
                tuple(range(len(stack))),
                dict(enumerate(labels)),
            )
        )
    return videos


def ctc_mask_folder(images: str | Path) -> Path:
    """The mask folder of a Cell Tracking Challenge sequence, silver truth preferred.

    Args:
        images: ``<dataset>/<seq>`` (masks in ``<seq>_ST/SEG`` or ``<seq>_GT/SEG``) or a
            flat folder holding ``frames/`` (masks in ``silver_truth/`` or ``gold_truth/``).

    Raises:
        InputError: If no mask folder is found.
    """
    images = Path(images)
    if (images / "frames").is_dir():
        candidates = [images / "silver_truth", images / "gold_truth"]
    else:
        candidates = [images.parent / f"{images.name}_{kind}" / "SEG" for kind in ("ST", "GT")]
    for folder in candidates:
        if folder.is_dir():
            return folder
    raise InputError(
        f"no Cell Tracking Challenge masks for {images}: looked for "
        + ", ".join(str(c) for c in candidates)
    )


def load_ctc(
    images: str | Path, masks: str | Path | None = None, multichannel: bool = False
) -> list[AnnotatedVideo]:
    """A Cell Tracking Challenge sequence (``t000.tif`` + ``man_seg000.tif``).

    Args:
        images: The sequence folder, or a flat folder holding ``frames/``.
        masks: Mask folder; found with `ctc_mask_folder` if None.

    Raises:
        InputError: If folders are missing or nothing matches.
    """
    images = Path(images)
    frames = images / "frames" if (images / "frames").is_dir() else images
    mask_folder = ctc_mask_folder(images) if masks is None else masks
    return load_folders(frames, mask_folder, multichannel)


def load_seed_csv(root: str | Path, multichannel: bool = False) -> list[AnnotatedVideo]:
    """The seed suite's ``inputs/`` + ``labels/`` + ``videos2im_relation.csv`` layout.

    Raises:
        InputError: If folders are missing, or the CSV names a missing frame.
    """
    root = Path(root)
    inputs = _image_files(root / "inputs", "inputs")
    labels = {frame_number(p): p for p in _image_files(root / "labels", "labels")}
    csv_path = root / "videos2im_relation.csv"
    groups: dict[str, list[Path]] = {}
    if csv_path.is_file():
        by_name = {p.name: p for p in inputs}
        with csv_path.open(newline="") as handle:
            rows = [r for r in csv.reader(handle, delimiter=";") if r and any(c.strip() for c in r)]
        for row in rows[1:]:  # first row: "Video; Frame"
            if len(row) < 2:
                raise InputError(f"{csv_path}: expected 'video;frame' rows, got {';'.join(row)!r}")
            video, name = row[0].strip(), row[1].strip()
            if name not in by_name:
                raise InputError(f"{csv_path}: frame {name!r} is not in {root / 'inputs'}")
            groups.setdefault(video, []).append(by_name.pop(name))
        for path in by_name.values():  # frames the CSV does not list stand alone
            groups[path.stem] = [path]
    else:
        groups = {p.stem: [p] for p in inputs}
    videos = []
    for video, paths in groups.items():
        frames = [read_image(p, multichannel) for p in paths]
        numbers = [frame_number(p) or 0 for p in paths]
        found = {}
        for i, number in enumerate(numbers):
            if number in labels:
                found[i] = read_image(labels[number])
                _check_pair(frames[i], found[i], str(labels[number]))
        videos.extend(_as_video(video, frames, numbers, found))
    if not any(v.masks for v in videos):
        raise InputError(f"no label in {root / 'labels'} matches a frame in {root / 'inputs'}")
    return videos


def load_annotated(
    layout: str,
    images: str | Path,
    masks: str | Path | None = None,
    exclude_frames: Iterable[int] = (),
    multichannel: bool = False,
) -> list[AnnotatedVideo]:
    """Load annotated videos in any of the `DATA_LAYOUTS`.

    Args:
        layout: One of `DATA_LAYOUTS`.
        images: Frames folder, stack (or folder of stacks), CTC sequence or seed root.
        masks: Masks folder or stack(s); optional for ``"ctc"``, unused for ``"seed_csv"``.
        exclude_frames: Frame numbers whose masks are never used (e.g. gold truth).
        multichannel: Keep the channels of (H, W, C) frames (``data_channels``).

    Returns:
        The videos; those left with no mask after exclusion are dropped.

    Raises:
        ConfigError: On an unknown layout or a missing masks path.
        InputError: If the data cannot be read or nothing is annotated.
    """
    if layout not in DATA_LAYOUTS:
        raise ConfigError(f"data_format must be one of {DATA_LAYOUTS}, got {layout!r}")
    if layout == "ctc":
        videos = load_ctc(images, masks, multichannel)
    elif layout == "seed_csv":
        videos = load_seed_csv(images, multichannel)
    elif masks is None:
        raise ConfigError(f"data_format {layout!r} needs a masks path next to {images}")
    elif layout == "folders":
        videos = load_folders(images, masks, multichannel)
    else:
        videos = load_stacks(images, masks, multichannel)
    exclude = list(exclude_frames)
    videos = [v.without(exclude) for v in videos]
    kept = [v for v in videos if v.masks]
    if not kept:
        raise InputError(f"every annotated frame of {images} is excluded by data_exclude_frames")
    return kept


def split_validation(
    videos: Sequence[AnnotatedVideo], fraction: float
) -> tuple[list[AnnotatedVideo], list[AnnotatedVideo]]:
    """Hold out the last ``fraction`` of each video's annotated frames for validation.

    A contiguous block at the end of the video keeps validation frames away from
    their nearly identical neighbours in time. Single-frame videos are split as a
    whole, the last ones going to validation.

    Raises:
        ConfigError: If the fraction is not in [0, 1) or leaves no training frame.
    """
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"data_val_fraction must be in [0, 1), got {fraction!r}")
    train, val = [], []
    singles = [v for v in videos if len(v.frames) == 1]
    for video in videos:
        if len(video.frames) == 1:
            continue
        positions = sorted(video.masks)
        n_val = math.ceil(fraction * len(positions)) if fraction > 0 else 0
        held = set(positions[len(positions) - n_val :])
        train.append(
            AnnotatedVideo(
                video.name,
                video.frames,
                video.numbers,
                {i: m for i, m in video.masks.items() if i not in held},
            )
        )
        val.append(
            AnnotatedVideo(
                video.name,
                video.frames,
                video.numbers,
                {i: m for i, m in video.masks.items() if i in held},
            )
        )
    n_val = math.ceil(fraction * len(singles)) if fraction > 0 else 0
    train += singles[: len(singles) - n_val]
    val += singles[len(singles) - n_val :]
    train = [v for v in train if v.masks]
    if not train:
        raise ConfigError(f"data_val_fraction {fraction} leaves no frame for training")
    return train, [v for v in val if v.masks]


# --------------------------------------------------------------------------- targets
def make_target(
    labels: np.ndarray, kind: str = "segmentation", contour_width: int = 2
) -> np.ndarray:
    """The class map a model learns from a mask.

    Args:
        labels: Instance labels or a binary mask (foreground = label > 0).
        kind: ``"segmentation"``: 0 background, 1 foreground. ``"contours"``: 0
            background, 1 cell interior, 2 the inner ``contour_width`` pixels of every
            cell's boundary, including where two cells touch. A binary mask's cells
            are its connected components.
        contour_width: Contour thickness in pixels (``"contours"`` only).

    Returns:
        uint8 class map of the mask's shape.

    Raises:
        ConfigError: On an unknown kind or a contour width below 1.
    """
    if kind not in TARGETS:
        raise ConfigError(f"datagen_type must be one of {TARGETS}, got {kind!r}")
    foreground = labels > 0
    target = foreground.astype(np.uint8)
    if kind == "contours":
        if contour_width < 1:
            raise ConfigError(f"datagen_contour_width must be >= 1, got {contour_width!r}")
        from skimage.segmentation import find_boundaries

        instances = (
            labels if np.unique(labels[foreground]).size > 1 else ndimage.label(foreground)[0]
        )
        contour = find_boundaries(instances, mode="inner") & foreground
        if contour_width > 1:
            contour = ndimage.binary_dilation(
                contour, iterations=contour_width - 1, mask=foreground
            )
        target[contour] = 2
    return target


# ------------------------------------------------------------------------- batches
def video_statistics(
    video: AnnotatedVideo, spec: Normalization, codes: Sequence[ChannelCode] = ()
) -> Statistics | None:
    """The stack statistics of a ``scope="stack"`` normalization (None for the others),
    from `unetrt.normalize.STACK_SAMPLE_FRAMES` evenly spaced frames of the video, with
    the inference form of the channel `codes`, as inference computes them."""
    from ..normalize import sample_statistics

    if not spec.needs_stack_statistics:
        return None
    frames = video.frames
    if codes:
        return sample_statistics(lambda i: select_channels(frames[i], codes), len(frames), spec)
    return sample_statistics(frames.__getitem__, len(frames), spec)


def normalize_video(
    video: AnnotatedVideo,
    spec: Normalization,
    positions: Iterable[int],
    codes: Sequence[ChannelCode] = (),
) -> dict[int, np.ndarray]:
    """Normalize some frames of a video exactly as inference does.

    Args:
        video: The video.
        spec: The normalization (`video_statistics` for ``scope="stack"``).
        positions: Which frames to normalize.
        codes: Channel codes (inference form): the model's channels of each raw frame
            are normalized, (H, W, len(codes)) for several.

    Returns:
        float32 frames by position.
    """
    from ..normalize import normalize_frame

    stats = video_statistics(video, spec, codes)
    if codes:
        return {
            i: normalize_frame(select_channels(video.frames[i], codes), spec, stats)
            for i in positions
        }
    return {i: normalize_frame(video.frames[i], spec, stats) for i in positions}


@dataclass(frozen=True)
class TargetSpec:
    """What a batch's ``y`` holds and how it is encoded for the loss.

    Attributes:
        kind: ``"segmentation"`` or ``"contours"`` (see `make_target`).
        encoding: ``"mask"``: foreground (batch, H, W, 1), with the weight map as a
            second channel when ``border_weights`` is set; ``"sparse"``: class ids
            (batch, H, W, 1); ``"one_hot"``: (batch, H, W, classes); ``"two_heads"``:
            ``{"mask": foreground, "target": contour}``, each (batch, H, W, 1).
        contour_width: Contour thickness in pixels.
        border_weights: ``(w0, sigma)`` of the U-Net border weight map, or None.
    """

    kind: str = "segmentation"
    encoding: str = "mask"
    contour_width: int = 2
    border_weights: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.kind not in TARGETS:
            raise ConfigError(f"datagen_type must be one of {TARGETS}, got {self.kind!r}")
        if self.encoding not in ENCODINGS:
            raise ConfigError(f"target encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        if self.border_weights is not None and self.encoding != "mask":
            raise ConfigError("border weight maps go with a one-channel mask target only")

    @property
    def classes(self) -> int:
        """Classes of the class map, background included."""
        return 3 if self.kind == "contours" else 2

    def encode(self, classes: np.ndarray, weights: np.ndarray | None) -> Any:
        """Encode class maps (batch, H, W) and weight maps for the loss."""
        y = classes[..., None]
        if self.encoding == "sparse":
            return y.astype(np.float32)
        if self.encoding == "one_hot":
            return np.eye(self.classes, dtype=np.float32)[classes]
        mask = (y > 0).astype(np.float32)
        if self.encoding == "two_heads":
            return {"mask": mask, "target": (y == 2).astype(np.float32)}
        if weights is None:
            return mask
        return np.concatenate([mask, weights[..., None].astype(np.float32)], axis=-1)


@dataclass(frozen=True)
class _Sample:
    """One annotated frame, ready to cut patches from."""

    clip: tuple[np.ndarray, ...]  # normalized frames, the annotated one last (raw: deferred)
    target: np.ndarray  # uint8 class map
    weights: np.ndarray | None
    foreground: np.ndarray  # flat indices of target > 0
    video: AnnotatedVideo | None = None  # the raw frames' video, when deferred


def _prepare(
    videos: Sequence[AnnotatedVideo],
    spec: Normalization,
    target: TargetSpec,
    time_steps: int,
    codes: Sequence[ChannelCode] = (),
    defer: bool = False,
) -> list[_Sample]:
    """Normalize the frames the samples need (once) and build targets and weights.

    With channel `codes` the model's channels of each frame are normalized; with `defer`
    the raw frames are kept instead, to be selected and normalized per draw."""
    if time_steps > 1:
        for video in videos:
            if len({f.shape for f in video.frames}) != 1 or len(video.frames) < 2:
                raise InputError(
                    f"{video.name}: clips of {time_steps} frames need a video of "
                    f"same-size frames; this is a single image"
                )
    samples = []
    for video in videos:
        clips = {t: [max(t - k, 0) for k in range(time_steps - 1, -1, -1)] for t in video.masks}
        needed = sorted({i for clip in clips.values() for i in clip})
        if codes:  # every frame: stack statistics may read any of them
            for number, frame in zip(video.numbers, video.frames, strict=True):
                check_raw_shape(frame.shape, codes, f"{video.name} frame {number}")
        frames = (
            {i: video.frames[i] for i in needed}
            if defer
            else normalize_video(video, spec, needed, codes)
        )
        for t in sorted(video.masks):
            labels = video.masks[t]
            classes = make_target(labels, target.kind, target.contour_width)
            weights = None
            if target.border_weights is not None:
                from .losses import unet_border_weights

                instances = labels if np.unique(labels).size > 2 else ndimage.label(labels > 0)[0]
                w0, sigma = target.border_weights
                weights = unet_border_weights(instances, w0=w0, sigma=sigma)
            samples.append(
                _Sample(
                    tuple(frames[i] for i in clips[t]),
                    classes,
                    weights,
                    np.flatnonzero(classes).astype(np.int64),
                    video if defer else None,
                )
            )
    if not samples:
        raise InputError("no annotated frame to train on")
    return samples


class _AnnotatedBatches(keras.utils.PyDataset):
    """What the patch and frame datasets share: prepared samples and batch assembly."""

    def __init__(
        self,
        videos: Sequence[AnnotatedVideo],
        *,
        time_steps: int,
        normalization: Normalization | None,
        target: TargetSpec | None,
        pydataset_options: dict[str, Any],
        codes: Sequence[ChannelCode] = (),
        defer: bool = False,
    ) -> None:
        super().__init__(**pydataset_options)
        if time_steps < 1:
            raise ConfigError(f"time_steps must be >= 1, got {time_steps!r}")
        self.time_steps = time_steps
        self.target = target or TargetSpec()
        self.normalization = normalization or Normalization()
        self.codes = tuple(codes)
        self.channels = len(self.codes) or 1
        self._defer = defer
        self._samples = _prepare(
            videos, self.normalization, self.target, time_steps, self.codes, defer
        )

    @property
    def frames(self) -> int:
        """Annotated frames the batches come from."""
        return len(self._samples)

    def _stack(
        self,
        images: list[np.ndarray],
        classes: list[np.ndarray],
        weights: list[np.ndarray | None],
    ) -> tuple[np.ndarray, Any]:
        # images: (time_steps * channels, rows, cols) planes each, time major
        x = np.stack(images).astype(np.float32, copy=False)
        b, _, rows, cols = x.shape
        x = x.reshape(b, self.time_steps, self.channels, rows, cols).transpose(0, 1, 3, 4, 2)
        if self.time_steps == 1:
            x = x[:, 0]  # (batch, H, W, 1) for frame models
        w = None if weights[0] is None else np.stack([w for w in weights if w is not None])
        return x, self.target.encode(np.stack(classes), w)


def _planes(clip: Sequence[np.ndarray]) -> list[np.ndarray]:
    """A clip's frames (rows, cols[, channels]) as planes, time major: every plane gets
    the same geometry in `augment_patch`."""
    if clip[0].ndim == 2:
        return list(clip)
    return [frame[..., k] for frame in clip for k in range(frame.shape[-1])]


#: Batch ``i`` of epoch ``e`` draws its channel codes from the seed ``(seed, e, i,
#: CHANNEL_DRAWS)``, its patches and augmentation from ``(seed, e, i)``.
CHANNEL_DRAWS = 1


class PatchDataset(_AnnotatedBatches):
    """Random, augmented training patches as a Keras ``PyDataset`` of (x, y) batches.

    An epoch visits every annotated frame once in random order; a batch holds
    ``batch_size`` frames with ``patches_per_frame`` patches each (the seed's
    ``datagen_batch_size`` and ``datagen_patch_batch``). The last batch is filled up
    with frames from the start of the epoch, so every batch has the same shape.
    Batch ``i`` of epoch ``e`` depends only on ``(seed, e, i)``: the same seed gives
    the same batches, in any order and with any number of workers.

    ``x`` is (batch, rows, cols, channels) float32 (one channel, or one per channel
    code), or (batch, time_steps, rows, cols, channels) for clips, whose frames are the
    annotated frame and the ``time_steps - 1`` frames before it (the first frame
    repeated before the start of the video), all cut at the same place with the same
    transform. ``y`` is encoded by ``target``.
    """

    def __init__(
        self,
        videos: Sequence[AnnotatedVideo],
        *,
        patch_shape: tuple[int, int],
        batch_size: int = 4,
        patches_per_frame: int = 1,
        time_steps: int = 1,
        normalization: Normalization | None = None,
        target: TargetSpec | None = None,
        sampler: PatchSampler | None = None,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        fixed: bool = False,
        steps: int | None = None,
        codes: Sequence[ChannelCode] = (),
        **pydataset_options: Any,
    ) -> None:
        """Prepare the frames (normalization, targets, weights) once.

        Args:
            videos: Annotated videos (see `load_annotated`).
            patch_shape: Patch (rows, cols).
            batch_size: Frames per batch.
            patches_per_frame: Patches cut from each frame of a batch.
            time_steps: Frames per clip (1 for frame models).
            normalization: Intensity normalization (`Normalization()` if None).
            target: Target kind and encoding (`TargetSpec()` if None).
            sampler: Patch-centre sampler (uniform if None).
            augment: Augmentation (`AugmentConfig()` if None).
            seed: Seed of the frame order, patch centres and augmentation.
            fixed: Draw the same batches every epoch (validation patches).
            steps: Batches per epoch; default one pass over the frames. More batches go
                round the (shuffled) frames again, with new patches and augmentation.
            codes: Channel codes (``data_channels``): the model's channels of each raw
                frame, drawn per patch (random picks, merge dropout; the frames then
                normalized per patch) and blanked per patch (channel dropout), except
                for ``fixed`` batches, which take the inference form.
            **pydataset_options: ``workers``, ``use_multiprocessing``, ``max_queue_size``.

        Raises:
            ConfigError: On invalid sizes.
            InputError: If the data cannot make clips or has no annotated frame.
        """
        for name, value in (("batch_size", batch_size), ("patches_per_frame", patches_per_frame)):
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value!r}")
        if len(patch_shape) != 2 or min(patch_shape) < 1:
            raise ConfigError(f"patch shape must be two positive sizes, got {patch_shape!r}")
        super().__init__(
            videos,
            time_steps=time_steps,
            normalization=normalization,
            target=target,
            pydataset_options=pydataset_options,
            codes=codes,
            defer=is_random(codes) and not fixed,
        )
        self.patch_shape = (int(patch_shape[0]), int(patch_shape[1]))
        self.batch_size = batch_size
        self.patches_per_frame = patches_per_frame
        self.sampler = sampler or PatchSampler()
        self.augment = AugmentConfig() if augment is None else augment
        self.seed = seed
        self.fixed = fixed
        self.epoch = 0
        if steps is not None and steps < 1:
            raise ConfigError(f"steps per epoch must be >= 1, got {steps!r}")
        self.steps = steps or math.ceil(self.frames / self.batch_size)
        self._stack_stats: dict[tuple[int, tuple[ChannelCode, ...]], Statistics | None] = {}
        #: What looks wrong in the data (see `mask_warnings`), for the run's summary.
        self.warnings: list[str] = []

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> tuple[np.ndarray, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of a dataset of {len(self)} batches")
        order = np.random.default_rng((self.seed, self.epoch)).permutation(self.frames)
        first = index * self.batch_size
        picks = order.take(range(first, first + self.batch_size), mode="wrap")
        rng = np.random.default_rng((self.seed, self.epoch, index))
        # The channel draws have their own stream: they do not move with the sampler's
        # and the augmentation's draws.
        draws = np.random.default_rng((self.seed, self.epoch, index, CHANNEL_DRAWS))
        images, classes, weights = [], [], []
        for pick in picks:
            sample = self._samples[pick]
            for _ in range(self.patches_per_frame):
                clip = self._drawn_clip(sample, draws)
                centre = self.sampler.sample_centre(sample.foreground, sample.target.shape, rng)
                image, target, weight = augment_patch(
                    clip,
                    sample.target,
                    sample.weights,
                    config=self.augment,
                    rng=rng,
                    shape=self.patch_shape,
                    centre=centre,
                )
                assert target is not None  # a mask went in
                if self.codes and not self.fixed:
                    drop = blanked(self.codes, draws)
                    image.reshape(self.time_steps, self.channels, *image.shape[1:])[:, drop] = 0
                images.append(image)
                classes.append(target)
                weights.append(weight)
        return self._stack(images, classes, weights)

    def _drawn_clip(self, sample: _Sample, rng: np.random.Generator) -> list[np.ndarray]:
        """The sample's planes for one patch: its channels drawn and normalized now when
        the codes draw, else as prepared."""
        clip = sample.clip
        if self._defer:
            from ..normalize import normalize_frame

            drawn = draw(self.codes, rng)
            stats = self._stack_statistics(sample, drawn)
            clip = tuple(
                normalize_frame(select_channels(f, drawn), self.normalization, stats) for f in clip
            )
        return _planes(clip)

    def _stack_statistics(
        self, sample: _Sample, drawn: tuple[ChannelCode, ...]
    ) -> Statistics | None:
        """A deferred sample's stack statistics for the channels drawn (computed once per
        video and draw: a drawn channel is normalized with its own statistics)."""
        assert sample.video is not None
        key = (id(sample.video), drawn)
        if key not in self._stack_stats:
            self._stack_stats[key] = video_statistics(sample.video, self.normalization, drawn)
        return self._stack_stats[key]

    def on_epoch_end(self) -> None:
        """Move to the next epoch's frame order and patches (unless ``fixed``)."""
        if not self.fixed:
            self.epoch += 1


class FrameDataset(_AnnotatedBatches):
    """Whole annotated frames, one per batch, for validation.

    Each frame (or clip) is cropped at the top left to the largest multiple of
    ``alignment`` the model accepts; nothing is augmented.
    """

    def __init__(
        self,
        videos: Sequence[AnnotatedVideo],
        *,
        alignment: int = 1,
        time_steps: int = 1,
        normalization: Normalization | None = None,
        target: TargetSpec | None = None,
        codes: Sequence[ChannelCode] = (),
        **pydataset_options: Any,
    ) -> None:
        """Prepare the frames (normalization, targets, weights) once.

        Args:
            videos: Annotated videos (see `load_annotated`).
            alignment: Frame sizes are cropped to multiples of this (``2**pools``).
            time_steps: Frames per clip (1 for frame models).
            normalization: Intensity normalization (`Normalization()` if None).
            target: Target kind and encoding (`TargetSpec()` if None).
            codes: Channel codes (``data_channels``), in their inference form.
            **pydataset_options: ``workers``, ``use_multiprocessing``, ``max_queue_size``.

        Raises:
            InputError: If a frame is smaller than ``alignment``.
        """
        super().__init__(
            videos,
            time_steps=time_steps,
            normalization=normalization,
            target=target,
            pydataset_options=pydataset_options,
            codes=codes,
        )
        self.alignment = alignment
        for sample in self._samples:
            if min(sample.target.shape) < alignment:
                raise InputError(
                    f"a validation frame of shape {sample.target.shape} is smaller than "
                    f"the model's alignment {alignment}"
                )

    def __len__(self) -> int:
        return self.frames

    def __getitem__(self, index: int) -> tuple[np.ndarray, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} of a dataset of {len(self)} frames")
        sample = self._samples[index]
        rows, cols = (s - s % self.alignment for s in sample.target.shape)
        clip = np.stack(_planes([f[:rows, :cols] for f in sample.clip]))
        weights = None if sample.weights is None else sample.weights[:rows, :cols]
        return self._stack([clip], [sample.target[:rows, :cols]], [weights])


def build_datasets(
    config: TrainConfig, **pydataset_options: Any
) -> tuple[PatchDataset, PatchDataset | FrameDataset | None]:
    """The training and validation datasets a configuration describes.

    Validation data comes from ``data_val_images`` / ``data_val_masks`` (same layout
    as training), or from the last ``data_val_fraction`` of the training frames, or
    is None. ``data_exclude_frames`` applies to the training data only, so a held-out
    set (e.g. the gold truth) can be both excluded from training and validated on.

    Args:
        config: The validated configuration.
        **pydataset_options: ``workers``, ``use_multiprocessing``, ``max_queue_size``.

    Returns:
        ``(train, validation)``.

    Raises:
        ConfigError: If the configuration does not fit the data.
        InputError: If the data cannot be read.
    """
    exclude = config.data_exclude_frames
    numbers = numbers_in_folder(exclude) if isinstance(exclude, str) else exclude
    layout = config.data_format
    codes = config.channel_codes
    multichannel = bool(codes)
    train = load_annotated(
        layout, config.data_train_images, config.data_train_masks, numbers, multichannel
    )
    val: list[AnnotatedVideo] = []
    if config.data_val_images is not None:
        val = load_annotated(
            layout, config.data_val_images, config.data_val_masks, multichannel=multichannel
        )
    elif config.data_val_fraction > 0:
        train, val = split_validation(train, config.data_val_fraction)
    weights = None
    if config.datagen_border_weights:
        weights = (config.datagen_border_w0, config.datagen_border_sigma)
    target = TargetSpec(
        config.datagen_type, config.target_encoding, config.datagen_contour_width, weights
    )
    time_steps = config.time_steps or 1
    patches: dict[str, Any] = {
        "patch_shape": config.datagen_dim_size,
        "batch_size": config.datagen_batch_size,
        "patches_per_frame": config.datagen_patch_batch,
        "time_steps": time_steps,
        "normalization": config.normalization,
        "target": target,
        "sampler": config.sampler,
        "codes": codes,
    }
    steps = config.steps_per_epoch(sum(len(video.masks) for video in train))
    train_set = PatchDataset(
        train,
        augment=config.augmentation,
        seed=config.data_seed,
        steps=steps,
        **patches,
        **pydataset_options,
    )
    train_set.warnings = mask_warnings(train)
    if not val:
        return train_set, None
    if config.data_val_mode == "patches":
        # a seed of its own so validation patches differ from any training epoch's
        val_set: PatchDataset | FrameDataset = PatchDataset(
            val,
            augment=AugmentConfig.off(),
            seed=config.data_seed + 1,
            fixed=True,
            **patches,
            **pydataset_options,
        )
    else:
        val_set = FrameDataset(
            val,
            alignment=config.alignment,
            time_steps=time_steps,
            normalization=config.normalization,
            target=target,
            codes=codes,
            **pydataset_options,
        )
    return train_set, val_set


#: A mask with more distinct values than this over mostly non-zero pixels looks like an
#: intensity image, not a mask or a label image.
_IMAGE_LIKE_VALUES = 64


def mask_warnings(videos: Sequence[AnnotatedVideo]) -> list[str]:
    """What looks wrong in the training masks, one line each (empty, all foreground,
    or an image rather than a mask); training goes on, the summary says it."""
    empty, full, image_like = [], [], []
    for video in videos:
        for i, mask in video.masks.items():
            where = f"{video.name} frame {video.numbers[i]}"
            share = np.count_nonzero(mask) / mask.size
            if share == 0:
                empty.append(where)
            elif share > 0.5 and len(np.unique(mask)) > _IMAGE_LIKE_VALUES:
                image_like.append(where)
            elif share > 0.95:
                full.append(where)
    found = []
    for names, what in (
        (empty, "are empty (no foreground)"),
        (full, "are almost all foreground"),
        (image_like, "look like images, not masks or labels"),
    ):
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            found.append(f"{len(names)} training masks {what}: {shown}")
    return found
