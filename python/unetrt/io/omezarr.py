"""OME-Zarr (NGFF) images: masks written frame by frame, and stacks read as frames.

Written images follow NGFF 0.4 on Zarr format 2, the version the most tools read
(napari with napari-ome-zarr, Fiji's MoBIE and n5-viewer, QuPath, ome-zarr-py):
one group whose ``multiscales`` metadata (written by ome-zarr-py) names one
full-resolution array ``0`` with axes ``t, y, x`` (``t, c, y, x`` for probabilities of
several classes), chunked one frame per chunk. Chunks are separate files, so several
workers (a Dask cluster) write frames of one image at once.

Atomic and resumable like the TIFF writer: the image is written under a hidden partial
name, renamed onto the output when complete; every frame written is recorded at once
(an empty file per frame range in a hidden folder inside the partial image), so a run
killed at any moment can be continued (``resume``) from the frames recorded. Reading
accepts NGFF 0.1 to 0.5 (Zarr format 2 or 3): the first multiscales image at full
resolution, axes ``t``, ``c`` and ``y, x`` (a ``z`` axis of length 1 is allowed).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InputError, OutputError, require
from .atomic import resumable_partial_path
from .readers import MAX_CHANNELS, FrameSource, check_dtype
from .runrecord import ResumableOutput, RunRecord

__all__ = ["ZARR_SUFFIX", "ZarrWriter", "is_zarr", "open_zarr", "write_frames"]

ZARR_SUFFIX = ".zarr"
#: The NGFF array of the full-resolution image, the one level unetrt writes.
_LEVEL = "0"
#: Hidden folder inside a partial image: one empty file ``START-STOP`` per frame range done.
_DONE = ".unetrt-done"


def is_zarr(path: Path) -> bool:
    """Whether `path` is a Zarr group or array folder (format 2 or 3)."""
    return path.is_dir() and any(
        (path / name).is_file() for name in (".zgroup", ".zarray", ".zattrs", "zarr.json")
    )


# --------------------------------------------------------------------------- reading
def open_zarr(path: Path, frames: slice | None = None) -> FrameSource:
    """Open an OME-Zarr image for frame-by-frame reading (see `unetrt.io.open_frames`).

    Raises:
        InputError: If the folder is not an OME-Zarr image unetrt can read.
    """
    return _ZarrStack(path, frames)


class _ZarrStack(FrameSource):
    """The full-resolution array of an OME-Zarr image, read one time point at a time."""

    def __init__(self, path: Path, frames: slice | None) -> None:
        zarr = require("zarr", "zarr")
        self.path = path
        self.name = path.name
        self.files = (path,)
        try:
            group = zarr.open_group(path, mode="r")
            attrs = dict(group.attrs)
            multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
            if not multiscales:
                raise InputError(
                    f"{path} is a Zarr folder without OME-Zarr (NGFF) multiscales metadata"
                )
            image = multiscales[0]
            array = group[image["datasets"][0]["path"]]
        except InputError:
            raise
        except Exception as exc:  # zarr raises many types for broken stores
            raise InputError(f"{path} is not a readable OME-Zarr image: {exc}") from exc
        axes = [a["name"] if isinstance(a, Mapping) else str(a) for a in image.get("axes", [])]
        if not axes:  # NGFF 0.1 / 0.2: always 5-D
            axes = ["t", "c", "z", "y", "x"]
        if len(axes) != array.ndim or not set(axes) <= {"t", "c", "z", "y", "x"}:
            raise InputError(
                f"{path} has axes {axes} for a {array.ndim}-D array; unetrt reads t, c, y, x"
            )
        sizes = dict(zip(axes, array.shape, strict=True))
        if sizes.get("z", 1) > 1:
            raise InputError(
                f"{path} has {sizes['z']} z planes; unetrt segments 2D + time, not volumes"
            )
        if sizes.get("c", 1) > MAX_CHANNELS:
            raise InputError(
                f"{path} has {sizes['c']} channels; unetrt reads at most {MAX_CHANNELS} "
                "channels per frame"
            )
        self.dtype = np.dtype(array.dtype)
        check_dtype(self.dtype, path)
        channels = sizes.get("c", 1)
        self.frame_shape = (sizes["y"], sizes["x"]) + ((channels,) if channels > 1 else ())
        self.axes = "".join(a.upper() for a in axes if sizes[a] > 1 or a in "yx")
        if sizes.get("t", 1) == 0:
            raise InputError(f"{path} holds no frames (its t axis has length 0)")
        self._array = array
        self._axes = axes
        super().__init__(sizes.get("t", 1), frames)

    def _read(self, index: int) -> np.ndarray:
        where = tuple(index if a == "t" else 0 if a == "z" else slice(None) for a in self._axes)
        try:
            data = np.asarray(self._array[where])
        except Exception as exc:  # a missing or corrupt chunk
            raise InputError(f"frame {index} of {self.path} could not be read: {exc}") from exc
        kept = [a for a in self._axes if a not in "tz"]
        frame = np.moveaxis(data, kept.index("c"), -1) if "c" in kept else data
        if frame.ndim == 3 and frame.shape[-1] == 1:
            frame = frame[..., 0]
        return np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("="))


# --------------------------------------------------------------------------- writing
class ZarrWriter(ResumableOutput):
    """Write mask (or probability) frames into an OME-Zarr image, atomically.

    Frames go to the hidden partial image `partial`, which replaces `path` when the
    writer is closed with every frame written. `write` appends the next frame; other
    processes (Dask workers) may write frames of the same partial image with
    `write_frames`, and `close` then finds them recorded.

    Args:
        path: Output image folder (``.ome.zarr`` by convention).
        frame_shape: ``(H, W)`` or ``(H, W, C)`` of every frame.
        dtype: Data type of every frame.
        n_frames: Number of frames, or None while unknown (the image grows).
        run: What the frames depend on (see `unetrt.io.StackWriter`).
        resume: Continue a killed run's partial image made with the same ``run``.
        name: The image's name in its metadata.

    Attributes:
        partial: Where the image is written until it is complete.
        resumed: Frames kept from the earlier run.

    Raises:
        OutputError: If the output folder does not exist or cannot be written, or
            another run is writing the same output.
        MissingDependencyError: If zarr / ome-zarr are not installed (``unetrt[zarr]``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        frame_shape: tuple[int, ...],
        dtype: npt.DTypeLike,
        n_frames: int | None,
        run: Mapping[str, Any] | None = None,
        resume: bool = False,
        name: str = "masks",
    ) -> None:
        zarr = require("zarr", "zarr")
        require("ome_zarr", "zarr")
        self.path = Path(path)
        self.frame_shape = tuple(int(n) for n in frame_shape)
        self.dtype = np.dtype(dtype)
        self.n_frames = n_frames
        if self.path.exists() and not is_zarr(self.path):
            raise OutputError(f"cannot write to {self.path}: it exists and is not a Zarr image")
        folder = self.path.parent
        if not folder.is_dir():
            problem = "is not a folder" if folder.exists() else "does not exist"
            raise OutputError(f"cannot write to {self.path}: {folder} {problem}")
        self.partial = resumable_partial_path(self.path)
        self._resumable = resume
        self._record = RunRecord(self.path, self.partial, dict(run or {}))
        self._done: set[int] = set()
        try:
            earlier = self._earlier(zarr) if resume and self._record.matches else None
            if earlier is not None:
                self._array = earlier
                self._done = _recorded(self.partial)
            else:
                shutil.rmtree(self.partial, ignore_errors=True)
                self._record.start()
                self._array = _create(self.partial, self.frame_shape, self.dtype, n_frames, name)
        except OSError as exc:
            self._record.release()
            raise OutputError(f"cannot write to {self.path}: {exc.strerror or exc}") from exc
        except BaseException:
            self._record.release()
            raise
        self.resumed = len(self._done)
        self._next = 0
        self._open = True

    def _earlier(self, zarr: Any) -> Any:
        """The level-0 array of the killed run's partial image, if it is whole enough to
        continue (a run killed while creating it leaves one that is not); else None."""
        try:
            array = zarr.open_array(self.partial / _LEVEL, mode="r+")
        except Exception:  # missing or half-written metadata: begin anew
            return None
        if array.shape[1:] != _array_shape(self.frame_shape, 0)[1:] or array.dtype != self.dtype:
            return None
        (self.partial / _DONE).mkdir(exist_ok=True)
        return array

    @property
    def frames_written(self) -> int:
        """Frames recorded as written so far (resumed ones included)."""
        return len(self._done)

    def missing(self) -> list[range]:
        """The frames still to write, as ranges (all of them for a new image)."""
        assert self.n_frames is not None, "missing() needs the number of frames"
        return _ranges(i for i in range(self.n_frames) if i not in self._done)

    def write(self, frame: np.ndarray, index: int | None = None) -> None:
        """Write one frame: frame `index`, by default the one after the last written.

        Raises:
            ValueError: If the frame's shape or dtype differs from the declared ones.
            OutputError: If the disk is full or the image cannot be written.
        """
        if not self._open:
            raise ValueError(f"ZarrWriter for {self.path} is closed")
        if index is None:
            index = self._next
        if self.n_frames is None and index >= self._array.shape[0]:
            self._array.resize((index + 1, *self._array.shape[1:]))
        try:
            write_frames(self.partial, index, [frame], self._array)
        except OSError as exc:
            self.abort()
            raise OutputError(f"cannot write to {self.path}: {exc.strerror or exc}") from exc
        self._done.add(index)
        self._next = index + 1

    def close(self) -> None:
        """Finish the image and move it onto `path` (replacing an existing one).

        Raises:
            ValueError: If frames are missing (written neither here nor by workers).
            OutputError: If the image cannot be moved into place.
        """
        if not self._open:
            return
        self._done |= _recorded(self.partial)
        expected = self.n_frames if self.n_frames is not None else self._array.shape[0]
        missing = expected - len(self._done & set(range(expected)))
        if missing or expected == 0:
            self.abort()
            raise ValueError(f"{missing or 'all'} frames of {self.path} were not written")
        self._open = False
        try:
            _replace_folder(self.partial, self.path)
        except OSError as exc:
            raise OutputError(f"cannot write to {self.path}: {exc.strerror or exc}") from exc
        finally:
            self._record.release()
        # After the rename: a kill before it leaves a partial image that still resumes.
        shutil.rmtree(self.path / _DONE, ignore_errors=True)

    def abort(self) -> None:
        """Discard the partial image; `path` is left as it was."""
        self._open = False
        if not self._record.held:  # closed or suspended already
            return
        shutil.rmtree(self.partial, ignore_errors=True)
        self._record.release()

    def suspend(self) -> None:
        self._open = False
        self._record.release(keep=True)


