"""The frame pipeline: its stages, the per-video stream, and the executor seam.

Every frame goes through the same stages, in this order::

    prepare   check shape and values, illumination, the normalization's affine map
    plan      the frame's tile plan (frozen per frame size in its `VideoStream`)
    extract   tiles cut and normalized into the executor's input batch (C++ core)
    run       the model on a batch of tiles (`unetrt.model.Model.predict`)
    activate  logits to probabilities (`unetrt.masks.activate`)
    stitch    tile cores (crop) or tapered windows (blend) into the frame (C++ core)
    finish    the blend division, a check of the values, (H, W) or (H, W, K) out

An executor drives them. `CpuExecutor` runs them on the host with the C++ core and any
backend, packing tiles of consecutive frames into one engine call so that whole-frame
tiles of small frames still run in batches; several frames are in flight at once
(frames go in, probabilities come out in order). A CUDA executor implements the same
`Executor` protocol with device buffers and streams.

Ownership: the executor owns the input batch and the model-output buffers (reused for
every batch); each frame in flight (`FrameJob`) owns its probability buffer, which is
handed to the caller when the frame is done; a `VideoStream` owns what lives for one
video (statistics, tile plans with their blend tapers, recurrent state).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from . import masks, tiling
from .backends.base import channel_axis
from .channels import ChannelCode, check_raw_shape, select_channels
from .contract import ModelContract
from .errors import ConfigError, InputError, ModelError, UnetrtError
from .model import Model
from .normalize import Affine, Statistics, prepare_frame, sample_statistics

STITCH_MODES = ("crop", "blend")


# ----------------------------------------------------------------------- configuration
#: Rows of tiles `TilePolicy` considers for a frame that does not fit in one tile.
MAX_TILE_ROWS = 16


@dataclass(frozen=True)
class TilePolicy:
    """How frames are cut into tiles.

    Attributes:
        alignment: Tile sizes are multiples of this (the model's ``2**pools``).
        halo: Context per tile side, pixels.
        tile: Largest tile (height, width) asked for, ``None`` for ``"auto"``.
        max_tile_pixels: With ``tile=None``: whole frames up to this many pixels go in
            one tile; larger frames in the tiles of at most this many pixels that
            compute the fewest pixels, halos included (strips across the frame where
            they fit, as they overlap on two sides only).
        fixed_tile: The model's only accepted (height, width), if it has one.
    """

    alignment: int
    halo: int
    tile: tuple[int, int] | None
    max_tile_pixels: int
    fixed_tile: tuple[int, int] | None = None

    def plan(self, height: int, width: int) -> tiling.TilePlan:
        """The tile plan for frames of this size."""
        if self.fixed_tile is not None:
            max_tile, fixed = self.fixed_tile, True
        elif self.tile is not None:
            max_tile, fixed = self.tile, False
        else:
            a = self.alignment
            padded = (-(-height // a) * a, -(-width // a) * a)
            if padded[0] * padded[1] > self.max_tile_pixels:
                return self._fitting_plan(height, width)
            max_tile, fixed = padded, False
        return tiling.plan_tiles(
            height, width, alignment=self.alignment, halo=self.halo, max_tile=max_tile, fixed=fixed
        )

    def _fitting_plan(self, height: int, width: int) -> tiling.TilePlan:
        """The plan of tiles of at most `max_tile_pixels` that computes the fewest
        pixels: for each number of rows of tiles, the widest tiles that fit, then every
        tile shrunk to the smallest size that covers the frame with as many tiles."""
        a = self.alignment
        h = -(-self.halo // a) * a
        padded_h, padded_w = -(-height // a) * a, -(-width // a) * a

        def span(padded: int, n: int) -> int:  # n windows overlapping by 2 h cover it
            return min(padded, -(-(padded + 2 * h * (n - 1)) // (n * a)) * a)

        best: tiling.TilePlan | None = None
        for rows in range(1, MAX_TILE_ROWS + 1):
            tile_h = span(padded_h, rows)
            tile_w = min(padded_w, self.max_tile_pixels // tile_h // a * a)
            if tile_w < a:
                break
            try:
                plan = self._plan(height, width, tile_h, tile_w)
                columns = len(np.unique(plan.tiles[:, 1]))
                plan = self._plan(height, width, tile_h, span(padded_w, columns))
            except ConfigError:  # too narrow for the halo
                continue
            cost = plan.n_tiles * plan.tile_h * plan.tile_w
            if best is None or cost < best.n_tiles * best.tile_h * best.tile_w:
                best = plan
        if best is None:  # no tile of that area holds the halo: the smallest that does
            side = 2 * h + a
            return self._plan(height, width, min(side, padded_h), min(side, padded_w))
        return best

    def _plan(self, height: int, width: int, tile_h: int, tile_w: int) -> tiling.TilePlan:
        return tiling.plan_tiles(
            height, width, alignment=self.alignment, halo=self.halo, max_tile=(tile_h, tile_w)
        )


@dataclass(frozen=True)
class FrameChecks:
    """What `prepare` checks and fixes in a raw frame.

    Attributes:
        channels: Channels the model takes per frame.
        nan: ``None``: a frame holding NaN is an error; a number: NaN reads as it.
        codes: The contract's ``input_channels``: raw frames are checked against the
            channels they read and become the model's channels (`select_channels`).
    """

    channels: int
    nan: float | None = None
    codes: tuple[ChannelCode, ...] = ()


# ----------------------------------------------------------------------- per video
@dataclass(eq=False)
class PlannedSize:
    """A frozen tile plan for one frame size, with what its stitching reuses."""

    plan: tiling.TilePlan
    taper: np.ndarray | None  # blend weights, computed once per plan


class VideoStream:
    """What belongs to one video while it is segmented.

    One per input video (`unetrt.Segmenter.segment` opens one per input; live use gets
    one from `unetrt.Segmenter.stream`). It holds the video's stack statistics (fixed
    when it is opened), its tile plans (one per frame size, frozen at the first frame of
    that size), the count of frames seen, and slots for recurrent state
    (empty for frame models; a step model's executor keeps its whole-frame state maps and,
    in window mode, the last frames here: `unetrt.temporal`).

    Args:
        name: The video's name, for messages.
        stats: Stack statistics for ``scope="stack"`` normalization (None otherwise).
        describe_frame: Names frame ``i`` of the video in messages (default
            ``"frame i of NAME"``).
    """

    def __init__(
        self,
        name: str = "frames",
        stats: Statistics | None = None,
        describe_frame: Callable[[int], str] | None = None,
    ) -> None:
        self.name = name
        self.stats = stats
        self.frames_seen = 0
        self._lock = threading.Lock()
        self.state: dict[str, Any] = {}
        self._describe = describe_frame
        self._sizes: dict[tuple[TilePolicy, bool, int, int], PlannedSize] = {}

    def next_frame(self) -> int:
        """The index of the frame arriving now (thread-safe: frames of a live stream may
        come from several threads)."""
        with self._lock:
            index = self.frames_seen
            self.frames_seen += 1
            return index

    def describe_frame(self, index: int) -> str:
        """How messages name frame ``index`` of this video."""
        return self._describe(index) if self._describe else f"frame {index} of {self.name}"

    def planned(self, policy: TilePolicy, height: int, width: int, blend: bool) -> PlannedSize:
        """The frozen plan for frames of this size (made at the first such frame)."""
        # Keyed by the policy too: a stream handed from one Segmenter to another (other
        # tiles or halo) gets that one's plans, never a stale plan.
        key = (policy, blend, height, width)
        entry = self._sizes.get(key)
        if entry is None:
            plan = policy.plan(height, width)
            taper = tiling.taper_weights(plan.tile_h, plan.tile_w) if blend else None
            entry = self._sizes[key] = PlannedSize(plan, taper)
        return entry

    def __repr__(self) -> str:
        return f"<VideoStream {self.name!r}: {self.frames_seen} frames>"


def fit_statistics(
    read: Callable[[int], np.ndarray],
    n_frames: int,
    contract: ModelContract,
    checks: FrameChecks,
    describe_frame: Callable[[int], str],
) -> Statistics | None:
    """Stack statistics for a video, if its normalization needs them.

    The one "fit statistics when the scope is stack" step: segmenting a stack,
    evaluating and the live stream all call this. Sampled frames pass the same checks
    as every frame (`check_frame`).

    Args:
        read: Returns frame ``i`` of the video.
        n_frames: Frames in the video.
        contract: The contract in force (its normalization decides).
        checks: The frame checks.
        describe_frame: Names frame ``i`` in messages.

    Returns:
        The statistics, or None when the normalization is per frame or needs none.
    """
    spec = contract.normalization
    if not spec.needs_stack_statistics:
        return None
    return sample_statistics(
        lambda i: check_frame(read(i), checks, describe_frame(i)), n_frames, spec
    )


# ----------------------------------------------------------------------- stages
def check_shape(shape: tuple[int, ...], channels: int, codes: tuple[ChannelCode, ...] = ()) -> None:
    """Raises InputError unless frames of this shape fit a model of ``channels``.

    (H, W) fits one channel, (H, W, C) fits C channels; (H, W, 1) is taken as (H, W).
    With channel `codes` (the contract's ``input_channels``), raw frames need the
    channels the codes read.
    """
    if codes:
        check_raw_shape(shape, codes, "the frames")
        return
    if len(shape) == 3 and shape[-1] == 1 and channels == 1:
        return
    if (channels == 1 and len(shape) != 2) or (
        channels > 1 and (len(shape) != 3 or shape[-1] != channels)
    ):
        expected = "(H, W)" if channels == 1 else f"(H, W, {channels})"
        raise InputError(
            f"the model takes frames of shape {expected} ({channels} channel"
            f"{'s' if channels > 1 else ''}), got frames of shape {tuple(shape)}"
        )


def check_frame(frame: np.ndarray, checks: FrameChecks, label: str) -> np.ndarray:
    """Stage 1a: a frame of the model's shape and with usable values.

    Accepts (H, W) (or (H, W, 1)) for one-channel models and (H, W, C) for C channels;
    with channel codes, raw frames with the channels they read, which it returns as the
    model's channels.
    Floating frames must be finite: NaN is an error unless ``checks.nan`` says what it
    reads as; infinity is always an error (it has no intensity to normalize).

    Raises:
        InputError: Naming the frame (``label``) and what is wrong with it.
    """
    frame = np.asarray(frame)
    if frame.ndim == 3 and frame.shape[-1] == 1 and checks.channels == 1 and not checks.codes:
        frame = frame[..., 0]
    if checks.codes:
        check_raw_shape(frame.shape, checks.codes, label)
    else:
        check_shape(frame.shape, checks.channels)
    if frame.dtype.kind == "f" and frame.dtype.itemsize > 4:
        # The kernel computes in float32: larger magnitudes would become infinity there.
        big = int(np.count_nonzero(np.abs(frame) > np.finfo(np.float32).max))
        if big:
            raise InputError(
                f"{label} holds {big} pixel value(s) beyond the float32 range; no mask made"
            )
    if frame.dtype.kind == "f" and not np.isfinite(frame).all():
        nan = np.isnan(frame)
        infinite = int(np.count_nonzero(~nan & ~np.isfinite(frame)))
        if infinite:
            raise InputError(f"{label} holds {infinite} infinite pixel value(s); no mask made")
        if checks.nan is None:
            raise InputError(
                f"{label} holds {int(np.count_nonzero(nan))} NaN pixel value(s); no mask "
                f"made (use --nan VALUE, or nan=VALUE, to read NaN as a value)"
            )
        frame = np.where(nan, frame.dtype.type(checks.nan), frame)
    return select_channels(frame, checks.codes) if checks.codes else frame


def prepare(
    raw: np.ndarray, stream: VideoStream, contract: ModelContract, checks: FrameChecks, label: str
) -> tuple[np.ndarray, Affine]:
    """Stage 1: the checked frame the kernel reads and its normalization map."""
    frame = check_frame(raw, checks, label)
    if contract.normalization.needs_stack_statistics and stream.stats is None:
        raise ConfigError(
            "this model normalizes per stack: call fit_stack() with the stack first, "
            "open a stream with its statistics, or use segment() which does it"
        )
    # The same two steps as training: illumination correction, then statistics.
    return prepare_frame(frame, contract.normalization, stream.stats)


@dataclass(eq=False)
class FrameJob:
    """A frame in flight: its tiles are extracted, run and stitched into `probabilities`.

    The frame itself is dropped as soon as its last tile is extracted.
    """

    index: int
    label: str
    frame: np.ndarray | None
    affine: Affine
    planned: PlannedSize
    probabilities: np.ndarray
    weight_sum: np.ndarray | None
    remaining: int = field(init=False)

    def __post_init__(self) -> None:
        self.remaining = self.planned.plan.n_tiles

    @property
    def plan(self) -> tiling.TilePlan:
        """The frame's tile plan."""
        return self.planned.plan


def stitch(job: FrameJob, outputs: np.ndarray, tiles: slice, layout: str, threads: int) -> None:
    """Stage 6: model outputs of consecutive tiles of one frame into its result."""
    if job.weight_sum is None:
        tiling.stitch_crop(
            outputs, job.plan, tiles, job.probabilities, layout=layout, threads=threads
        )
    else:
        assert job.planned.taper is not None
        tiling.stitch_blend(
            outputs,
            job.plan,
            tiles,
            job.planned.taper,
            job.probabilities,
            job.weight_sum,
            layout=layout,
            threads=threads,
        )
    job.remaining -= tiles.stop - tiles.start


def finish(job: FrameJob, threads: int) -> np.ndarray:
    """Stage 7: the frame's probabilities, (H, W) for one channel or (H, W, K)."""
    if job.weight_sum is not None:
        tiling.finish_blend(job.probabilities, job.weight_sum, threads=threads)
    probs = job.probabilities
    return probs[..., 0] if probs.shape[-1] == 1 else probs


def check_outputs(outputs: np.ndarray, slots: Sequence[tuple[FrameJob, int]]) -> None:
    """Stage 4b: model outputs must be finite (checked before activation, where an
    infinite logit would become a plausible 0 or 1).

    Raises:
        ModelError: Naming the frames of the batch: a broken or overflowing model would
            otherwise give silently empty masks.
    """
    if not np.isfinite(outputs).all():
        labels = list(dict.fromkeys(job.label for job, _ in slots))
        raise ModelError(f"the model produced NaN or infinite values for {', '.join(labels)}")


# ----------------------------------------------------------------------- executors
class Executor(Protocol):
    """Drives the stages for a stream of frames of one video.

    Implementations keep several frames in flight and return results in submission
    order; they own their batch buffers and reuse them across calls.
    """

    def run(
        self, stream: VideoStream, frames: Iterable[np.ndarray], *, isolate: bool = False
    ) -> Iterator[np.ndarray | Exception]:
        """Probabilities of each frame, in order (see `finish`).

        With ``isolate``, a frame refused by `prepare` (NaN, a wrong shape) yields its
        exception in its place and the others go on (the live queue wants that); else
        the exception ends the run.
        """
        ...

    def run_masks(
        self, stream: VideoStream, frames: Iterable[np.ndarray], *, isolate: bool = False
    ) -> Iterator[np.ndarray | Exception]:
        """Masks of each frame before post-processing (`unetrt.masks.mask_of`), in
        order; a GPU executor computes them on the device and downloads only them."""
        ...

    def close(self) -> None:
        """Release what the executor holds besides the model (device memory, streams)."""
        ...


@dataclass(frozen=True)
class ExecutorConfig:
    """What an executor needs besides the model.

    Attributes:
        contract: The contract in force (overrides applied).
        tiles: How frames are cut.
        checks: What is checked in each raw frame.
        batch: Tiles per engine call.
        stitch: ``"crop"`` or ``"blend"``.
        threads: Threads for the C++ core (the same budget as the engine's).
    """

    contract: ModelContract
    tiles: TilePolicy
    checks: FrameChecks
    batch: int = 1
    stitch: str = "crop"
    threads: int = 0

    def __post_init__(self) -> None:
        check_batching(self.batch, self.stitch)


def check_batching(batch: int, stitch: str) -> None:
    """Raises ConfigError for a batch below 1 or an unknown stitch mode."""
    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    if stitch not in STITCH_MODES:
        raise ConfigError(f"stitch must be one of {STITCH_MODES}, got {stitch!r}")


@dataclass(eq=False)
class _BatchBuffers:
    """The input batch and the model-output batch of one run, reused batch after batch."""

    inputs: np.ndarray | None = None
    outputs: np.ndarray | None = None  # None when the model's channels are dynamic
    states: dict[str, np.ndarray] = field(default_factory=dict)  # state tiles, step models


class CpuExecutor:
    """The host executor: C++ core for tiles and stitching, any backend for the model.

    Tiles of consecutive frames share engine calls (``batch`` tiles per call), so at
    most about ``batch`` frames are in flight whatever the stack length.

    Args:
        model: The opened model.
        config: Tiling, batching and stitching options.
    """

    def __init__(self, model: Model, config: ExecutorConfig) -> None:
        self.model = model
        self.config = config
        self.classes = model.output_channels or 1
        # A model with a fixed batch size gets full batches; padding rows are ignored.
        self._padded = model.accepted.fixed_batch is not None
        # Batch buffers not in use by a run: each run takes a set and gives it back, so
        # runs one after the other reuse them and runs in two threads never share one.
        self._free: list[_BatchBuffers] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        """Release what the executor holds besides the model (nothing, for this one)."""

    def run(
        self, stream: VideoStream, frames: Iterable[np.ndarray], *, isolate: bool = False
    ) -> Iterator[np.ndarray | Exception]:
        """Probabilities of each frame, in order; see `Executor.run`."""
        with self._lock:
            buffers = self._free.pop() if self._free else _BatchBuffers()
        try:
            yield from self._run(stream, frames, buffers, isolate)
        finally:
            with self._lock:
                self._free.append(buffers)

    def run_masks(
        self, stream: VideoStream, frames: Iterable[np.ndarray], *, isolate: bool = False
    ) -> Iterator[np.ndarray | Exception]:
        """Masks of each frame, in order; see `Executor.run_masks`."""
        contract, threads = self.config.contract, self.config.threads
        for result in self.run(stream, frames, isolate=isolate):
            yield (
                result
                if isinstance(result, Exception)
                else masks.mask_of(result, contract, threads=threads)
            )

    def _run(
        self,
        stream: VideoStream,
        frames: Iterable[np.ndarray],
        buffers: _BatchBuffers,
        isolate: bool,
    ) -> Iterator[np.ndarray | Exception]:
        threads = self.config.threads
        pending: deque[FrameJob | Exception] = deque()
        slots: list[tuple[FrameJob, int]] = []

        def done() -> Iterator[np.ndarray | Exception]:
            while pending and (isinstance(pending[0], Exception) or pending[0].remaining == 0):
                head = pending.popleft()
                yield head if isinstance(head, Exception) else finish(head, threads)

        for raw in frames:
            try:
                job = self._new_job(stream, raw)
            except UnetrtError as exc:
                if not isolate:
                    raise
                pending.append(exc)  # in its place: results stay in order
                yield from done()
                continue
            pending.append(job)
            shape = self._tile_shape(job.plan)
            if buffers.inputs is None or buffers.inputs.shape[1:] != shape:
                if slots:  # a frame of another size: run what is batched first
                    self._run_batch(buffers, slots)
                    slots.clear()
                self._allocate(buffers, shape)
            inputs, frame = buffers.inputs, job.frame
            assert inputs is not None and frame is not None
            for index in range(job.plan.n_tiles):
                k = len(slots)
                tiling.extract_tiles(
                    frame,
                    job.plan,
                    slice(index, index + 1),
                    job.affine,
                    layout=self.config.contract.layout,
                    out=inputs[k : k + 1],
                    threads=threads,
                )
                slots.append((job, index))
                if index == job.plan.n_tiles - 1:
                    job.frame = None  # every tile is cut: the frame is no longer needed
                if len(slots) == self.config.batch:
                    self._run_batch(buffers, slots)
                    slots.clear()
            del raw, frame  # only the job's tiles and results are kept from here on
            yield from done()
        if slots:
            self._run_batch(buffers, slots)
        yield from done()

    def _new_job(self, stream: VideoStream, raw: np.ndarray) -> FrameJob:
        config = self.config
        index = stream.next_frame()  # counted even if the frame is refused below
        label = stream.describe_frame(index)
        frame, affine = prepare(raw, stream, config.contract, config.checks, label)
        blend = config.stitch == "blend"
        planned = stream.planned(config.tiles, frame.shape[0], frame.shape[1], blend)
        shape = (frame.shape[0], frame.shape[1], self.classes)
        return FrameJob(
            index=index,
            label=label,
            frame=frame,
            affine=affine,
            planned=planned,
            probabilities=np.zeros(shape, np.float32) if blend else np.empty(shape, np.float32),
            weight_sum=np.zeros(shape[:2], np.float32) if blend else None,
        )

    def _tile_shape(self, plan: tiling.TilePlan) -> tuple[int, int, int]:
        c = self.config.contract.channels
        if self.config.contract.layout == "NHWC":
            return (plan.tile_h, plan.tile_w, c)
        return (c, plan.tile_h, plan.tile_w)

    def _allocate(self, buffers: _BatchBuffers, tile_shape: tuple[int, int, int]) -> None:
        batch = self.config.batch
        buffers.inputs = np.empty((batch, *tile_shape), np.float32)
        layout = self.config.contract.layout
        out_shape = list((batch, *tile_shape))
        out_shape[channel_axis(layout)] = self.classes
        known = self.model.output_channels is not None
        buffers.outputs = np.empty(out_shape, np.float32) if known else None

    def _run_batch(self, buffers: _BatchBuffers, slots: list[tuple[FrameJob, int]]) -> None:
        """Stages 4-6 for one batch: run, activate, stitch."""
        assert buffers.inputs is not None
        n = len(slots)
        rows = self.config.batch if self._padded else n
        out = None if buffers.outputs is None else buffers.outputs[:rows]
        outputs = self.model.predict(buffers.inputs[:rows], out)[:n]
        check_outputs(outputs, slots)
        layout = self.config.contract.layout
        outputs = masks.activate(outputs, self.config.contract.output, channel_axis(layout))
        # Stitch runs of consecutive tiles of the same frame with one call each.
        start = 0
        while start < n:
            job, first = slots[start]
            stop = start + 1
            while stop < n and slots[stop][0] is job:
                stop += 1
            tiles = slice(first, first + (stop - start))
            stitch(job, outputs[start:stop], tiles, layout, self.config.threads)
            start = stop
