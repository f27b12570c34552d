"""`StackWriter`: stream masks into a multi-page TIFF that appears only when complete."""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import tifffile

from ..errors import ConfigError, OutputError
from .atomic import output_error, resumable_partial_path
from .follow import complete_frames
from .omezarr import ZARR_SUFFIX, ZarrWriter
from .runrecord import ResumableOutput, RunRecord

__all__ = ["COMPRESSIONS", "FORMATS", "StackWriter", "open_output", "output_format"]

#: Mask output formats: a multi-page TIFF, or an OME-Zarr image (``unetrt[zarr]``).
FORMATS = ("tiff", "ome-zarr")

# Classic TIFF addresses 4 GiB; stay well below it to leave room for IFDs and tags.
_CLASSIC_TIFF_LIMIT = int(3.9 * 2**30)
_IMAGEJ_DTYPES = frozenset(map(np.dtype, ("uint8", "uint16", "int16", "float32")))
COMPRESSIONS = ("none", "zlib", "deflate", "lzw", "zstd")
_RESERVED_METADATA = frozenset({"shape", "axes", "images", "channels", "slices", "frames"})


class StackWriter(ResumableOutput):
    """Write frames one at a time to a multi-page TIFF, atomically.

    Frames go to a hidden partial file in the output folder
    (`resumable_partial_path`), which replaces `path` only when the writer is
    closed successfully; on any exception (Ctrl-C included) the partial file is
    deleted and an existing file at `path` is left untouched. A run killed outright
    (SIGKILL, a reboot) leaves the partial file and its run record (`RunRecord`): a
    writer opened with ``resume=True`` and the same ``run`` settings keeps its complete
    frames (`frames_written` starts there) and continues; any other writer replaces it.

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
        run: What the frames depend on (JSON values: model, input, options); a partial
            file is resumed only by a writer with the same ``run``.
        resume: Continue a killed run's partial file made with the same ``run``
            (nothing to continue: start anew). An interrupted (Ctrl-C) resumable
            writer keeps its partial file for the next resume.

    Attributes:
        frames_written: Frames in the file so far, resumed ones included.
        resumed: Frames kept from the earlier run.

    Raises:
        OutputError: If the output folder does not exist or cannot be written, or
            another run is writing the same output.
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
        run: Mapping[str, Any] | None = None,
        resume: bool = False,
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
        self._partial = resumable_partial_path(self.path)
        self._resumable = resume
        self._record = RunRecord(self.path, self._partial, dict(run or {}))
        aside = self._partial.with_name(self._partial.name + ".resumed")
        self._writer: tifffile.TiffWriter | None = None
        try:
            earlier = self._earlier_frames(aside) if resume and self._record.matches else None
            if earlier is None:  # begin anew: an earlier run's leftovers go
                aside.unlink(missing_ok=True)
                self._record.start()
            self._writer = tifffile.TiffWriter(self._partial, bigtiff=bigtiff)
            if earlier is not None:
                with contextlib.closing(complete_frames(earlier)) as frames:
                    for frame in frames:
                        self.write(frame)
                earlier.unlink()
        except OSError as exc:
            self.abort()
            raise output_error(self.path, exc) from exc
        except KeyboardInterrupt:  # the earlier frames stay where they are, to resume
            if resume:
                self.suspend()
            else:
                self.abort()
            raise
        except BaseException:
            self.abort()
            raise
        self.resumed = self.frames_written

    def _earlier_frames(self, aside: Path) -> Path | None:
        """The partial file of the killed run this one resumes, moved `aside` to be
        copied from (its complete frames); None if there is none."""
        if aside.exists():  # a resume killed while copying: this is the earlier file
            self._partial.unlink(missing_ok=True)
        elif self._partial.exists():
            os.replace(self._partial, aside)
        else:
            return None
        return aside

    def missing(self) -> list[range]:
        """The frames still to write (after the resumed ones), as `ZarrWriter.missing`."""
        assert self.n_frames is not None, "missing() needs the number of frames"
        left = range(self.frames_written, self.n_frames)
        return [left] if left else []

    def write(self, frame: np.ndarray, index: int | None = None) -> None:
        """Append one frame (`index`, if given, must be the next one: a TIFF grows in order).

        Raises:
            ValueError: If the frame's shape or dtype differs from the declared ones,
                more than `n_frames` frames are written, or `index` is not the next frame.
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
        if index is not None and index != self.frames_written:
            raise ValueError(f"frame {index} of {self.path} written after {self.frames_written}")
        # Channels are stored as separate pages (TCYX), the layout ImageJ expects.
        pages = frame if self._channels is None else np.moveaxis(frame, -1, 0)
        first = self.frames_written == 0
        with self._aborting():
            self._writer.write(
                np.ascontiguousarray(pages),
                photometric="minisblack",
                compression=self._compression,
                metadata=None,
                # Provisional until close() rewrites it with the final frame count.
                description=self._description(self.n_frames or 1) if first else None,
                software="unetrt" if first else False,
            )
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
        with self._aborting():
            writer.overwrite_description(self._description(self.frames_written))
            writer.close()
            self._writer = None
            os.replace(self._partial, self.path)
        self._record.release()

    def abort(self) -> None:
        """Discard everything written so far; `path` is left as it was."""
        self._stop(keep=False)

    def suspend(self) -> None:
        """Stop writing but keep the partial file and its record for a later resume."""
        self._stop(keep=True)

    def _stop(self, *, keep: bool) -> None:
        if not self._record.held:  # closed or suspended already: nothing is ours to drop
            return
        writer, self._writer = self._writer, None
        if writer is not None:
            # A failed flush does not matter: the file is deleted next, or resumed from
            # its complete pages; it must be closed before deleting it on Windows.
            with contextlib.suppress(Exception):
                writer.close()
        if not keep:
            self._partial.unlink(missing_ok=True)
        self._record.release(keep=keep)

    @contextlib.contextmanager
    def _aborting(self) -> Iterator[None]:
        """Abort if the block fails (Ctrl-C included), so no partial file is left."""
        try:
            yield
        except OSError as exc:
            self.abort()
            raise output_error(self.path, exc) from exc
        except KeyboardInterrupt:
            if not self._resumable:
                self.abort()
            raise
        except BaseException:
            self.abort()
            raise

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


def output_format(path: Path) -> str:
    """The format an output path asks for: ``"ome-zarr"`` for ``*.zarr``, else ``"tiff"``."""
    return "ome-zarr" if path.name.lower().endswith(ZARR_SUFFIX) else "tiff"


def open_output(
    path: Path,
    *,
    frame_shape: tuple[int, ...],
    dtype: npt.DTypeLike,
    n_frames: int | None,
    run: Mapping[str, Any],
    resume: bool,
    name: str = "masks",
) -> StackWriter | ZarrWriter:
    """The resumable writer for `path`, in the format its name asks for (`output_format`)."""
    if output_format(path) == "ome-zarr":
        return ZarrWriter(
            path,
            frame_shape=frame_shape,
            dtype=dtype,
            n_frames=n_frames,
            run=run,
            resume=resume,
            name=name,
        )
    return StackWriter(
        path, frame_shape=frame_shape, dtype=dtype, n_frames=n_frames, run=run, resume=resume
    )