def write_frames(
    partial: Path, start: int, frames: Sequence[np.ndarray], array: Any = None
) -> None:
    """Write `frames` as frames ``start, start + 1, ...`` of the partial image at
    `partial` (made by a `ZarrWriter`, perhaps in another process), then record them
    as done. `array` is the image's open level-0 array, if the caller has it."""
    if array is None:
        array = require("zarr", "zarr").open_array(partial / _LEVEL, mode="r+")
    for i, frame in enumerate(frames):
        array[start + i] = np.moveaxis(frame, -1, 0) if frame.ndim == 3 else frame
    (partial / _DONE / f"{start}-{start + len(frames)}").touch()


def _create(
    partial: Path,
    frame_shape: tuple[int, ...],
    dtype: np.dtype[Any],
    n_frames: int | None,
    name: str,
) -> Any:
    zarr = require("zarr", "zarr")
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_multiscales_metadata

    axes = ["t", "y", "x"] if len(frame_shape) == 2 else ["t", "c", "y", "x"]
    shape = _array_shape(frame_shape, n_frames or 0)
    group = zarr.open_group(partial, mode="w", zarr_format=2)
    array = group.create_array(
        _LEVEL,
        shape=shape,
        chunks=(1, *shape[1:]),
        dtype=dtype,
        fill_value=0,
        chunk_key_encoding={"name": "v2", "separator": "/"},  # NGFF 0.4 wants "/"
    )
    scale = {"type": "scale", "scale": [1.0] * len(axes)}
    write_multiscales_metadata(
        group,
        [{"path": _LEVEL, "coordinateTransformations": [scale]}],
        fmt=FormatV04(),
        axes=axes,
        name=name,
    )
    (partial / _DONE).mkdir()
    return array


