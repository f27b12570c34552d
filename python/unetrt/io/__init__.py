"""Streaming frame I/O: lazy readers, background prefetch and an atomic mask writer.

One module per job:

- `readers`: `open_frames` and the `FrameSource` it returns (multi-page TIFF, single
  images, folders and glob patterns, read one frame at a time), plus the file-name
  rules shared with training and evaluation (`IMAGE_SUFFIXES`, `frame_number`).
- `follow`: `follow_frames` and the `FollowedFrames` it returns, which read a TIFF or
  a folder while acquisition software is still writing it, frame by frame as each one
  is complete.
- `prefetching`: `prefetch`, which reads the next frames in a background thread (the
  module is not called ``prefetch`` so that the function does not hide it).
- `writer`: `StackWriter`, which streams masks into a multi-page TIFF.
- `omezarr`: `ZarrWriter`, which writes masks into an OME-Zarr image (several
  processes at once, with `write_frames`), and the OME-Zarr reader behind
  `open_frames` (needs ``unetrt[zarr]``).
- `runrecord`: `RunRecord`, the settings a partial output was made with, locked while
  a run writes it, so that a killed run can be resumed (``--resume``).
- `atomic`: `atomic_output` and `partial_path`, so that an output appears only once it
  is complete (the writer, model export, evaluation CSV and training outputs use them).

Import the names from ``unetrt.io``; which submodule holds a name matters only to a test
that patches it.
"""

from __future__ import annotations

from .atomic import atomic_output, output_error, partial_path, resumable_partial_path
from .follow import FollowedFrames, follow_frames
from .omezarr import ZARR_SUFFIX, ZarrWriter, is_zarr, write_frames
from .prefetching import prefetch
from .readers import (
    IMAGE_SUFFIXES,
    MAX_CHANNELS,
    READABLE_DTYPES,
    FrameSource,
    frame_number,
    open_frames,
)
from .writer import COMPRESSIONS, FORMATS, StackWriter, open_output, output_format

__all__ = [
    "COMPRESSIONS",
    "FORMATS",
    "FollowedFrames",
    "IMAGE_SUFFIXES",
    "MAX_CHANNELS",
    "READABLE_DTYPES",
    "FrameSource",
    "StackWriter",
    "ZARR_SUFFIX",
    "ZarrWriter",
    "atomic_output",
    "follow_frames",
    "frame_number",
    "is_zarr",
    "open_frames",
    "open_output",
    "output_format",
    "output_error",
    "partial_path",
    "prefetch",
    "resumable_partial_path",
    "write_frames",
]
