"""Lazy frame readers: multi-page TIFF, single images, folders and glob patterns.

Reading never loads a whole stack. `open_frames` returns a `FrameSource` that reads one
frame at a time, from a multi-page TIFF (classic or BigTIFF, ImageJ hyperstack,
OME-TIFF, compressed or not), a single TIFF/PNG image, a folder of single-frame images
or a glob pattern. Every stack is seen as 2D + time: frames of shape (H, W) or
(H, W, C) with at most 4 channels.

Memory: pixel data is read page by page and never cached. tifffile keeps a small
per-page record (a file offset, and for most files a `TiffFrame` of a few hundred
bytes), so a 100 000-frame stack costs some tens of MB of bookkeeping, independent of
the frame size. Uncompressed contiguous stacks are read by file offset instead.

The file-name rules live here too, for everyone who lists or pairs frame files:
`IMAGE_SUFFIXES` and `frame_number` (the number in a name such as ``t010.tif``).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import math
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import tifffile

from ..closeable import Closeable
from ..errors import InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_CHANNELS",
    "READABLE_DTYPES",
    "FrameSource",
    "frame_number",
    "open_frames",
]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
MAX_CHANNELS = 4
# Dtypes handed on to the normalizer; 64-bit integers and complex numbers have no
# faithful float32 meaning, float16 is rare enough to ask for a conversion instead.
READABLE_DTYPES = frozenset(
    map(
        np.dtype,
        ("bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64"),
    )
)

# A group of digits in a file name; capturing, so `re.split` keeps the numbers.
_DIGITS = re.compile(r"(\d+)")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TIME_AXES = "TIQ"  # time, generic image sequence, unknown: all are frames in time
_CHANNEL_AXES = "CS"  # channels stored as pages or as samples within a page
# tifffile reports a broken IFD chain or inconsistent ImageJ/shaped metadata by logging
# an error and returning what it could parse; these fragments identify those messages.
_CORRUPTION_HINTS = ("page offset", "offset to page", "tag list of page", "corrupted file")


def open_frames(source: str | os.PathLike[str], frames: slice | None = None) -> FrameSource:
    """Open a stack, image, folder or glob pattern for lazy frame-by-frame reading.

    Args:
        source: A multi-page or single-frame TIFF, a PNG, an OME-Zarr image (needs
            ``unetrt[zarr]``), a folder of single-frame TIFF/PNG files (sorted
            naturally, so ``t2`` comes before ``t10``; hidden files are skipped), or a
            glob pattern such as ``"frames/t*.tif"``.
        frames: Optional selection ``start:stop:step`` (positive step) applied lazily;
            bounds outside the stack are an error rather than silently clipped.

    Returns:
        A `FrameSource`; use it as a context manager so the file is closed.

    Raises:
        InputError: If the source is missing, unreadable, corrupt, not 2D + time, has
            an unsupported dtype, or the selection is out of range.
    """
    path = Path(source)
    if path.is_dir():
        from .omezarr import is_zarr, open_zarr  # zarr only for Zarr inputs

        if is_zarr(path):
            return open_zarr(path, frames)
        files = sorted(
            (
                p
                for p in path.iterdir()
                if p.is_file() and not p.name.startswith(".") and _is_image_name(p)
            ),
            key=lambda p: _natural_key(p.name),
        )
        if not files:
            raise InputError(f"folder {path} contains no TIFF or PNG images")
        return _ImageSequence(path, path.name, files, frames)
    if path.is_file():
        if _sniff(path) == _PNG_MAGIC:
            return _ImageSequence(path, path.name, [path], frames)
        return _TiffStack(path, frames)
    pattern = os.fspath(source)
    if any(c in pattern for c in "*?["):
        matches = sorted(
            (Path(p) for p in glob.glob(pattern, recursive=True)),
            key=lambda p: _natural_key(str(p)),
        )
        files = [p for p in matches if p.is_file() and _is_image_name(p)]
        if not files:
            raise InputError(f"no TIFF or PNG files match the pattern {pattern}")
        return _ImageSequence(path, pattern, files, frames)
    raise InputError(f"no such file or folder: {path}")


class FrameSource(Closeable):
    """A lazily read sequence of frames (2D + time).

    Attributes:
        path: The source as given (file, folder or glob pattern).
        name: A short name for messages: file name, folder name or the pattern.
        frame_shape: ``(H, W)`` or ``(H, W, C)`` with ``C <= 4``.
        dtype: Data type of every frame.
        axes: The layout found in the source, in tifffile's axis letters (``"TYX"``,
            ``"TCYX"``, ``"YXS"``...), singleton axes dropped.
        files: The files frames are read from, in frame order (one for a stack).

    Frames are C-contiguous arrays in native byte order, read one at a time.
    Iteration and `read` may be called from different threads (e.g. `prefetch` and the
    stack-statistics sampler); reads are serialized.
    """

    path: Path
    name: str
    frame_shape: tuple[int, ...]
    dtype: np.dtype[Any]
    axes: str
    files: tuple[Path, ...]

    def __init__(self, count: int, frames: slice | None) -> None:
        self._selected = _select(frames, count, self.name)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._selected)

    def __iter__(self) -> Iterator[np.ndarray]:
        for index in self._selected:
            yield self._read_locked(index)

    def read(self, i: int) -> np.ndarray:
        """Read frame `i` of the selection (negative indices count from the end).

        Raises:
            IndexError: If `i` is outside the selection.
            InputError: If the frame cannot be read (corrupt or truncated data).
        """
        return self._read_locked(self._selected[i])

    def describe_frame(self, i: int) -> str:
        """How to name frame `i` of the selection in a message.

        For example ``"frame 12 of video.tif"`` for a stack, or ``"frame 12 (t012.tif)
        of frames"`` for a folder or glob pattern of files. The number shown is the
        frame's number in the source (counted from 0, as ``frames=`` counts), not its
        position in the selection: with ``frames=slice(5, 10)``, ``describe_frame(0)``
        is ``"frame 5 of ..."``, so the message points at the frame the user can find.

        Raises:
            IndexError: If `i` is outside the selection (negative indices count from
                the end).
        """
        return self._describe(self._selected[i])

    def close(self) -> None:
        """Release the open file, if any; further reads fail."""

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name!r}: {len(self)} frames of "
            f"{self.frame_shape} {self.dtype}>"
        )

    def _read_locked(self, index: int) -> np.ndarray:
        with self._lock:
            return self._read(index)

    def _read(self, index: int) -> np.ndarray:
        """Read frame `index` of the whole source (before selection)."""
        raise NotImplementedError

    def _describe(self, index: int) -> str:
        """Name frame `index` of the whole source (before selection)."""
        return f"frame {index} of {self.name}"


class _TiffStack(FrameSource):
    """All frames of one TIFF file, read page by page from its first series."""

    def __init__(self, path: Path, frames: slice | None) -> None:
        self.path = path
        self.name = path.name
        self.files = (path,)
        self._tif = _open_tiff(path)
        try:
            self._layout(path)
            super().__init__(self._count, frames)
        except BaseException:
            self._tif.close()
            raise

    def _layout(self, path: Path) -> None:
        """Map the series' axes onto frames and work out which pages make a frame."""
        tif = self._tif
        with _tifffile_errors() as problems:
            series_list = tif.series
        _raise_if_corrupt(path, problems)
        if not series_list or not series_list[0].shape:
            raise InputError(f"{path} contains no images; it may be truncated or corrupt")
        if _one_page_series(series_list):
            # tifffile's writer, called once per frame with its default metadata, stores
            # each frame as a series of its own: read the pages as one time series
            # instead of the first frame alone.
            tif.close()
            self._tif = tif = _open_tiff(path, is_shaped=False)
            with _tifffile_errors() as problems:
                series_list = tif.series
            _raise_if_corrupt(path, problems)
        series = series_list[0]
        self.axes = series.axes
        dtype = np.dtype(series.dtype)
        check_dtype(dtype, path)
        self.dtype = dtype.newbyteorder("=")

        shape = tuple(series.get_shape(False))
        axes = series.get_axes(False)
        keyframe = series.keyframe
        # Not len(series): a truncated ImageJ series (one IFD for the whole stack) has
        # length 1 but is read page by page through `dataoffset`.
        npages = math.prod(shape) // max(1, math.prod(keyframe.shape))
        # The leading axes index pages, the rest lie inside one page.
        split = next(
            (k for k in range(len(shape) + 1) if math.prod(shape[:k]) == npages),
            None,
        )
        if split is None or math.prod(shape[split:]) != math.prod(keyframe.shape):
            raise InputError(
                f"{path}: cannot map its pages onto the series of shape "
                f"{series.shape} (axes {series.axes})"
            )
        time = [i for i, a in enumerate(axes) if a in _TIME_AXES and shape[i] > 1]
        chan = [i for i, a in enumerate(axes) if a in _CHANNEL_AXES and shape[i] > 1]
        other = [
            i
            for i, a in enumerate(axes)
            if shape[i] > 1 and a not in _TIME_AXES + _CHANNEL_AXES + "YX"
        ]
        found = f"shape {series.shape} (axes {series.axes})"
        if "Z" in axes and other == [axes.index("Z")] and not time:
            raise InputError(
                f"{path} is a Z stack of {found}; unetrt segments 2D + time, not "
                "volumes. If the slices are time points, re-save the stack with them "
                "as frames (Fiji: Image > Hyperstacks > Re-order Hyperstack)"
            )
        if other or len(time) > 1 or len(chan) > 1:
            raise InputError(
                f"{path} has {found}; unetrt segments 2D + time, i.e. one time axis "
                "(T), optionally one channel axis (C), and Y, X"
            )
        if time and time[0] >= split:
            raise InputError(
                f"{path}: frames stored inside one TIFF page ({found}) are not supported"
            )
        if chan and shape[chan[0]] > MAX_CHANNELS:
            raise InputError(
                f"{path} has {shape[chan[0]]} channels ({found}); unetrt reads at most "
                f"{MAX_CHANNELS} channels per frame"
            )

        self._shape = shape
        self._split = split
        # A frame's rows (or columns) spread over pages, as tifffile writes a (Y, X, C)
        # array with photometric="minisblack" and axes "YXC": the page holds (X, C).
        # Such a frame is read from the whole series and its axes put in order.
        spread = any(a in "YX" and shape[i] > 1 for i, a in enumerate(axes[:split]))
        self._spread_axes: tuple[str, tuple[int, ...]] | None = None
        if spread:
            order = [axes.index("Y"), axes.index("X"), *chan]
            self._spread_axes = (axes, tuple(order))
        self._time_axis = time[0] if time else None
        self._page_chan_axis = chan[0] if chan and chan[0] < split else None
        self._page_size = math.prod(keyframe.shape)
        # Inside a page keep Y, X and a channel axis; drop the singletons.
        page_axes = axes[split:]
        page_shape = shape[split:]
        keep = [i for i, a in enumerate(page_axes) if a in "YX" or (split + i in chan)]
        self._page_index = tuple(slice(None) if i in keep else 0 for i in range(len(page_shape)))
        kept_axes = "".join(page_axes[i] for i in keep)
        self._channel_first = len(kept_axes) == 3 and kept_axes[0] in _CHANNEL_AXES
        self._count = shape[self._time_axis] if self._time_axis is not None else 1

        height, width = shape[axes.index("Y")], shape[axes.index("X")]
        self.frame_shape = (height, width, shape[chan[0]]) if chan else (height, width)

        # Uncompressed contiguous data (including ImageJ files > 4 GB that store only
        # their first IFD) is read by offset: no page records are needed at all.
        self._dataoffset = series.dataoffset
        self._page_nbytes = keyframe.nbytes
        self._file_dtype = dtype.newbyteorder(tif.byteorder)
        if self._dataoffset is not None:
            end = self._dataoffset + npages * self._page_nbytes
            if end > tif.filehandle.size:
                raise InputError(
                    f"{path} is truncated: its image data should end at byte {end}, "
                    f"but the file has {tif.filehandle.size} bytes"
                )
        self._series = series

    def close(self) -> None:
        with self._lock:
            self._tif.close()

    def _read(self, index: int) -> np.ndarray:
        if self._spread_axes is not None:
            return self._read_spread(index)
        pos = [0] * self._split
        if self._time_axis is not None:
            pos[self._time_axis] = index
        if self._page_chan_axis is None:
            planes = [self._read_page(_ravel(pos, self._shape[: self._split]), index)]
        else:
            planes = []
            for c in range(self._shape[self._page_chan_axis]):
                pos[self._page_chan_axis] = c
                planes.append(self._read_page(_ravel(pos, self._shape[: self._split]), index))
        if len(planes) == 1:
            frame = planes[0]
            if self._channel_first:
                frame = np.moveaxis(frame, 0, -1)
        else:
            frame = np.stack(planes, axis=-1)
        return np.ascontiguousarray(frame, dtype=self.dtype)

    def _read_spread(self, index: int) -> np.ndarray:
        assert self._spread_axes is not None
        axes, order = self._spread_axes
        with _tifffile_errors() as problems:
            data = np.asarray(self._series.asarray()).reshape(self._shape)
        _raise_if_corrupt(Path(self.path), problems)
        where = [slice(None) if i in order else 0 for i in range(len(axes))]
        if self._time_axis is not None:
            where[self._time_axis] = index
        kept = [i for i in range(len(axes)) if i in order]
        frame = data[tuple(where)].transpose([kept.index(i) for i in order])
        return np.ascontiguousarray(frame, dtype=self.dtype)

    def _read_page(self, page: int, frame: int) -> np.ndarray:
        try:
            if self._dataoffset is not None:
                data = self._tif.filehandle.read_array(
                    self._file_dtype,
                    count=self._page_size,
                    offset=self._dataoffset + page * self._page_nbytes,
                )
            else:
                tiffpage = self._series[page]
                if tiffpage is None:
                    raise InputError(f"frame {frame} of {self.path} is missing from the file")
                data = tiffpage.asarray()
        except InputError:
            raise
        except Exception as exc:  # tifffile and the codecs raise many types for bad data
            raise InputError(f"frame {frame} of {self.path} could not be read: {exc}") from exc
        return data.reshape(self._shape[self._split :])[self._page_index]


