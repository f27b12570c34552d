"""Follow an acquisition: read frames from a TIFF or a folder while they are being written.

`follow_frames` returns a `FollowedFrames`, which yields each frame once it is complete:
pages appended to a multi-page TIFF (classic or BigTIFF, compressed or not) by
acquisition software, or files arriving one per frame in a folder. It ends when no new
frame has arrived for `idle_timeout` seconds, or when `FollowedFrames.stop` is called.
The frames equal what `open_frames` reads from the finished input: same arrays, dtype,
shape and order.

Idle means no new frame *and* no new bytes of the next one (a growing TIFF, or the next
file of a folder): a frame that takes longer than the timeout to write, or a contiguous
series whose page directories tifffile writes only on closing, is waited for; a file
that nobody writes to is not.

When a TIFF page is complete. tifffile cannot follow a growing file: `TiffPages` walks
the IFD chain once, marks it indexed at the last page and never looks again, and its
`FileHandle` keeps the file size it found on opening, rejecting tag values beyond it.
Re-opening the file on every poll would walk the whole chain each time (quadratic over
a long acquisition). So this module walks the IFD chain itself, from the last complete
page onwards, and hands tifffile only pages known to be complete (a `TiffPage` built at
that page's offset, in a `TiffFile` opened at the current size; opening reads the first
page only). A page is complete when

- its IFD (entry count, entries, next-IFD offset) and every tag value stored outside
  the entries lie within the file, every entry has a valid TIFF type, it has the image
  size and strip (or tile) offsets and byte counts, not all counts zero, and all its
  image data lies within the file; and
- its entries and tag values read the same in two successive polls. tifffile's writer
  links a page into the chain *before* writing it: it sets the previous next-IFD
  offset, leaves a hole for the IFD, writes the image data and only then fills in the
  IFD, so for a moment the chain points at zeros, or at an IFD written half-way. The
  first check rejects the zeros; reading twice catches a half-written IFD whose missing
  part would otherwise look valid.

Image data is trusted once it lies within the file, which holds for writers that append
(tifffile, libtiff) on the machine that reads. A network share may show a file's new
size before its bytes; follow on the acquisition machine, or have the software save one
file per frame under a temporary name and rename it into the followed folder.

A page that stays incomplete until the idle timeout (the writer died mid-page, or the
chain points past the end of the file) is reported as an `InputError`: `open_frames`
rejects such a file too, and ending quietly would hide a broken acquisition. Frames
yielded before stay valid. A file that shrinks, or is replaced, is an `InputError` at
once.

Which pages make a frame. Every page (reduced-resolution pages such as thumbnails
excepted) is one frame of shape (H, W) or (H, W, C), with singleton axes dropped and
samples moved last, as `open_frames` does for a series of pages. Channels stored as
separate pages are recognised from ImageJ metadata on the first page (``channels=C``,
the channel varying fastest): C consecutive pages then make one frame. Metadata that
only a finished file has (OME-XML and tifffile's shape descriptions, which tifffile
writes or rewrites on closing) cannot say how a growing file is laid out; such files
are read page by page, which matches `open_frames` when their pages are time points.

A file in a folder is complete when it parses as a TIFF whose pages all lie within
the file, or as a PNG whose chunks reach the end chunk, and its size and modification
time did not change between two polls (a writer filling a file in place). A file
renamed into the folder complete passes at its second poll, one poll interval after it
appeared: a listing cannot tell a rename from a quick write. Hidden files (``.name``)
and names ending in ``.tmp`` or ``.partial`` (before or after the image suffix) are
not frames. Files are read in natural order (``t2`` before ``t10``) by the same code as
`open_frames`; one that appears after a later name was already read is an
`InputError`, since the frames could no longer be in order.

Cost of a poll: when nothing arrived, a TIFF costs two `stat` calls and two reads of a
few bytes (the header, the last page's next-IFD offset), however long the stack, and
each new page a few small reads in each of two polls. What grows is a set of the page
offsets seen, which detects a chain that loops (about 100 bytes a page). A folder is
listed only when its modification time changes (and once a second, since that time is
coarse), and only the files not yet read are looked at.
"""

from __future__ import annotations

import io
import math
import os
import struct
import threading
import time
from bisect import insort
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from ..closeable import Closeable
from ..errors import ConfigError, InputError
from .readers import (
    _CHANNEL_AXES,
    _PNG_MAGIC,
    MAX_CHANNELS,
    _is_image_name,
    _natural_key,
    _raise_if_corrupt,
    _read_image_file,
    _tifffile_errors,
    check_dtype,
)

__all__ = ["FollowedFrames", "follow_frames"]