def _array_shape(frame_shape: tuple[int, ...], n_frames: int) -> tuple[int, ...]:
    """The image array's shape: ``(t, y, x)``, or ``(t, c, y, x)`` for frames with channels."""
    height, width = frame_shape[:2]
    return (n_frames, *frame_shape[2:], height, width)


def _recorded(partial: Path) -> set[int]:
    """The frames recorded as written in a partial image."""
    done: set[int] = set()
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(partial / _DONE):
            start, _, stop = entry.name.partition("-")
            if start.isdigit() and stop.isdigit():
                done.update(range(int(start), int(stop)))
    return done


def _ranges(indices: Iterable[int]) -> list[range]:
    """Runs of consecutive indices, in order: ``[0, 1, 2, 5, 6]`` -> ``[0:3, 5:7]``."""
    runs: list[range] = []
    for i in indices:
        if runs and runs[-1].stop == i:
            runs[-1] = range(runs[-1].start, i + 1)
        else:
            runs.append(range(i, i + 1))
    return runs


def _replace_folder(source: Path, target: Path) -> None:
    """Move folder `source` onto `target`, replacing an existing folder there: the old
    one is moved aside first, so `target` is never a mix of both."""
    if not target.exists():
        os.replace(source, target)
        return
    trash = target.with_name(f".{target.name}.replaced-{os.getpid()}")
    os.replace(target, trash)
    os.replace(source, target)
    shutil.rmtree(trash, ignore_errors=True)
