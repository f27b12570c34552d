"""Streaming frame I/O: lazy readers, background prefetch and an atomic mask writer.

Reading never loads a whole stack. `open_frames` returns a `FrameSource` that reads one
frame at a time, from a multi-page TIFF (classic or BigTIFF, ImageJ hyperstack,
OME-TIFF, compressed or not), a single TIFF/PNG image, a folder of single-frame images
or a glob pattern. Every stack is seen as 2D + time: frames of shape (H, W) or
(H, W, C) with at most 4 channels.

Memory: pixel data is read page by page and never cached. tifffile keeps a small
per-page record (a file offset, and for most files a `TiffFrame` of a few hundred
bytes), so a 100 000-frame stack costs some tens of MB of bookkeeping, independent of
the frame size. Uncompressed contiguous stacks are read by file offset instead.

Writing goes through `StackWriter`, which streams frames into a temporary file next to
the output and renames it onto the output only when the whole stack was written.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import math
import os
import queue
import re
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import imagecodecs
import numpy as np
import numpy.typing as npt
import tifffile

from .errors import ConfigError, InputError, OutputError

__all__ = ["FrameSource", "StackWriter", "open_frames", "prefetch"]

T = TypeVar("T")

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

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TIME_AXES = "TIQ"  # time, generic image sequence, unknown: all are frames in time
_CHANNEL_AXES = "CS"  # channels stored as pages or as samples within a page
# tifffile reports a broken IFD chain or inconsistent ImageJ/shaped metadata by logging
# an error and returning what it could parse; these fragments identify those messages.
_CORRUPTION_HINTS = ("page offset", "offset to page", "tag list of page", "corrupted file")


def open_frames(source: str | os.PathLike[str], frames: slice | None = None) -> FrameSource:
    """Open a stack, image, folder or glob pattern for lazy frame-by-frame reading.

    Args:
        source: A multi-page or single-frame TIFF, a PNG, a folder of single-frame
            TIFF/PNG files (sorted naturally, so ``t2`` comes before ``t10``; hidden
            files are skipped), or a glob pattern such as ``"frames/t*.tif"``.
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


class FrameSource:
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

    def close(self) -> None:
        """Release the open file, if any; further reads fail."""

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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
        series = series_list[0]
        self.axes = series.axes
        dtype = np.dtype(series.dtype)
        _check_dtype(dtype, path)
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
    _check_dtype(frame.dtype, path)
    return np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("="))


def _open_tiff(path: Path) -> tifffile.TiffFile:
    try:
        with _tifffile_errors() as problems:
            tif = tifffile.TiffFile(path)
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


def _check_dtype(dtype: np.dtype[Any], path: Path) -> None:
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


def _natural_key(text: str) -> list[tuple[int, int | str]]:
    # (0, number) sorts before (1, text) so keys of mixed parts stay comparable.
    return [
        (0, int(part)) if part.isdigit() else (1, part.lower()) for part in re.split(r"(\d+)", text)
    ]


_ITEM, _DONE, _FAILED = range(3)