# Bytes per value of each TIFF field type (TIFF 6.0 and BigTIFF); an entry of another
# type (0 in particular, the zeros of an IFD not written yet) makes a page incomplete.
_TYPE_SIZES = {
    **{1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4},
    **{16: 8, 17: 8, 18: 8},
}
_ARRAY_CODES = {3: "u2", 4: "u4", 13: "u4", 16: "u8", 18: "u8"}
_NEW_SUBFILE_TYPE = 254
_IMAGE_WIDTH, _IMAGE_LENGTH = 256, 257
_STRIPS = (273, 279)  # StripOffsets, StripByteCounts
_TILES = (324, 325)  # TileOffsets, TileByteCounts
_MAX_TAGS = 4096  # as tifffile: more entries than this is not a real IFD
# Tag values up to this size are compared between polls; larger ones (OME-XML) are only
# checked to lie within the file, so that a poll does not re-read megabytes.
_COMPARED_VALUE_BYTES = 1 << 16
_IFD_READ = 4096  # read this much at an IFD: entries and most values in one call
_MAX_PAGES_PER_POLL = 4096  # keeps one poll short while catching up with a long stack
_RESCAN_SECONDS = 1.0  # folder mtimes are coarse: list at least this often anyway
_PARTIAL_ENDINGS = (".tmp", ".partial")
# ImageJ page orders in which the channel varies fastest (given one Z slice).
_IMAGEJ_CHANNEL_FIRST_ORDERS = ("czt", "default", "ctz", "zct")


def follow_frames(
    source: str | os.PathLike[str], *, idle_timeout: float = 10.0, poll_interval: float = 0.05
) -> FollowedFrames:
    """Follow a TIFF stack or a folder that frames are still being written to.

    Args:
        source: A multi-page TIFF that pages are appended to, or a folder that
            receives one TIFF or PNG file per frame. It may not exist yet: it is waited
            for like a frame.
        idle_timeout: Stop after this many seconds without a new frame (or new bytes
            of one being written); ``math.inf`` follows until `FollowedFrames.stop`.
        poll_interval: Seconds between looks at the input. A frame is yielded one to
            two intervals after it is complete.

    Returns:
        A `FollowedFrames`; use it as a context manager so the file is closed.

    Raises:
        ConfigError: If a timeout or interval is not positive.
        InputError: If the source is a glob pattern, a PNG file, or lies in a folder
            that does not exist.
    """
    for what, value in (("idle timeout", idle_timeout), ("poll interval", poll_interval)):
        if not value > 0:
            raise ConfigError(f"{what} must be a positive number of seconds, got {value}")
    return FollowedFrames(Path(source), idle_timeout, poll_interval)


#: Seconds without progress after which a stopped writer's file is taken as it is.
_SETTLED = 0.05


def complete_frames(path: Path) -> Generator[np.ndarray, None, None]:
    """The complete frames of a TIFF whose writer has stopped, in order.

    For the partial output of a killed run (``--resume``): the frames up to the first
    incomplete or unreadable one, found with the same page checks as following.
    """
    with FollowedFrames(path, _SETTLED, _SETTLED / 5) as followed:
        try:
            yield from followed
        except InputError:
            return  # an incomplete (or no) next frame: the complete ones end here


