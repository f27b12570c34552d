"""Segment many videos on a Dask cluster (``unetrt segment ... --scheduler ADDRESS``).

The client plans and the workers segment. For each video the client opens the input,
computes its stack statistics once (when the model normalizes per stack), opens the
outputs (resuming a killed run's partial outputs if asked) and cuts the frames still to
do into work units: ranges of a few frames. A worker builds its `Segmenter` once from
the picklable `SegmenterSpec` (its thread budget set to the worker's threads) and
reuses it for every unit; units on one worker run one at a time, so the budget holds.

Outputs: an OME-Zarr output is written by the workers straight into its partial image,
a chunk per frame, each unit recorded when done (`unetrt.io.write_frames`); a TIFF
output is streamed back to the client, which writes the units in order. Only a bounded
number of units is in flight, so the client's memory does not grow with the videos.
The masks equal those of a local run bit for bit: the same engine, options, statistics
and frames.

A video whose input is bad, or whose unit fails on a worker (a corrupt frame, a worker
that died twice over), is reported by name, its outputs discarded, and the other videos
go on. Workers must see the inputs, the model and the OME-Zarr outputs at the same paths
as the client (one machine, or a shared file system).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError, UnetrtError, require
from .io import FrameSource, ZarrWriter, open_frames, write_frames
from .io.runrecord import ResumableOutput
from .normalize import Statistics
from .pipeline import VideoStream, check_shape

if TYPE_CHECKING:
    from .segmenter import RunSummary, Segmenter, SegmenterSpec, SegmentSummary

__all__ = ["LOCAL", "segment_on_cluster", "unit_size"]

#: ``--scheduler local``: start a `LocalCluster` sized to this machine.
LOCAL = "local"
#: Most frames in one work unit (a unit is the grain of balancing and of resuming).
MAX_UNIT_FRAMES = 32
#: Work units per worker thread the frames are cut into, for balance.
_UNITS_PER_THREAD = 4
#: Seconds to wait for the scheduler to answer.
_CONNECT_TIMEOUT = "10s"


def unit_size(frames: int, threads: int) -> int:
    """Frames per work unit for `frames` frames to do on `threads` worker threads:
    enough units to keep every thread busy, none larger than `MAX_UNIT_FRAMES`."""
    return max(1, min(MAX_UNIT_FRAMES, math.ceil(frames / (_UNITS_PER_THREAD * max(1, threads)))))


def cut_units(
    missing: Sequence[range], threads: int, seg: Segmenter
) -> tuple[list[range], list[int]]:
    """The work units of a video whose frames `missing` are still to do, and the frame
    each unit starts running at.

    Frame models: units of `unit_size` frames, each run from its own first frame. A
    temporal model needs the frames before a unit too: in window mode T-1 frames of
    lead-in per unit; in stream mode the state of every frame before, so one unit per
    video run from frame 0 (or, with ``reset_every`` N, units cut at multiples of N, each
    run from the reset before it).
    """
    temporal = seg.temporal
    todo = sum(len(r) for r in missing)
    if temporal is not None and temporal.mode == "stream" and todo:
        every = temporal.reset_every
        if every is None:
            return [range(missing[0].start, missing[-1].stop)], [0]
        size = -(-unit_size(todo, threads) // every) * every
        units = [
            range(s, min(-(-(s + 1) // size) * size, r.stop))
            for r in missing
            for s in sorted({r.start, *range(-(-r.start // size) * size, r.stop, size)})
        ]
        return units, [u.start // every * every for u in units]
    size = unit_size(todo, threads)
    units = [range(s, min(s + size, r.stop)) for r in missing for s in r[::size]]
    lead = 0
    if temporal is not None:  # window mode
        lead = (temporal.window or seg.contract.time_steps) - 1
    return units, [max(u.start - lead, 0) for u in units]


def segment_on_cluster(
    segmenter: Segmenter,
    sources: Sequence[str | os.PathLike[str]],
    outputs: Sequence[Path],
    scheduler: str,
    *,
    resume: bool = False,
    progress: bool = True,
) -> RunSummary:
    """Segment `sources` into `outputs` on the Dask cluster at `scheduler`.

    Args:
        segmenter: The Segmenter whose `spec` the workers build (the client uses it for
            the statistics and the outputs).
        sources: The input videos.
        outputs: One mask output per input (TIFF, or OME-Zarr for ``*.zarr``).
        scheduler: A scheduler address (``tcp://host:8786``) or `LOCAL`.
        resume: Continue the partial outputs of a killed run.
        progress: Show one progress bar over all frames.

    Returns:
        A `RunSummary` (videos done, videos failed with their error).

    Raises:
        MissingDependencyError: Without ``unetrt[dask]``.
        ConfigError: If the scheduler cannot be reached.
    """
    from .segmenter import RunSummary, _progress, count_frames

    with _client(scheduler) as client:
        threads = sum(client.nthreads().values())
        total = count_frames(sources)
        with _progress(total, progress, "videos") as bar:
            run = _Run(client, segmenter, threads, resume, bar)
            run.go(list(zip(sources, outputs, strict=True)))
    order = {os.fspath(s): i for i, s in enumerate(sources)}  # input order, not finishing order
    done = sorted(run.done, key=lambda video: order[video[0]])
    failed = sorted(run.failed, key=lambda video: order[video[0]])
    return RunSummary(tuple(summary for _, summary in done), tuple(failed))


@contextlib.contextmanager
def _client(scheduler: str) -> Iterator[Any]:
    distributed = require("distributed", "dask")
    with ExitStack() as stack:
        if scheduler == LOCAL:
            cluster = stack.enter_context(
                # Worker errors reach the user as one line per video, not as worker logs;
                # the web server on a free port, not 8787, which another cluster may hold.
                distributed.LocalCluster(dashboard_address=":0", silence_logs=logging.CRITICAL)
            )
            address = cluster.scheduler_address
        else:
            address = scheduler
        try:
            client = stack.enter_context(distributed.Client(address, timeout=_CONNECT_TIMEOUT))
        except Exception as exc:  # OSError, TimeoutError, ValueError for a bad address...
            raise ConfigError(f"cannot reach the Dask scheduler at {address}: {exc}") from exc
        if not client.nthreads():
            raise ConfigError(f"the Dask cluster at {address} has no workers")
        yield client


@dataclass
class _Video:
    """One video on its way through the cluster: its outputs and its units."""

    source: str
    src: FrameSource
    outputs: list[ResumableOutput]
    stats: Statistics | None
    units: list[range]
    leads: list[int]  # per unit, the first frame it runs (a temporal model's lead-in)
    started: float = field(default_factory=time.perf_counter)
    written: int = 0  # units handed to the TIFF output, in order
    finished: int = 0  # units done
    waiting: dict[int, list[np.ndarray]] = field(default_factory=dict)  # out of order
    futures: set[Any] = field(default_factory=set)
    failed: bool = False

    @property
    def zarr_partial(self) -> str | None:
        out = self.outputs[0]
        return os.fspath(out.partial) if isinstance(out, ZarrWriter) else None


class _Run:
    """The client's loop: open videos in order, keep a bounded number of units in
    flight, collect results, finish or fail each video."""

    def __init__(self, client: Any, seg: Segmenter, threads: int, resume: bool, bar: Any) -> None:
        self.client = client
        self.seg = seg
        self.spec = seg.spec
        self.threads = threads
        self.resume = resume
        self.bar = bar
        self.window = 2 * threads + 1
        self.done: list[tuple[str, SegmentSummary]] = []  # (input, summary)
        self.failed: list[tuple[str, str]] = []
        self.inflight: dict[Any, tuple[_Video, int]] = {}
        self.waiting = 0  # TIFF units done but not yet written (behind an earlier one)
        self.open: list[_Video] = []  # videos with outputs open

    def go(self, jobs: list[tuple[str | os.PathLike[str], Path]]) -> None:
        distributed = require("distributed", "dask")
        pending = iter(jobs)
        queue: deque[tuple[_Video, int]] = deque()  # units of the video being submitted
        results = distributed.as_completed()
        try:
            while True:
                while len(self.inflight) + self.waiting < self.window:
                    if not queue:
                        job = next(pending, None)
                        if job is None:
                            break
                        video = self._open(*job)
                        if video is not None:
                            queue = deque((video, i) for i in range(len(video.units)))
                        continue
                    video, i = queue.popleft()
                    if not video.failed:
                        future = self._submit(video, i)
                        self.inflight[future] = (video, i)
                        video.futures.add(future)
                        results.add(future)
                if not self.inflight:
                    break
                future = next(results)
                entry = self.inflight.pop(future, None)
                if entry is not None:  # None: cancelled with its failed video
                    entry[0].futures.discard(future)
                    self._collect(*entry, future)
        except BaseException as exc:  # Ctrl-C: resumable outputs keep what is done
            self.client.cancel(list(self.inflight))
            for video in self.open:
                for out in video.outputs:
                    out.__exit__(type(exc), exc, exc.__traceback__)
                video.src.close()
            raise

    def _open(self, source: str | os.PathLike[str], output: Path) -> _Video | None:
        """Open a video and its output; a video with nothing left to do is finished."""
        from .segmenter import check_outputs, check_video

        name = os.fspath(source)
        try:
            src = open_frames(source)
        except UnetrtError as exc:
            self.failed.append((name, str(exc)))
            return None
        try:
            check_outputs(src.path, output, None)
            check_shape(
                src.frame_shape, self.seg.contract.channels, self.seg.contract.input_channels
            )
            check_video(self.seg, src)
            stats = self.seg.stack_statistics(src)
            out = self.seg.open_output(src, output, "masks", self.resume)
        except (UnetrtError, ValueError) as exc:
            src.close()
            self.failed.append((name, str(exc)))
            return None
        units, leads = cut_units(out.missing(), self.threads, self.seg)
        video = _Video(name, src, [out], stats, units, leads)
        self.open.append(video)
        if not units:
            self._finish(video)
            return None
        return video

    def _submit(self, video: _Video, i: int) -> Any:
        unit = video.units[i]
        return self.client.submit(
            _segment_unit,
            self.spec,
            video.source,
            video.leads[i],
            unit.start,
            unit.stop,
            video.stats,
            video.zarr_partial,
            pure=False,
        )

    def _collect(self, video: _Video, i: int, future: Any) -> None:
        unit = video.units[i]
        try:
            masks = future.result()
        except UnetrtError as exc:
            return self._fail(video, str(exc))
        except Exception as exc:  # a worker died, or a worker-side bug
            where = f"frames {unit.start}-{unit.stop - 1} of {video.src.name}"
            return self._fail(video, f"{type(exc).__name__} on a Dask worker ({where}): {exc}")
        try:
            if video.zarr_partial is None:  # TIFF: write the units in order
                video.waiting[i] = masks
                self.waiting += 1
                while video.written in video.waiting:
                    start = video.units[video.written].start
                    for k, mask in enumerate(video.waiting.pop(video.written)):
                        video.outputs[0].write(mask, start + k)
                    self.waiting -= 1
                    video.written += 1
            video.finished += 1
            self.bar.update(len(unit))
            if video.finished == len(video.units):
                self._finish(video)
        except (UnetrtError, ValueError) as exc:
            self._fail(video, str(exc))

    def _finish(self, video: _Video) -> None:
        from .segmenter import SegmentSummary

        self.open.remove(video)
        try:
            for out in video.outputs:
                out.close()
        except (UnetrtError, ValueError) as exc:
            video.src.close()
            self.failed.append((video.source, str(exc)))
            return
        out = video.outputs[0]
        frames = sum(len(u) for u in video.units)
        seconds = time.perf_counter() - video.started
        summary = SegmentSummary(
            frames, seconds, out.path, None, out.resumed, out.replaced_other_settings
        )
        self.done.append((video.source, summary))
        video.src.close()

    def _fail(self, video: _Video, message: str) -> None:
        video.failed = True
        self.waiting -= len(video.waiting)
        video.waiting.clear()
        if video in self.open:
            self.open.remove(video)
        for future in video.futures:
            self.inflight.pop(future, None)
            future.cancel()
        for out in video.outputs:
            out.abort()
        video.src.close()
        self.failed.append((video.source, message))


# --------------------------------------------------------------------------- workers
_segmenters: dict[str, tuple[Segmenter, threading.Lock]] = {}
_segmenters_lock = threading.Lock()


def _worker_segmenter(spec: SegmenterSpec) -> tuple[Segmenter, threading.Lock]:
    """This worker's Segmenter for `spec`, built once; its threads are the worker's."""
    model = Path(spec.model)
    try:  # a model file retrained in place is a new model for a long-lived worker
        info = model.stat()
        key = f"{spec!r} {info.st_size} {info.st_mtime_ns}"
    except OSError:
        key = repr(spec)  # a built-in name; a missing file fails in build() below
    with _segmenters_lock:
        if key not in _segmenters:
            if spec.threads is None:
                from distributed import get_worker

                spec = dataclasses.replace(spec, threads=get_worker().state.nthreads)
            _segmenters[key] = (spec.build(), threading.Lock())
        return _segmenters[key]


def _segment_unit(
    spec: SegmenterSpec,
    source: str,
    lead: int,
    start: int,
    stop: int,
    stats: Statistics | None,
    zarr_partial: str | None,
) -> list[np.ndarray] | None:
    """A work unit, on a worker: the masks of frames ``start:stop`` of `source`,
    written into the partial OME-Zarr image `zarr_partial` or returned (TIFF). Frames
    from `lead` on are run (a temporal model's lead-in), from `start` on kept."""
    seg, lock = _worker_segmenter(spec)
    kept: list[np.ndarray] = []
    first = start  # the first frame of `kept`
    with lock, open_frames(source, slice(lead, stop)) as src:
        stream = VideoStream(src.name, stats, src.describe_frame)
        for index, mask in enumerate(seg.segment_frames(iter(src), stream), lead):
            if index < start:
                continue
            kept.append(mask)
            if zarr_partial is not None and len(kept) == MAX_UNIT_FRAMES:
                # A stream unit spans a whole video: written as it goes, memory bounded.
                write_frames(Path(zarr_partial), first, kept)
                first, kept = first + len(kept), []
    if zarr_partial is None:
        return kept
    write_frames(Path(zarr_partial), first, kept)
    return None
