"""Training data: annotated frames from disk, targets, patch sampling and batches.

Four layouts are read (`LAYOUTS`):

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
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import ConfigError, InputError

LAYOUTS = ("folders", "stacks", "ctc", "seed_csv")
TARGETS = ("segmentation", "contours")
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


# ---------------------------------------------------------------------------- reading
def read_image(path: str | Path) -> np.ndarray:
    """Read one 2D frame or mask (TIFF or PNG) as stored (uint8, uint16, ...).

    Raises:
        InputError: If the file is missing, unreadable or not a single grey 2D image.
    """
    path = Path(path)
    array = _read(path)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        rgb = array[..., :3]
        if not (
            np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
        ):
            raise InputError(f"{path}: colour image; training needs grey frames and masks")
        array = rgb[..., 0]
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise InputError(f"{path}: expected a 2D image, got shape {array.shape}")
    return array


def read_stack(path: str | Path) -> np.ndarray:
    """Read a multi-page TIFF (or a single 2D image) as a (time, rows, cols) array.

    Raises:
        InputError: If the file is missing, unreadable or not 2D + time.
    """
    path = Path(path)
    array = _read(path)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise InputError(f"{path}: expected a 2D + time stack, got shape {array.shape}")
    return array


def _read(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        import imageio.v3 as iio

        return np.asarray(iio.imread(path))
    except Exception as exc:  # any decoder failure is a bad input file
        raise InputError(f"{path}: cannot read image ({exc})") from exc


def frame_number(path: str | Path) -> int | None:
    """The frame number in a file name: its last group of digits (``t010.tif`` -> 10)."""
    digits = re.findall(r"\d+", Path(path).stem)
    return int(digits[-1]) if digits else None


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
        frames: Raw frames in time order, each (rows, cols), as stored on disk.
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
    if mask.shape != image.shape:
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


def load_folders(images: str | Path, masks: str | Path) -> list[AnnotatedVideo]:
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
        frames.append(read_image(path))
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


def load_stacks(images: str | Path, masks: str | Path) -> list[AnnotatedVideo]:
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
        stack, labels = read_stack(image_path), read_stack(mask_path)
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


def load_ctc(images: str | Path, masks: str | Path | None = None) -> list[AnnotatedVideo]:
    """A Cell Tracking Challenge sequence (``t000.tif`` + ``man_seg000.tif``).

    Args:
        images: The sequence folder, or a flat folder holding ``frames/``.
        masks: Mask folder; found with `ctc_mask_folder` if None.

    Raises:
        InputError: If folders are missing or nothing matches.
    """
    images = Path(images)
    frames = images / "frames" if (images / "frames").is_dir() else images
    return load_folders(frames, ctc_mask_folder(images) if masks is None else masks)


def load_seed_csv(root: str | Path) -> list[AnnotatedVideo]:
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
        frames = [read_image(p) for p in paths]
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
) -> list[AnnotatedVideo]:
    """Load annotated videos in any of the `LAYOUTS`.

    Args:
        layout: One of `LAYOUTS`.
        images: Frames folder, stack (or folder of stacks), CTC sequence or seed root.
        masks: Masks folder or stack(s); optional for ``"ctc"``, unused for ``"seed_csv"``.
        exclude_frames: Frame numbers whose masks are never used (e.g. gold truth).

    Returns:
        The videos; those left with no mask after exclusion are dropped.

    Raises:
        ConfigError: On an unknown layout or a missing masks path.
        InputError: If the data cannot be read or nothing is annotated.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"data_format must be one of {LAYOUTS}, got {layout!r}")
    if layout == "ctc":
        videos = load_ctc(images, masks)
    elif layout == "seed_csv":
        videos = load_seed_csv(images)
    elif masks is None:
        raise ConfigError(f"data_format {layout!r} needs a masks path next to {images}")
    elif layout == "folders":
        videos = load_folders(images, masks)
    else:
        videos = load_stacks(images, masks)
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


# -------------------------------------------------------------------- patch sampling
@dataclass(frozen=True)
class PatchSampler:
    """Chooses patch centres, biased toward foreground.

    With probability ``q`` the centre is a foreground pixel drawn uniformly, otherwise
    any pixel drawn uniformly (the patch window is then moved inside the frame).
    ``q`` is either given directly (``foreground_probability``) or follows the seed
    suite's ``datagen_sampling_pdf`` weight ``w``: every foreground pixel is ``w`` times
    as likely a centre as a background pixel, so ``w = 1`` is uniform and a large ``w``
    puts almost every centre on a cell. For a frame with ``F`` foreground and ``B``
    background pixels that is the mixture above with ``q = (w - 1) F / (w F + B)``.
    A frame without foreground always gets a uniform centre.

    Attributes:
        sampling_pdf: The seed's foreground weight ``w >= 1``.
        foreground_probability: ``q`` in [0, 1]; overrides ``sampling_pdf`` when set.
    """

    sampling_pdf: float = 1.0
    foreground_probability: float | None = None

    def __post_init__(self) -> None:
        if not self.sampling_pdf >= 1.0:
            raise ConfigError(
                f"datagen_sampling_pdf is the weight of a foreground pixel relative to a "
                f"background one and must be >= 1 (1 = uniform), got {self.sampling_pdf!r}"
            )
        p = self.foreground_probability
        if p is not None and not 0.0 <= p <= 1.0:
            raise ConfigError(f"datagen_foreground_probability must be in [0, 1], got {p!r}")

    def foreground_share(self, n_foreground: int, n_pixels: int) -> float:
        """Probability ``q`` of drawing the centre among the foreground pixels."""
        if n_foreground == 0:
            return 0.0
        if self.foreground_probability is not None:
            return self.foreground_probability
        w = self.sampling_pdf
        return (w - 1.0) * n_foreground / (w * n_foreground + (n_pixels - n_foreground))

    def sample_centre(
        self, foreground: np.ndarray, shape: tuple[int, int], rng: np.random.Generator
    ) -> tuple[int, int]:
        """Draw a patch centre (row, col).

        Args:
            foreground: Flat indices of the frame's foreground pixels.
            shape: Frame shape (rows, cols).
            rng: Source of randomness.
        """
        n_pixels = shape[0] * shape[1]
        if rng.random() < self.foreground_share(len(foreground), n_pixels):
            flat = int(foreground[rng.integers(len(foreground))])
        else:
            flat = int(rng.integers(n_pixels))
        row, col = divmod(flat, shape[1])
        return row, col