class FollowedFrames(Closeable):
    """Frames of an input that is still being written, yielded as they become complete.

    Iterate once; frames come in order, each exactly once, as C-contiguous arrays in
    native byte order. `stop` may be called from any thread. Reading happens in the
    iterating thread.

    Attributes:
        path: The followed file or folder.
        name: Its name, for messages.
        frame_shape: ``(H, W)`` or ``(H, W, C)``; None until the first frame is read
            (see `wait_first`).
        dtype: Data type of every frame; None until the first frame is read.
        frames_read: How many frames have been yielded so far.
    """

    path: Path
    name: str
    frame_shape: tuple[int, ...] | None
    dtype: np.dtype[Any] | None
    frames_read: int

    def __init__(self, path: Path, idle_timeout: float, poll_interval: float) -> None:
        self.path = path
        self.name = path.name
        self.frame_shape = None
        self.dtype = None
        self.frames_read = 0
        self._idle_timeout = idle_timeout
        self._poll_interval = poll_interval
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the follower's files: polls against close()
        self._follower: _Follower = _open_follower(path)
        self._first: np.ndarray | None = None  # read by wait_first, not yielded yet
        self._frame_files: list[Path] = []  # folder mode: the file of each frame
        self._first_file: Path | None = None
        self._iterating = False
        self._closed = False

    def wait_first(self) -> None:
        """Block until the first frame is complete, so that `frame_shape` and `dtype`
        are known; the frame is still yielded by the iteration.

        Raises:
            InputError: If no frame arrives within the idle timeout, the input is
                unreadable, or `stop` was called first.
        """
        if self.frame_shape is not None:
            return
        frame = self._next_frame()
        if frame is None:
            raise InputError(f"stopped before the first frame of {self.path} arrived")
        self._first = frame

    def __iter__(self) -> Iterator[np.ndarray]:
        """Yield each frame once it is complete, in order (iterate once)."""
        if self._iterating:
            raise RuntimeError(f"frames of {self.name} are already being iterated")
        self._iterating = True
        return self._frames()

    def describe_frame(self, i: int) -> str:
        """How to name frame `i` (counted from 0, negative from the last read) in a
        message, as `FrameSource.describe_frame` does: ``"frame 12 of video.tif"``, or
        ``"frame 12 (t012.tif) of frames"`` for a folder.

        Raises:
            IndexError: If frame `i` has not been read (by the iteration or
                `wait_first`).
        """
        index = range(self.frames_read + (self._first is not None))[i]
        if self._frame_files:
            return f"frame {index} ({self._frame_files[index].name}) of {self.name}"
        return f"frame {index} of {self.name}"

    def stop(self) -> None:
        """End the iteration at its next look at the input (thread-safe)."""
        self._stop.set()

    def close(self) -> None:
        """Stop and release the open file; waits for a poll in progress to finish."""
        self._stop.set()
        with self._lock:
            if not self._closed:
                self._closed = True
                self._follower.close()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name!r}: {self.frames_read} frames of "
            f"{self.frame_shape} {self.dtype} read>"
        )

    def _frames(self) -> Iterator[np.ndarray]:
        while True:
            if self._first is not None:
                frame, self._first = self._first, None
            else:
                next_frame = self._next_frame()
                if next_frame is None:
                    return
                frame = next_frame
            self.frames_read += 1
            yield frame

    def _next_frame(self) -> np.ndarray | None:
        """Poll until the next frame is complete; None when stopped or idle too long."""
        # The idle clock runs only while we wait here: time the caller spends on a frame
        # is not the writer's silence.
        idle_since = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                if self._closed:
                    return None
                item = self._follower.take()
                if item is None:
                    if self._follower.poll():
                        idle_since = time.monotonic()
                    item = self._follower.take()
                if item is not None:
                    return self._checked(item)
            if time.monotonic() - idle_since >= self._idle_timeout:
                self._end_idle()
                return None
            self._stop.wait(self._poll_interval)
        return None

    def _checked(self, item: Any) -> np.ndarray:
        """Read the frame of `item`; check it matches the first one."""
        index = self.frames_read + (self._first is not None)
        frame, file = self._follower.read(item, index)
        if self.frame_shape is None or self.dtype is None:
            self.frame_shape, self.dtype = frame.shape, frame.dtype
            self._first_file = file
        elif frame.shape != self.frame_shape or frame.dtype != self.dtype:
            if file is not None:
                raise InputError(
                    f"{file} holds a {frame.shape} {frame.dtype} image but "
                    f"{self._first_file} holds {self.frame_shape} {self.dtype}; all frames "
                    "must match"
                )
            raise InputError(
                f"frame {index} of {self.path} is a {frame.shape} {frame.dtype} image but "
                f"frame 0 is {self.frame_shape} {self.dtype}; all frames must match"
            )
        if file is not None:
            self._frame_files.append(file)
        return frame

    def _end_idle(self) -> None:
        waited = f"{self._idle_timeout:g} s"
        problem = self._follower.problem()
        if problem is not None:
            count = self.frames_read + (self._first is not None)
            kept = (
                "no frame before it was complete"
                if not count
                else f"the {count} frames before it are complete"
                if count > 1
                else "the frame before it is complete"
            )
            raise InputError(f"{problem}, still after {waited} without progress; {kept}")
        if self.frame_shape is None:
            if not self.path.exists():
                raise InputError(f"no such file or folder: {self.path} (waited {waited})")
            raise InputError(f"no frame arrived in {waited} from {self.path}")


# --- followers: one kind of input each --------------------------------------------------


class _Follower:
    """What FollowedFrames needs of an input: look for news, hand out complete frames."""

    def poll(self) -> bool:
        """Look at the input; True if anything changed (new bytes or a new frame)."""
        raise NotImplementedError

    def take(self) -> Any:
        """The next complete frame's token, or None."""
        raise NotImplementedError

    def read(self, item: Any, index: int) -> tuple[np.ndarray, Path | None]:
        """The frame of a token from `take`, and its file in folder mode."""
        raise NotImplementedError

    def problem(self) -> str | None:
        """Why the next frame is not complete, if something of it is there."""
        return None

    def close(self) -> None:
        """Release open files."""