class _ImageSequence(FrameSource):
    """One frame per file: a folder, a glob pattern, or a single PNG."""

    def __init__(self, path: Path, name: str, files: list[Path], frames: slice | None) -> None:
        self.path = path
        self.name = name
        super().__init__(len(files), frames)
        self._all_files = files
        self.files = tuple(files[i] for i in self._selected)
        first = _read_image_file(self.files[0])
        self.frame_shape = first.shape
        self.dtype = first.dtype
        self.axes = "T" + ("YXS" if first.ndim == 3 else "YX")

    def _describe(self, index: int) -> str:
        if self._all_files == [self.path]:  # a single image: its name is already shown
            return super()._describe(index)
        return f"frame {index} ({self._all_files[index].name}) of {self.name}"

    def _read(self, index: int) -> np.ndarray:
        file = self._all_files[index]
        frame = _read_image_file(file)
        if frame.shape != self.frame_shape or frame.dtype != self.dtype:
            raise InputError(
                f"{file} holds a {frame.shape} {frame.dtype} image but {self.files[0]} "
                f"holds {self.frame_shape} {self.dtype}; all frames must match"
            )
        return frame


def _read_image_file(path: Path) -> np.ndarray:
    """Read the single frame of a TIFF or PNG file as a checked, contiguous array."""
    try:
        magic = _sniff(path)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if magic != _PNG_MAGIC:
        with _TiffStack(path, None) as stack:
            if len(stack) != 1:
                raise InputError(
                    f"{path} holds {len(stack)} frames; a folder or pattern must "
                    "list single-frame images"
                )
            return stack.read(0)
    try:
        frame = imagecodecs.png_decode(path.read_bytes())
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except Exception as exc:  # imagecodecs raises PngError or ValueError for bad data
        raise InputError(f"{path} is not a readable PNG image: {exc}") from exc
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    check_dtype(frame.dtype, path)
    return np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("="))