def prefetch(iterable: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Produce the items of `iterable` in a background thread, `depth` ahead.

    Reading and decoding the next frames overlaps with the caller's work on the
    current one. Memory stays bounded: at most `depth` items wait in the queue. The
    producer's exception is re-raised in the caller. When the caller stops early
    (``break``, an exception, Ctrl-C) the producer is told to stop and is not waited
    for beyond a short grace period; it is a daemon thread, so it never keeps the
    interpreter alive.

    Args:
        iterable: The items to produce, e.g. a `FrameSource`.
        depth: How many items may be produced ahead of the caller (>= 1).

    Yields:
        The items of `iterable`, in order.
    """
    if depth < 1:
        raise ValueError(f"prefetch depth must be >= 1, got {depth}")
    items: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[int, Any]) -> bool:
        # Time out regularly so a consumer that went away is noticed.
        while not stop.is_set():
            try:
                items.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(iterable)
        try:
            for item in iterator:
                if not put((_ITEM, item)):
                    return
            put((_DONE, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put((_FAILED, exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="unetrt-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            # A timed get keeps Ctrl-C responsive on every platform.
            try:
                kind, value = items.get(timeout=0.1)
            except queue.Empty:
                continue
            if kind == _DONE:
                return
            if kind == _FAILED:
                raise value
            yield value
    finally:
        stop.set()
        worker.join(timeout=1.0)


# Classic TIFF addresses 4 GiB; stay well below it to leave room for IFDs and tags.
_CLASSIC_TIFF_LIMIT = int(3.9 * 2**30)
_IMAGEJ_DTYPES = frozenset(map(np.dtype, ("uint8", "uint16", "int16", "float32")))
COMPRESSIONS = ("none", "zlib", "deflate", "lzw", "zstd")
_RESERVED_METADATA = frozenset({"shape", "axes", "images", "channels", "slices", "frames"})


class StackWriter:
    """Write frames one at a time to a multi-page TIFF, atomically.

    Frames go to a hidden temporary file in the output folder
    (`partial_path`), which replaces `path` only when the writer is
    closed successfully; on any exception (Ctrl-C included) the temporary file is
    deleted and an existing file at `path` is left untouched.

    The result is one series that tifffile reads as ``(T, H, W)`` (``(T, C, H, W)``
    for frames with channels, stored one page per channel). With ``imagej=True`` the
    first page carries an ImageJ hyperstack description (``frames=T``, ``channels=C``)
    so Fiji opens a time series; otherwise a tifffile "shaped" JSON description with
    axes ``TYX``/``TCYX``. Each frame is its own page (and compressed independently), so
    compression and streaming combine; the description is rewritten at close with the
    final frame count.

    Use as a context manager::

        with StackWriter("masks.tif", frame_shape=(512, 512), dtype=np.uint8) as out:
            for mask in masks:
                out.write(mask)

    Args:
        path: Output file.
        frame_shape: ``(H, W)`` or ``(H, W, C)`` of every frame.
        dtype: Data type of every frame.
        bigtiff: Write BigTIFF. ``None`` (default) decides: BigTIFF when `n_frames` is
            unknown (a live acquisition may grow past 4 GiB, and a classic TIFF cannot)
            or when ``n_frames`` frames may exceed about 3.9 GiB; classic TIFF
            otherwise, which every reader (including plain ImageJ) opens.
        n_frames: Expected number of frames, if known; writing more is an error.
        imagej: Write ImageJ hyperstack metadata. ``None`` (default): when the dtype is
            one ImageJ holds (uint8, uint16, int16, float32).
        metadata: Extra description entries, e.g. ``{"finterval": 0.5, "unit": "um"}``
            (ImageJ keys with ``imagej``, any JSON values otherwise).
        compression: ``None``/``"none"``, ``"zlib"`` (= ``"deflate"``), ``"lzw"`` or
            ``"zstd"``. ImageJ itself reads zlib and LZW, not zstd.

    Raises:
        OutputError: If the output folder does not exist or cannot be written.
        ConfigError: If `compression` is unknown or `imagej` is asked for a dtype
            ImageJ cannot hold.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        frame_shape: tuple[int, ...],
        dtype: npt.DTypeLike,
        bigtiff: bool | None = None,
        n_frames: int | None = None,
        imagej: bool | None = None,
        metadata: dict[str, Any] | None = None,
        compression: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.frame_shape = tuple(int(n) for n in frame_shape)
        self.dtype = np.dtype(dtype)
        if len(self.frame_shape) not in (2, 3) or min(self.frame_shape) < 1:
            raise ValueError(f"frame_shape must be (H, W) or (H, W, C), got {frame_shape}")
        if self.dtype.kind not in "biuf":
            raise ValueError(f"cannot write frames of dtype {self.dtype}")
        if n_frames is not None and n_frames < 1:
            raise ValueError(f"n_frames must be >= 1 or None, got {n_frames}")
        reserved = _RESERVED_METADATA & set(metadata or {})
        if reserved:
            raise ValueError(f"metadata keys {sorted(reserved)} are set by StackWriter")
        if compression is not None and compression not in COMPRESSIONS:
            raise ConfigError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
        if imagej is None:
            imagej = self.dtype in _IMAGEJ_DTYPES
        elif imagej and self.dtype not in _IMAGEJ_DTYPES:
            raise ConfigError(
                f"ImageJ files hold uint8, uint16, int16 or float32 pixels, not {self.dtype}"
            )
        frame_bytes = math.prod(self.frame_shape) * self.dtype.itemsize
        if bigtiff is None:
            # Compressed pages can exceed the raw size by a little; IFDs add ~1 kB/page.
            per_frame = frame_bytes + frame_bytes // 64 + 1024
            bigtiff = n_frames is None or n_frames * per_frame > _CLASSIC_TIFF_LIMIT
        self.bigtiff = bigtiff
        self.imagej = imagej
        self.n_frames = n_frames
        self.frames_written = 0
        self._metadata = dict(metadata or {})
        self._compression = None if compression in (None, "none") else compression
        self._channels = self.frame_shape[2] if len(self.frame_shape) == 3 else None

        folder = self.path.parent
        if not folder.is_dir():
            problem = "is not a folder" if folder.exists() else "does not exist"
            raise OutputError(f"cannot write to {self.path}: {folder} {problem}")
        if self.path.is_dir():
            raise OutputError(f"cannot write to {self.path}: it is a folder")
        self._partial = partial_path(self.path)
        try:
            self._writer: tifffile.TiffWriter | None = tifffile.TiffWriter(
                self._partial, bigtiff=bigtiff
            )
        except OSError as exc:
            raise _output_error(self.path, exc) from exc

    def write(self, frame: np.ndarray) -> None:
        """Append one frame.

        Raises:
            ValueError: If the frame's shape or dtype differs from the declared ones, or
                more than `n_frames` frames are written.
            OutputError: If the disk is full or the file cannot be written; the
                partial file is removed.
        """
        if self._writer is None:
            raise ValueError(f"StackWriter for {self.path} is closed")
        if not isinstance(frame, np.ndarray) or frame.shape != self.frame_shape:
            shape = getattr(frame, "shape", type(frame).__name__)
            raise ValueError(f"frame shape {shape} differs from the declared {self.frame_shape}")
        if frame.dtype != self.dtype:
            raise ValueError(f"frame dtype {frame.dtype} differs from the declared {self.dtype}")
        if self.n_frames is not None and self.frames_written >= self.n_frames:
            raise ValueError(f"{self.path} was declared with n_frames={self.n_frames}")
        # Channels are stored as separate pages (TCYX), the layout ImageJ expects.
        pages = frame if self._channels is None else np.moveaxis(frame, -1, 0)
        first = self.frames_written == 0
        try:
            self._writer.write(
                np.ascontiguousarray(pages),
                photometric="minisblack",
                compression=self._compression,
                metadata=None,
                # Provisional until close() rewrites it with the final frame count.
                description=self._description(self.n_frames or 1) if first else None,
                software="unetrt" if first else False,
            )
        except OSError as exc:
            self.abort()
            raise _output_error(self.path, exc) from exc
        except BaseException:
            self.abort()
            raise
        self.frames_written += 1

    def close(self) -> None:
        """Finish the file and move it onto `path` (replacing any existing file).

        Raises:
            ValueError: If no frame was written.
            OutputError: If the file cannot be finished or renamed.
        """
        writer = self._writer
        if writer is None:
            return
        if self.frames_written == 0:
            self.abort()
            raise ValueError(f"no frames were written to {self.path}")
        try:
            writer.overwrite_description(self._description(self.frames_written))
            writer.close()
            self._writer = None
            os.replace(self._partial, self.path)
        except OSError as exc:
            self.abort()
            raise _output_error(self.path, exc) from exc
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Discard everything written so far; `path` is left as it was."""
        writer, self._writer = self._writer, None
        if writer is not None:
            # The file is deleted next, so a failed flush does not matter; it must be
            # closed first because an open file cannot be deleted on Windows.
            with contextlib.suppress(Exception):
                writer.close()
        self._partial.unlink(missing_ok=True)

    def __enter__(self) -> StackWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _description(self, count: int) -> str:
        height, width = self.frame_shape[:2]
        if self._channels is None:
            shape: tuple[int, ...] = (count, height, width)
            axes = "TYX"
        else:
            shape = (count, self._channels, height, width)
            axes = "TCYX"
        if self.imagej:
            return str(tifffile.imagej_description(shape, axes=axes, **self._metadata))
        return json.dumps({"shape": list(shape), "axes": axes, **self._metadata})


def partial_path(path: Path) -> Path:
    """The hidden name an output is written under until it is complete.

    ``.<stem>.partial-<pid><suffix>`` beside `path`: hidden, unique per process, and
    with the suffix kept for writers that check it (Keras wants ``.keras``).
    """
    return path.parent / f".{path.stem}.partial-{os.getpid()}{path.suffix}"


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield `partial_path(path)` to write; rename it onto `path` when the block ends.

    If the block raises (Ctrl-C included), the partial file is deleted and an existing
    file at `path` is left untouched. An `OSError` (full disk, no permission) becomes
    an `OutputError` naming `path`.
    """
    partial = partial_path(path)
    try:
        yield partial
        os.replace(partial, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        partial.unlink(missing_ok=True)


def _output_error(path: Path, exc: OSError) -> OutputError:
    if exc.errno == errno.ENOSPC:
        return OutputError(f"disk full while writing {path}; nothing was written")
    return OutputError(f"cannot write to {path}: {exc.strerror or exc}")