def _open_follower(path: Path) -> _Follower:
    text = os.fspath(path)
    if not path.exists() and any(c in text for c in "*?["):
        raise InputError(f"following reads one TIFF file or one folder, not a pattern: {text}")
    if not path.parent.is_dir():
        raise InputError(f"no such folder: {path.parent} (to follow {path.name})")
    if path.is_dir():
        return _FolderFollower(path)
    if path.exists():
        return _StackFollower(path)
    return _Appearing(path)


class _Appearing(_Follower):
    """An input that does not exist yet: becomes a stack or folder follower when it does."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._inner: _Follower | None = None

    def poll(self) -> bool:
        if self._inner is None:
            if not self._path.exists():
                return False
            self._inner = _open_follower(self._path)
            self._inner.poll()
            return True
        return self._inner.poll()

    def take(self) -> Any:
        return None if self._inner is None else self._inner.take()

    def read(self, item: Any, index: int) -> tuple[np.ndarray, Path | None]:
        assert self._inner is not None
        return self._inner.read(item, index)

    def problem(self) -> str | None:
        return None if self._inner is None else self._inner.problem()

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()


# --- the IFD chain of a TIFF file -------------------------------------------------------


@dataclass(frozen=True)
class _TiffFormat:
    """Classic TIFF or BigTIFF, in one byte order."""

    byteorder: str  # "<" or ">"
    big: bool

    @property
    def header_size(self) -> int:
        return 16 if self.big else 8

    @property
    def first_pointer(self) -> int:
        """Where the offset of the first IFD is stored."""
        return 8 if self.big else 4

    @property
    def offset_size(self) -> int:
        return 8 if self.big else 4

    @property
    def count_size(self) -> int:
        return 8 if self.big else 2

    @property
    def entry_size(self) -> int:
        return 20 if self.big else 12

    @property
    def offset_format(self) -> str:
        return self.byteorder + ("Q" if self.big else "I")

    @property
    def count_format(self) -> str:
        return self.byteorder + ("Q" if self.big else "H")

    @property
    def entry_format(self) -> str:
        return self.byteorder + ("HHQ8s" if self.big else "HHI4s")


@dataclass(frozen=True)
class _Ifd:
    """A complete-looking IFD (one page)."""

    offset: int
    next_pointer: int  # where the offset of the next IFD is stored
    end: int  # one past the last byte of the IFD, its tag values and its image data
    reduced: bool  # a reduced-resolution image (thumbnail, pyramid level): not a frame
    signature: bytes  # entries and tag values, compared between polls


_Read = Callable[[int, int], bytes]


def _raw_reader(raw: io.FileIO) -> _Read:
    """Read at an offset through an unbuffered file: a buffered one could serve bytes
    cached before the writer changed them."""

    def read(offset: int, size: int) -> bytes:
        raw.seek(offset)
        return raw.read(size) or b""

    return read


def _tiff_format(head: bytes, path: Path) -> _TiffFormat | None:
    """The format of a TIFF header; None while the header is not written yet.

    Raises:
        InputError: If the file is not a TIFF.
    """
    if len(head) < 8 or not head.strip(b"\0"):
        return None
    if head.startswith(_PNG_MAGIC):
        raise InputError(
            f"{path} is a PNG image, which holds one frame; follow a growing TIFF stack or "
            "a folder that receives one file per frame"
        )
    order = {b"II": "<", b"MM": ">"}.get(head[:2])
    if order is None:
        raise InputError(f"{path} is not a TIFF file")
    (version,) = struct.unpack(order + "H", head[2:4])
    if version == 42:
        return _TiffFormat(order, big=False)
    if version == 43:
        if len(head) < 16:
            return None
        if struct.unpack(order + "HH", head[4:8]) != (8, 0):
            raise InputError(f"{path} is a corrupt BigTIFF file (bad header)")
        return _TiffFormat(order, big=True)
    raise InputError(f"{path} is not a TIFF file (version {version})")


def _read_offset(read: _Read, fmt: _TiffFormat, position: int) -> int | None:
    data = read(position, fmt.offset_size)
    if len(data) < fmt.offset_size:
        return None
    return int(struct.unpack(fmt.offset_format, data)[0])


def _parse_ifd(read: _Read, fmt: _TiffFormat, offset: int, size: int) -> _Ifd | str:
    """Parse the IFD at `offset` of a file of `size` bytes.

    Returns:
        The IFD if it looks complete, else why not (a phrase for a message).
    """
    where = f"its directory at byte {offset}"
    if offset < fmt.header_size or offset + fmt.count_size > size:
        return f"{where} lies beyond the end of the file ({size} bytes)"
    head = read(offset, min(_IFD_READ, size - offset))
    if len(head) < fmt.count_size:
        return f"{where} is cut short"
    (count,) = struct.unpack_from(fmt.count_format, head)
    if count == 0:
        return f"{where} is empty (not written yet)"
    if count > _MAX_TAGS:
        return f"{where} claims {count} entries"
    entries = fmt.count_size + count * fmt.entry_size
    ifd_end = offset + entries + fmt.offset_size
    if ifd_end > size:
        return f"{where} ends beyond the end of the file ({size} bytes)"
    if len(head) < entries:
        head = read(offset, entries)
        if len(head) < entries:
            return f"{where} is cut short"
    signature = [head[:entries]]
    values: dict[int, tuple[int, int, bytes | None]] = {}
    end = ifd_end
    for i in range(count):
        code, kind, number, field = struct.unpack_from(
            fmt.entry_format, head, fmt.count_size + i * fmt.entry_size
        )
        itemsize = _TYPE_SIZES.get(kind)
        if itemsize is None:
            return f"entry {i} of {where} has no valid type (not written yet?)"
        nbytes = number * itemsize
        data: bytes | None
        if nbytes <= fmt.offset_size:
            data = field[:nbytes]
        else:
            (at,) = struct.unpack(fmt.offset_format, field)
            if at < fmt.header_size or at + nbytes > size:
                return f"the value of tag {code} in {where} lies beyond the end of the file"
            end = max(end, at + nbytes)
            data = None
            if nbytes <= _COMPARED_VALUE_BYTES or code in _STRIPS + _TILES:
                if offset <= at and at + nbytes <= offset + len(head):
                    data = head[at - offset : at - offset + nbytes]
                else:
                    data = read(at, nbytes)
                if len(data) < nbytes:
                    return f"the value of tag {code} in {where} is cut short"
                signature.append(data)
        values[code] = (kind, number, data)
    if _IMAGE_WIDTH not in values or _IMAGE_LENGTH not in values:
        return f"{where} has no image size"
    codes = _STRIPS if _STRIPS[0] in values else _TILES
    if codes[0] not in values or codes[1] not in values:
        return f"{where} has no strip or tile offsets and byte counts"
    arrays = [_tag_array(values[c], fmt.byteorder) for c in codes]
    if arrays[0] is None or arrays[1] is None or arrays[0].size != arrays[1].size:
        return f"{where} has unreadable strip or tile offsets"
    starts, counts = arrays[0], arrays[1]
    if starts.size and max(int(starts.max()), int(counts.max())) >= 2**62:
        return f"{where} has image data offsets beyond any file size"
    used = counts > 0
    if not used.any():  # byte counts of zero: still the zeros of an unwritten value
        return f"{where} has no image data (yet)"
    if int(starts[used].min()) < fmt.header_size:
        return f"{where} has image data offsets that are not written yet"
    data_end = int((starts[used].astype(np.int64) + counts[used].astype(np.int64)).max())
    if data_end > size:
        return f"its image data ends at byte {data_end}, beyond the end of the file ({size} bytes)"
    end = max(end, data_end)
    reduced = False
    if _NEW_SUBFILE_TYPE in values:
        subfile = _tag_array(values[_NEW_SUBFILE_TYPE], fmt.byteorder)
        reduced = subfile is not None and subfile.size > 0 and bool(int(subfile[0]) & 1)
    return _Ifd(offset, offset + entries, end, reduced, b"".join(signature))


def _tag_array(value: tuple[int, int, bytes | None], byteorder: str) -> np.ndarray | None:
    kind, number, data = value
    code = _ARRAY_CODES.get(kind)
    if code is None or data is None:
        return None
    return np.frombuffer(data, dtype=byteorder + code, count=number)


# --- a growing multi-page TIFF ----------------------------------------------------------


@dataclass(frozen=True)
class _Page:
    offset: int
    index: int  # position in the IFD chain, as tifffile counts pages
    end: int


class _StackFollower(_Follower):
    """Pages appended to one TIFF file, found by walking its IFD chain onwards."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._raw = io.FileIO(path, "r")
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
        self._read = _raw_reader(self._raw)
        info = os.fstat(self._raw.fileno())
        self._identity = (info.st_dev, info.st_ino)
        self._size = 0
        self._format: _TiffFormat | None = None
        self._header = b""
        self._pointer = 0  # where the offset of the page after the last complete one is
        self._pages_seen = 0  # complete pages in the chain, reduced ones included
        self._frame_pages = 0  # complete pages that hold frames (not reduced ones)
        self._seen: set[int] = set()  # offsets of complete pages: a chain must not loop
        self._pending: dict[int, bytes] = {}  # signatures of incomplete-looking pages
        self._problem: str | None = None
        self._complete: deque[_Page] = deque()  # complete frame pages not yet read
        self._channels: int | None = None  # pages per frame, from page 0's metadata
        self._tif: tifffile.TiffFile | None = None
        self._tif_file: io.FileIO | None = None
        self._tif_size = 0

    def poll(self) -> bool:
        size = os.fstat(self._raw.fileno()).st_size
        if size < self._size:
            raise InputError(
                f"{self.path} shrank from {self._size} to {size} bytes while being read; "
                "the writer truncated or rewrote it"
            )
        grew, self._size = size > self._size, size
        self._check_not_replaced()
        if self._format is None:
            head = self._read(0, 16)
            self._format = _tiff_format(head, self.path)
            if self._format is None:
                return grew
            self._header = head[:4]
            self._pointer = self._format.first_pointer
        elif self._read(0, 4) != self._header:
            raise InputError(f"{self.path} was rewritten while being read (its header changed)")
        before = len(self._complete)
        self._walk(self._format, size)
        return grew or len(self._complete) > before

    def _check_not_replaced(self) -> None:
        # A file moved away keeps being read through our handle; one replaced by
        # another (a writer that saves to a new file and renames it) cannot be.
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return
        if (info.st_dev, info.st_ino) != self._identity:
            raise InputError(f"{self.path} was replaced by another file while being read")

    def _walk(self, fmt: _TiffFormat, size: int) -> None:
        """Follow the chain from the last complete page; confirm pages that read the same
        as in the previous poll, remember the others for the next one."""
        pending: dict[int, bytes] = {}
        pointer, confirming = self._pointer, True
        self._problem = None
        for _ in range(_MAX_PAGES_PER_POLL):
            offset = _read_offset(self._read, fmt, pointer)
            if not offset:
                break
            if offset in self._seen or offset in pending:
                if confirming:
                    raise InputError(
                        f"{self.path} is corrupt: page {self._pages_seen} points back to "
                        f"an earlier page (byte {offset})"
                    )
                break  # a tentative offset read from a page not confirmed yet
            ifd = _parse_ifd(self._read, fmt, offset, size)
            if isinstance(ifd, str):
                if confirming:
                    self._problem = f"page {self._pages_seen} of {self.path} is incomplete: {ifd}"
                break
            if confirming and self._pending.get(offset) == ifd.signature:
                self._confirm(ifd)
            else:
                if confirming:
                    self._problem = (
                        f"page {self._pages_seen} of {self.path} is incomplete: "
                        "it is still being written"
                    )
                confirming = False
                pending[offset] = ifd.signature
            pointer = ifd.next_pointer
        self._pending = pending
        channels = self._channels or 1
        if self._problem is None and self._frame_pages % channels:
            self._problem = (
                f"frame {self._frame_pages // channels} of {self.path} is incomplete: it "
                f"has {self._frame_pages % channels} of its {channels} channel pages"
            )

    def _confirm(self, ifd: _Ifd) -> None:
        self._seen.add(ifd.offset)
        if not ifd.reduced:
            self._complete.append(_Page(ifd.offset, self._pages_seen, ifd.end))
            self._frame_pages += 1
        self._pages_seen += 1
        self._pointer = ifd.next_pointer

    def take(self) -> list[_Page] | None:
        if not self._complete:
            return None
        if self._channels is None:
            self._channels = self._channels_per_frame(self._complete[0])
        if len(self._complete) < self._channels:
            return None
        return [self._complete.popleft() for _ in range(self._channels)]

    def problem(self) -> str | None:
        return self._problem

    def read(self, item: list[_Page], index: int) -> tuple[np.ndarray, Path | None]:
        tif = self._tiff_file(max(page.end for page in item))
        planes = [self._read_page(tif, page, index) for page in item]
        if len(planes) == 1:
            frame = planes[0]
        else:
            if any(plane.ndim != 2 or plane.shape != planes[0].shape for plane in planes):
                raise InputError(f"frame {index} of {self.path}: its channel pages differ in shape")
            frame = np.stack(planes, axis=-1)
        dtype = frame.dtype.newbyteorder("=")
        return np.ascontiguousarray(frame, dtype=dtype), None

    def _read_page(self, tif: tifffile.TiffFile, page: _Page, index: int) -> np.ndarray:
        try:
            with _tifffile_errors() as problems:
                tif.filehandle.seek(page.offset)
                tiffpage = tifffile.TiffPage(tif, index=page.index)
                if tiffpage.dtype is None:
                    raise InputError(
                        f"frame {index} of {self.path} has pixels of a kind tifffile cannot "
                        f"decode ({tiffpage.bitspersample} bits, format "
                        f"{tiffpage.sampleformat})"
                    )
                check_dtype(np.dtype(tiffpage.dtype), self.path)
                data = tiffpage.asarray()
            _raise_if_corrupt(self.path, problems)
        except InputError:
            raise
        except Exception as exc:  # tifffile and the codecs raise many types for bad data
            raise InputError(f"frame {index} of {self.path} could not be read: {exc}") from exc
        return _page_frame(data, tiffpage.axes, f"frame {index} of {self.path}")

    def _tiff_file(self, end: int) -> tifffile.TiffFile:
        """A TiffFile that sees at least `end` bytes: tifffile checks tag values against
        the size it found on opening, so a grown file is opened again (with a fresh
        buffer, so no stale bytes; opening reads the first page only)."""
        if self._tif is not None and end <= self._tif_size:
            return self._tif
        size = os.fstat(self._raw.fileno()).st_size
        if size < end:
            raise InputError(
                f"{self.path} shrank to {size} bytes while being read; the writer "
                "truncated or rewrote it"
            )
        self._close_tif()
        # A fresh reader, not a dup of our descriptor: that would share its file position.
        # Unbuffered: a buffer filled while a later page was half written would hand
        # tifffile those stale bytes when that page is read (the OS cache is coherent).
        try:
            reader = open(self.path, "rb", buffering=0)  # noqa: SIM115 - closed in _close_tif()
        except OSError as exc:
            raise InputError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        info = os.fstat(reader.fileno())
        if (info.st_dev, info.st_ino) != self._identity:
            reader.close()
            raise InputError(f"{self.path} was replaced by another file while being read")
        try:
            with _tifffile_errors() as problems:
                tif = tifffile.TiffFile(reader, name=self.path.name)
        except Exception as exc:  # a header or first page we checked: the file changed
            reader.close()
            raise InputError(f"{self.path} could not be read: {exc}") from exc
        try:
            _raise_if_corrupt(self.path, problems)
        except InputError:
            tif.close()
            reader.close()
            raise
        self._tif, self._tif_file, self._tif_size = tif, reader, tif.filehandle.size
        return tif

    def _channels_per_frame(self, first: _Page) -> int:
        """How many pages make a frame: the channels of an ImageJ hyperstack, else 1."""
        tif = self._tiff_file(first.end)
        with _tifffile_errors():
            meta = tif.imagej_metadata if first.index == 0 else None
            page = tif.pages.first
        if not meta:
            return 1
        channels, slices = int(meta.get("channels", 1)), int(meta.get("slices", 1))
        order = str(meta.get("order", "czt")).lower()
        if slices > 1:
            raise InputError(
                f"{self.path} is an ImageJ stack with {slices} Z slices; unetrt segments "
                "2D + time, not volumes"
            )
        # Samples inside a page that ImageJ also counts as channels are read with the page.
        if channels <= 1 or page.shaped[0] == channels or page.shaped[4] == channels:
            return 1
        if order not in _IMAGEJ_CHANNEL_FIRST_ORDERS:
            raise InputError(
                f"{self.path} stores its {channels} channels one after another (ImageJ "
                f"order {order!r}), which cannot be read while it grows"
            )
        if channels > MAX_CHANNELS:
            raise InputError(
                f"{self.path} has {channels} channels; unetrt reads at most "
                f"{MAX_CHANNELS} channels per frame"
            )
        return channels

    def _close_tif(self) -> None:
        if self._tif is not None:
            self._tif.close()
            self._tif = None
        if self._tif_file is not None:
            self._tif_file.close()
            self._tif_file = None

    def close(self) -> None:
        self._close_tif()
        self._raw.close()