def _one_page_series(series_list: list[Any]) -> bool:
    """True for several series of one page each, all of one shape and dtype."""
    if len(series_list) < 2:
        return False
    first = series_list[0]
    return all(
        len(s.pages) == 1 and s.shape == first.shape and s.dtype == first.dtype for s in series_list
    )


def _open_tiff(path: Path, **options: Any) -> tifffile.TiffFile:
    try:
        with _tifffile_errors() as problems:
            tif = tifffile.TiffFile(path, **options)
    except tifffile.TiffFileError as exc:
        raise InputError(f"{path} is not a TIFF or PNG image ({exc})") from exc
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except Exception as exc:  # struct/index errors from a mangled header
        raise InputError(f"{path} is a corrupt TIFF file: {exc!r}") from exc
    try:
        _raise_if_corrupt(path, problems)
    except InputError:
        tif.close()
        raise
    return tif


class _ErrorCollector(logging.Handler):
    """Collects tifffile's error log records emitted by the current thread."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def _tifffile_errors() -> Iterator[list[str]]:
    """Capture tifffile's error messages: it logs, rather than raises, when an IFD chain
    is broken or series metadata does not fit the file."""
    handler = _ErrorCollector()
    logger = logging.getLogger("tifffile")
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def _raise_if_corrupt(path: Path, problems: list[str]) -> None:
    for message in problems:
        if any(hint in message for hint in _CORRUPTION_HINTS):
            detail = re.sub(r"^<[^>]*>\s*", "", message)
            raise InputError(f"{path} is truncated or corrupt ({detail})")


def check_dtype(dtype: np.dtype[Any], path: Path) -> None:
    """Refuse pixels of a type unetrt does not read (`READABLE_DTYPES`), naming `path`."""
    if dtype.newbyteorder("=") not in READABLE_DTYPES:
        raise InputError(
            f"{path} has pixels of type {dtype}, which unetrt does not read; "
            "use uint8, uint16, int16, uint32, float32 or float64"
        )


def _select(frames: slice | None, count: int, name: str) -> range:
    everything = range(count)
    if frames is None:
        return everything
    parts = [frames.start, frames.stop] + ([] if frames.step is None else [frames.step])
    text = ":".join("" if v is None else str(v) for v in parts)
    try:
        start, stop, step = (
            None if v is None else int(v) for v in (frames.start, frames.stop, frames.step)
        )
    except (TypeError, ValueError) as exc:
        raise InputError(f"frames {text} must be whole numbers") from exc
    if step is not None and step <= 0:
        raise InputError(f"frames {text}: the step must be positive, got {step}")
    for bound in (start, stop):
        if bound is not None and not -count <= bound <= count:
            raise InputError(f"frames {text} is out of range for {name}, which has {count} frames")
    selected = everything[start:stop:step]
    if not selected:
        raise InputError(f"frames {text} selects no frames of {name}, which has {count} frames")
    return selected


def _ravel(pos: list[int], shape: tuple[int, ...]) -> int:
    index = 0
    for p, n in zip(pos, shape, strict=True):
        index = index * n + p
    return index


def _sniff(path: Path) -> bytes:
    with path.open("rb") as fh:
        return fh.read(8)


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def frame_number(path: str | os.PathLike[str]) -> int | None:
    """The frame number in a file name: its last group of digits (``t010.tif`` -> 10).

    This is the Cell Tracking Challenge rule (``t010.tif`` <-> ``man_seg010.tif``) that
    training data and evaluation both pair frames and masks by; the suffix is ignored.

    Returns:
        The number, or None if the file stem holds no digit.
    """
    digits = _DIGITS.findall(Path(path).stem)
    return int(digits[-1]) if digits else None


def _natural_key(text: str) -> list[tuple[int, int | str]]:
    # (0, number) sorts before (1, text) so keys of mixed parts stay comparable.
    return [(0, int(part)) if part.isdigit() else (1, part.lower()) for part in _DIGITS.split(text)]