def _page_frame(data: np.ndarray, axes: str, where: str) -> np.ndarray:
    """One page as a frame, as `open_frames` maps a page: Y, X and a channel axis kept,
    singleton axes dropped, channels moved last."""
    index: list[int | slice] = []
    kept = ""
    for axis, n in zip(axes, data.shape, strict=True):
        if axis in "YX" or (axis in _CHANNEL_AXES and n > 1):
            index.append(slice(None))
            kept += axis
        elif n == 1:
            index.append(0)
        else:
            raise InputError(
                f"{where} has shape {data.shape} (axes {axes}); unetrt segments 2D + time, "
                "i.e. pages of Y, X and optionally channels"
            )
    frame = data[tuple(index)]
    if len(kept) == 3 and kept[0] in _CHANNEL_AXES:
        frame = np.moveaxis(frame, 0, -1)
    if frame.ndim == 3 and frame.shape[-1] > MAX_CHANNELS:
        raise InputError(
            f"{where} has {frame.shape[-1]} channels; unetrt reads at most {MAX_CHANNELS} "
            "channels per frame"
        )
    return frame


# --- a folder that receives one file per frame ------------------------------------------


class _FolderFollower(_Follower):
    """Image files arriving in a folder, read in natural order once complete."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._known: set[str] = set()  # every candidate name seen, read or waiting
        self._waiting: list[tuple[list[tuple[int, int | str]], str]] = []  # natural order
        self._stats: dict[str, tuple[int, int, int]] = {}
        self._complete: set[str] = set()
        self._last: tuple[list[tuple[int, int | str]], str] | None = None  # last name read
        self._dir_mtime: int | None = None
        self._scanned_at = -math.inf
        self._problem: str | None = None

    def poll(self) -> bool:
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except OSError as exc:
            raise InputError(f"cannot read the folder {self.path}: {exc.strerror or exc}") from exc
        now = time.monotonic()
        if mtime != self._dir_mtime or now - self._scanned_at >= _RESCAN_SECONDS:
            self._dir_mtime, self._scanned_at = mtime, now
            self._scan()
        # Only news of the first file not complete yet counts as progress: frames are read
        # in order, so files arriving behind one that never completes must not keep the
        # idle timeout from ending the wait (and naming that file).
        progress, head = False, True
        self._problem = None
        for _, name in list(self._waiting[:_MAX_PAGES_PER_POLL]):
            if name in self._complete:
                continue
            file = self.path / name
            try:
                info = os.stat(file)
            except FileNotFoundError:  # renamed or deleted before it was read
                self._forget(name)
                continue
            stat = (info.st_size, info.st_mtime_ns, info.st_ino)
            if self._stats.get(name) != stat:
                self._stats[name] = stat
                if head:
                    progress = True
                    self._problem = f"{file} is incomplete: it is still being written"
            else:
                reason = _file_incomplete(file, info.st_size)
                if reason is None:
                    self._complete.add(name)
                    progress = progress or head
                elif head:
                    self._problem = f"{file} is not a complete TIFF or PNG image ({reason})"
            head = False
        return progress

    def _scan(self) -> None:
        try:
            with os.scandir(self.path) as entries:
                names = [
                    e.name
                    for e in entries
                    if e.name not in self._known and _is_frame_name(e.name) and e.is_file()
                ]
        except OSError as exc:
            raise InputError(f"cannot read the folder {self.path}: {exc.strerror or exc}") from exc
        for name in sorted(names, key=_natural_key):
            entry = (_natural_key(name), name)
            if self._last is not None and entry < self._last:
                raise InputError(
                    f"{self.path / name} appeared after {self._last[1]} was already read; "
                    "files must arrive in name order (t2 before t10) to be frames in order"
                )
            self._known.add(name)
            insort(self._waiting, entry)

    def _forget(self, name: str) -> None:
        self._waiting = [entry for entry in self._waiting if entry[1] != name]
        self._known.discard(name)
        self._stats.pop(name, None)
        self._complete.discard(name)

    def take(self) -> Path | None:
        if not self._waiting or self._waiting[0][1] not in self._complete:
            return None
        entry = self._waiting.pop(0)
        self._last = entry
        self._complete.discard(entry[1])
        self._stats.pop(entry[1], None)
        return self.path / entry[1]

    def read(self, item: Path, index: int) -> tuple[np.ndarray, Path | None]:
        return _read_image_file(item), item

    def problem(self) -> str | None:
        return self._problem


def _is_frame_name(name: str) -> bool:
    lower = name.lower()
    stem = os.path.splitext(lower)[0]
    return (
        not name.startswith(".")
        and _is_image_name(Path(name))
        and not any(s.endswith(_PARTIAL_ENDINGS) for s in (lower, stem))
    )


def _file_incomplete(path: Path, size: int) -> str | None:
    """Why a single-image file is not complete yet, or None if it is."""
    try:
        with io.FileIO(path, "r") as raw:
            read = _raw_reader(raw)
            head = read(0, 16)
            if head.startswith(_PNG_MAGIC):
                return _png_incomplete(read, size)
            try:
                fmt = _tiff_format(head, path)
            except InputError:
                return "its first bytes are neither a TIFF nor a PNG header"
            if fmt is None:
                return "no header yet"
            return _tiff_incomplete(read, fmt, size)
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"


def _png_incomplete(read: _Read, size: int) -> str | None:
    position = len(_PNG_MAGIC)
    while position + 12 <= size:
        header = read(position, 8)
        if len(header) < 8:
            break
        length, kind = struct.unpack(">I4s", header)
        position += 12 + length
        if kind == b"IEND":
            return None if position <= size else "its end chunk is cut short"
    return "it has no end chunk yet"


def _tiff_incomplete(read: _Read, fmt: _TiffFormat, size: int) -> str | None:
    pointer, seen = fmt.first_pointer, set[int]()
    while True:
        offset = _read_offset(read, fmt, pointer)
        if offset is None:
            return "its header is cut short"
        if offset == 0:
            return None if seen else "it has no page yet"
        if offset in seen:
            return f"its pages loop back to byte {offset}"
        seen.add(offset)
        ifd = _parse_ifd(read, fmt, offset, size)
        if isinstance(ifd, str):
            return ifd
        pointer = ifd.next_pointer
