"""`Segmenter`: the whole pipeline, for one frame (live use) or a whole stack.

reader -> normalizer -> tiler -> backend -> stitcher -> masks / post-processing -> writer.
The stages and the executor that drives them live in `unetrt.pipeline`, masks in
`unetrt.masks`; this module holds the user-facing API: the options (`SegmenterSpec`,
picklable, so that a Dask worker can build the same Segmenter), the per-video streams,
and whole-stack runs with their outputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import masks, tiling
from .backends import parse_device
from .contract import ModelContract
from .errors import ConfigError, InputError, OutputError, UnetrtError
from .io import (
    FORMATS,
    FollowedFrames,
    FrameSource,
    follow_frames,
    is_zarr,
    open_frames,
    open_output,
    output_format,
    prefetch,
)
from .io.runrecord import ResumableOutput
from .live import LiveQueue, LiveStats, check_queue
from .model import Model, open_model
from .models import BUILTIN_MODELS, DEFAULT_MODEL
from .normalize import Normalization, Statistics
from .pipeline import (
    STITCH_MODES,
    CpuExecutor,
    Executor,
    ExecutorConfig,
    FrameChecks,
    TilePolicy,
    VideoStream,
    check_batching,
    check_shape,
    fit_statistics,
)
from .postprocess import PostProcess
from .temporal import StatefulExecutor, temporal_options

#: Memory for a model's activations that ``tile="auto"`` keeps within: a tile holds at
#: most this many bytes / (the model's peak activation bytes per pixel, from its graph,
#: x what its backend holds per byte of them, `ACTIVATION_OVERHEAD`). With 1.5 GiB a
#: 32-filter U-Net (512 bytes a pixel) on 2048 x 2048 frames runs in two strips on
#: OpenVINO and four tiles on ONNX Runtime, each within 2 GB of peak memory.
DEFAULT_MEMORY_BUDGET = 3 * 2**29
#: Memory a backend holds per byte of live activations, measured with a 32-filter U-Net
#: on tiles of 0.4-4 Mpixel (benchmarks/RESULTS.md): ONNX Runtime's arena (which keeps
#: it fast: without it, page faults make it 1.2-2.3x slower) holds about 2.5 times the
#: live bytes; OpenVINO, compiled per static shape, about what is live. Unknown: 2.5.
ACTIVATION_OVERHEAD = {"onnxruntime": 2.5, "openvino": 1.0}
#: The tile area ``tile="auto"`` allows where a model's activation size is unknown.
DEFAULT_MAX_TILE_PIXELS = 2048 * 2048
#: Seconds without a new frame that end following a growing input (by default).
DEFAULT_IDLE_TIMEOUT = 10.0
#: Frames that may wait in the live queue of `Segmenter.submit` (by default).
DEFAULT_QUEUE_SIZE = 8

__all__ = [
    "STITCH_MODES",
    "RunSummary",
    "SegmentSummary",
    "Segmenter",
    "SegmenterSpec",
    "VideoStream",
]


@dataclass(frozen=True)
class SegmentSummary:
    """What a `Segmenter.segment` run did."""

    frames: int
    seconds: float
    output: Path
    probabilities: Path | None = None
    #: Frames kept from a killed run's partial output (``resume``).
    resumed: int = 0
    #: ``resume`` found a partial output made with other settings and replaced it.
    restarted: bool = False

    @property
    def frames_per_second(self) -> float:
        """Frames per second over the whole run (reading and writing included)."""
        return self.frames / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        kept = f" ({self.resumed} frames kept from the interrupted run)" if self.resumed else ""
        if self.restarted:
            kept = " (the earlier partial output had other settings: started anew)"
        return (
            f"segmented {self.frames} frames in {self.seconds:.1f} s "
            f"({self.frames_per_second:.2f} frames/s) -> {self.output}{kept}"
        )


@dataclass(frozen=True)
class RunSummary:
    """What a `Segmenter.segment_many` run did.

    Attributes:
        videos: One summary per video segmented.
        failed: ``(input, error message)`` for each video that failed.
    """

    videos: tuple[SegmentSummary, ...]
    failed: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        lines = [str(v) for v in self.videos]
        lines += [f"FAILED {source}: {message}" for source, message in self.failed]
        frames = sum(v.frames for v in self.videos)
        lines.append(
            f"{len(self.videos)} of {len(self.videos) + len(self.failed)} videos segmented "
            f"({frames} frames)" + (f"; {len(self.failed)} failed" if self.failed else "")
        )
        return "\n".join(lines)


def parse_tile(tile: str | int | tuple[int, int]) -> tuple[int, int] | None:
    """Parse a tile option: ``"auto"`` (None), ``256``, ``"256"`` or ``"256x512"``."""
    if isinstance(tile, tuple):
        size = tile
    elif isinstance(tile, int):
        size = (tile, tile)
    elif tile == "auto":
        return None
    else:
        parts = str(tile).lower().split("x")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ConfigError(f"tile must be 'auto', SIZE or HxW, got {tile!r}") from None
        if len(values) not in (1, 2):
            raise ConfigError(f"tile must be 'auto', SIZE or HxW, got {tile!r}")
        size = (values[0], values[-1])
    if min(size) < 1:
        raise ConfigError(f"tile size must be positive, got {tile!r}")
    return (int(size[0]), int(size[1]))


@dataclass(frozen=True)
class SegmenterSpec:
    """Everything that makes a `Segmenter`, as plain values: small, frozen, picklable.

    ``Segmenter(...).spec`` returns it and ``spec.build()`` makes an equal Segmenter, in
    this process or another one (a Dask worker). A model path is kept absolute, so a
    worker started in another folder finds the same file; a built-in model stays a name.
    The fields are the `Segmenter` arguments of the same names.
    """

    model: str = DEFAULT_MODEL
    backend: str = "auto"
    device: str = "cpu"
    precision: str | None = None
    tile: str | int | tuple[int, int] = "auto"
    halo: str | int = "auto"
    batch: int = 1
    stitch: str = "crop"
    normalization: Normalization | tuple[tuple[str, Any], ...] | None = None
    threshold: float | None = None
    threads: int | None = None
    max_tile_pixels: int | None = None
    postprocess: PostProcess = PostProcess()
    nan: float | None = None
    queue_size: int = DEFAULT_QUEUE_SIZE
    when_full: str = "block"
    temporal: str | None = None
    reset_every: int | None = None
    window: int | None = None

    @classmethod
    def of(cls, model: str | os.PathLike[str] | None = None, **options: Any) -> SegmenterSpec:
        """The spec of ``Segmenter(model, **options)``; options are checked by `build`."""
        if model is None:
            name = DEFAULT_MODEL
        elif isinstance(model, str) and model in BUILTIN_MODELS and not Path(model).exists():
            name = model
        else:
            name = os.path.abspath(os.fspath(model))
        norm = options.get("normalization")
        if isinstance(norm, Mapping):  # a partial override, kept hashable and picklable
            options["normalization"] = tuple(sorted(norm.items()))
        if options.get("postprocess") is None:
            options.pop("postprocess", None)
        return cls(model=name, **options)

    def options(self) -> dict[str, Any]:
        """The keyword arguments of `Segmenter` besides the model."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del values["model"]
        if isinstance(self.normalization, tuple):
            values["normalization"] = dict(self.normalization)
        return values

    def build(self) -> Segmenter:
        """A new Segmenter with these options (it opens the model)."""
        return Segmenter(self.model, **self.options())


def default_threads() -> int:
    """The CPUs this process may use (its affinity mask, as a Dask worker or a batch
    job is given), the default thread budget."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Segmenter:
    """Segment microscopy frames with a U-Net model.

    Example:
        >>> seg = Segmenter("model.onnx")
        >>> mask = seg.segment_frame(frame)            # live: one frame at a time
        >>> seg.segment("video.tif", "video_mask.tif")  # offline: a whole stack

    Args:
        model: Path to an ONNX model, or the name of a built-in model (``"default"``);
            None uses the default model.
        backend: ``"auto"`` (a built model's own; else OpenVINO on the CPU where it
            is installed, else ONNX Runtime), ``"onnxruntime"`` or ``"openvino"``.
        device: ``"cpu"`` or ``"cuda:N"``.
        precision: ``"fp32"`` (default), ``"bf16"`` (OpenVINO, on processors with
            bfloat16 instructions), or ``"int8"`` (a model quantized by ``unetrt
            build-engine``); None: the built model's, else fp32.
        tile: ``"auto"`` (fewest, largest tiles: a whole frame when it fits), a size
            ``256`` / ``"256x512"``.
        halo: ``"auto"`` (from the model contract) or pixels of context per tile side.
        batch: Tiles per engine call (tiles of consecutive frames are packed together).
        stitch: ``"crop"`` (exact: keep each tile's centre) or ``"blend"`` (Gaussian-
            weighted average of overlapping tiles).
        normalization: Overrides the model's normalization: a whole `Normalization`,
            or a dict of the fields to change (e.g. ``{"scope": "stack"}``).
        threshold: Overrides the model's foreground threshold.
        threads: The thread budget of this Segmenter, shared by the engine (ONNX
            Runtime's intra-op threads) and the C++ core; None: the CPUs this process
            may use.
        max_tile_pixels: The largest tile ``tile="auto"`` makes, in pixels; None:
            what keeps the model's activations within `DEFAULT_MEMORY_BUDGET` (from its
            graph; `DEFAULT_MAX_TILE_PIXELS` where that cannot be known).
        postprocess: Optional mask post-processing.
        nan: What NaN pixels of floating-point frames read as; None (default): a frame
            holding NaN is an error naming the frame.
        queue_size: Frames that may wait in the live queue of `submit`.
        when_full: What `submit` does when that queue is full: ``"block"`` (wait for
            room) or ``"drop_oldest"`` (drop the oldest waiting frame, cancelling its
            future, to keep up with a faster producer; see `dropped`).
        temporal: For a temporal step model: ``"stream"`` (default: the state carried
            from frame to frame) or ``"window"`` (each mask from the `window` frames up
            to it, from zero state); see `unetrt.temporal`. An error for frame models.
        reset_every: Stream mode: restart from zero state every this many frames.
        window: Window mode: frames per window (default: the model's ``time_steps``).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        backend: str = "auto",
        device: str = "cpu",
        precision: str | None = None,
        tile: str | int | tuple[int, int] = "auto",
        halo: str | int = "auto",
        batch: int = 1,
        stitch: str = "crop",
        normalization: Normalization | Mapping[str, Any] | None = None,
        threshold: float | None = None,
        threads: int | None = None,
        max_tile_pixels: int | None = None,
        postprocess: PostProcess | None = None,
        nan: float | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        when_full: str = "block",
        temporal: str | None = None,
        reset_every: int | None = None,
        window: int | None = None,
    ) -> None:
        # Every argument but the model, as given: what the spec records (first, so that
        # locals() holds the arguments only).
        options = {k: v for k, v in locals().items() if k not in ("self", "model")}
        del options["normalization"]  # recorded below, in the spec's own form
        check_batching(batch, stitch)  # before the model loads: fail fast
        check_queue(queue_size, when_full)
        if threads is not None and (isinstance(threads, bool) or threads < 1):
            raise ConfigError(f"threads must be >= 1, got {threads}")
        if max_tile_pixels is not None and max_tile_pixels < 1:
            raise ConfigError(f"max_tile_pixels must be positive, got {max_tile_pixels}")
        if nan is not None and not np.isfinite(nan):
            raise ConfigError(f"nan must be a finite number, got {nan!r}")
        self._spec = SegmenterSpec.of(model, **options, normalization=normalization)
        overrides: dict[str, object] = {}
        if halo != "auto":
            try:
                overrides["halo"] = int(halo)
            except ValueError:
                raise ConfigError(f"halo must be 'auto' or pixels, got {halo!r}") from None
        if isinstance(normalization, Normalization):
            overrides["normalization"] = normalization
        if threshold is not None:
            overrides["threshold"] = float(threshold)
        self.threads = threads or default_threads()
        self.model: Model = open_model(
            model,
            backend=backend,
            device=device,
            threads=self.threads,
            overrides=overrides,
            precision=precision,
        )
        contract = self.model.contract
        if isinstance(normalization, Mapping):  # partial override of the model's own
            changed = Normalization.from_dict({**contract.normalization.to_dict(), **normalization})
            contract = contract.replace(normalization=changed)
        self._contract = contract
        self.postprocess = postprocess or PostProcess()
        accepted = self.model.accepted
        self.batch = batch
        if accepted.fixed_batch is not None:
            if batch not in (1, accepted.fixed_batch):
                raise ConfigError(
                    f"this model runs batches of exactly {accepted.fixed_batch} tiles, "
                    f"got batch {batch}"
                )
            self.batch = accepted.fixed_batch  # partial batches are padded
        elif accepted.max_batch is not None and batch > accepted.max_batch:
            raise ConfigError(
                f"this engine runs batches of at most {accepted.max_batch} tiles (built with "
                f"--max-batch {accepted.max_batch}), got batch {batch}"
            )
        if self.postprocess.label and self.classes > 1:
            raise ConfigError(
                f"instance labels need a one-channel foreground model; this model has "
                f"{self.classes} classes"
            )
        wanted = parse_tile(tile)
        fixed = accepted.fixed_tile
        if fixed is not None and wanted is not None and wanted != fixed:
            raise ConfigError(
                f"this model only accepts {fixed[0]}x{fixed[1]} tiles, "
                f"got tile {wanted[0]}x{wanted[1]}"
            )
        largest = accepted.max_tile  # an engine's optimization profile (TensorRT)
        if fixed is None and largest is not None:
            if wanted is None:
                wanted = largest  # auto: frames that fit in one tile, else its largest tiles
            elif wanted[0] > largest[0] or wanted[1] > largest[1]:
                raise ConfigError(
                    f"this engine runs tiles of at most {largest[0]}x{largest[1]} (built "
                    f"with --tile {largest[0]}x{largest[1]}), got tile {wanted[0]}x{wanted[1]}"
                )
        self.stitch = stitch
        self._checks = FrameChecks(
            channels=contract.channels, nan=nan, codes=contract.input_channels
        )
        self._tiles = TilePolicy(
            alignment=contract.alignment,
            halo=contract.halo,
            tile=wanted,
            max_tile_pixels=max_tile_pixels
            or (self._budget_pixels() if wanted is None else DEFAULT_MAX_TILE_PIXELS),
            fixed_tile=fixed,
        )
        config = ExecutorConfig(
            contract=contract,
            tiles=self._tiles,
            checks=self._checks,
            batch=self.batch,
            stitch=stitch,
            threads=self.threads,
        )
        try:
            self.temporal = temporal_options(self.model, temporal, reset_every, window)
        except BaseException:
            self.model.close()
            raise
        self.executor_config = config
        try:
            self._executor: Executor = self._make_executor(config, device)
        except BaseException:
            self.model.close()
            raise
        self._live = VideoStream("frames")
        self._queue = LiveQueue(
            lambda frames: self._executor.run(self._live, frames, isolate=True),
            self.to_mask,
            batch=self.batch,
            queue_size=queue_size,
            when_full=when_full,
        )

    def _make_executor(self, config: ExecutorConfig, device: str) -> Executor:
        """The host executor, or for a backend that runs on device memory (a TensorRT
        engine, on its GPU), the GPU executor (`unetrt.gpu.executor`)."""
        from .gpu.executor import cuda_executor, runs_on_device

        backend = self.model.backend
        if runs_on_device(backend):  # a TensorRT engine: on its GPU (--device cpu: cuda:0)
            spec = parse_device(getattr(backend, "device", device))
            return cuda_executor(self.model, config, spec.index, self.temporal)
        if self.temporal is not None:
            return StatefulExecutor(self.model, config, self.temporal)
        return CpuExecutor(self.model, config)

    # ------------------------------------------------------------------ properties
    def _budget_pixels(self) -> int:
        """The tile area that keeps this model's activations for a batch of tiles
        within `DEFAULT_MEMORY_BUDGET`."""
        per_pixel = self.model.activation_bytes
        if not per_pixel:
            return DEFAULT_MAX_TILE_PIXELS
        held = per_pixel * ACTIVATION_OVERHEAD.get(self.model.backend.name, 2.5)
        return max(1, int(DEFAULT_MEMORY_BUDGET / held / self.batch))

    @property
    def spec(self) -> SegmenterSpec:
        """The options this Segmenter was made with; ``spec.build()`` makes another."""
        return self._spec

    @property
    def contract(self) -> ModelContract:
        """The model contract in force (read from the model, inferred, or overridden)."""
        return self._contract

    @property
    def classes(self) -> int:
        """Number of output channels: 1 for a foreground probability, K for K classes."""
        return self.model.output_channels or 1

    def plan_for(self, height: int, width: int) -> tiling.TilePlan:
        """The tile plan used for frames of this size."""
        return self._tiles.plan(height, width)

    # ------------------------------------------------------------------ streams
    def stream(
        self,
        stats: Statistics | None = None,
        *,
        name: str = "frames",
        source: FrameSource | Sequence[np.ndarray] | None = None,
    ) -> VideoStream:
        """A new per-video stream, for live use or one video among several.

        Args:
            stats: Stack statistics for a stack-scope normalization, if known (e.g.
                computed once by a Dask client and sent to the workers).
            name: The video's name in messages.
            source: The whole video, to compute the statistics from (`stack_statistics`)
                when the normalization needs them and ``stats`` is None.
        """
        describe = source.describe_frame if isinstance(source, FrameSource) else None
        if isinstance(source, FrameSource):
            name = source.name
        if stats is None and source is not None:
            stats = self.stack_statistics(source)
        return VideoStream(name, stats, describe)

    def stack_statistics(self, frames: FrameSource | Sequence[np.ndarray]) -> Statistics | None:
        """Per-stack normalization statistics of a video, if the model needs them.

        Computed from evenly spaced frames, read one at a time, so an open
        `unetrt.io.FrameSource` works as well as a list.

        Returns:
            The statistics, or None when the normalization is per frame.
        """
        if isinstance(frames, FrameSource):
            return fit_statistics(
                frames.read, len(frames), self.contract, self._checks, frames.describe_frame
            )
        listed = frames
        return fit_statistics(
            lambda i: listed[i], len(listed), self.contract, self._checks, lambda i: f"frame {i}"
        )

    def fit_stack(self, frames: FrameSource | Sequence[np.ndarray]) -> None:
        """Fix the statistics that `predict_frame` / `segment_frame` use (stack scope).

        Only needed for models whose normalization scope is ``"stack"``; `segment` and
        streams opened with a ``source`` do it themselves.
        """
        self._live.stats = self.stack_statistics(frames)

    # ------------------------------------------------------------------ inference
    def predict_frames(
        self, frames: Iterable[np.ndarray], stream: VideoStream | None = None
    ) -> Iterator[np.ndarray]:
        """Foreground (or class) probabilities for each frame, in order.

        Args:
            frames: The frames, in order.
            stream: The video they belong to; default the Segmenter's own live stream.

        Yields:
            float32 arrays (H, W) for one-channel models, (H, W, K) for K classes.
        """
        for result in self._executor.run(stream or self._live, frames):
            assert not isinstance(result, Exception)  # not isolating: errors raise
            yield result

    def predict_frame(self, frame: np.ndarray, stream: VideoStream | None = None) -> np.ndarray:
        """Probabilities for one frame: float32 (H, W), or (H, W, K) for K classes."""
        return next(iter(self.predict_frames([frame], stream)))

    def to_mask(self, probabilities: np.ndarray) -> np.ndarray:
        """Turn probabilities into a mask and apply post-processing (`unetrt.masks.to_mask`)."""
        return masks.to_mask(probabilities, self.contract, self.postprocess, threads=self.threads)

    def segment_frame(self, frame: np.ndarray, stream: VideoStream | None = None) -> np.ndarray:
        """Mask for one frame (see `to_mask`)."""
        return next(iter(self.segment_frames([frame], stream)))

    def segment_frames(
        self, frames: Iterable[np.ndarray], stream: VideoStream | None = None
    ) -> Iterator[np.ndarray]:
        """Masks for a stream of frames, in order (see `to_mask`); a GPU executor
        computes them on the device."""
        for mask in self._executor.run_masks(stream or self._live, frames):
            assert not isinstance(mask, Exception)  # not isolating: errors raise
            yield masks.postprocess_mask(mask, self.postprocess)

    # ------------------------------------------------------------------ live
    def submit(self, frame: np.ndarray, probabilities: bool = False) -> Future[np.ndarray]:
        """Segment a frame in the background; returns at once.

        Frames are segmented in submission order by one worker thread on the live stream
        (the one `segment_frame` uses without a stream), several per engine call when
        they queue up. The frame is copied, so the caller may reuse its buffer. Safe to
        call from any thread.

        Args:
            frame: The frame, as for `segment_frame`.
            probabilities: Resolve to the probabilities instead of the mask.

        Returns:
            A future resolving to the mask (see `to_mask`) or the probabilities; its
            exception is the frame's error (e.g. an `InputError` for a NaN frame); it is
            cancelled if the frame was dropped (``when_full="drop_oldest"``).
        """
        check_shape(np.shape(frame), self.contract.channels, self.contract.input_channels)
        return self._queue.submit(frame, probabilities)

    @property
    def dropped(self) -> int:
        """Submitted frames dropped unsegmented because the queue was full."""
        return self._queue.stats.dropped

    @property
    def live_stats(self) -> LiveStats:
        """Submitted, completed, dropped and failed frames of `submit`."""
        return self._queue.stats

    # ------------------------------------------------------------------ whole stacks
    def segment(
        self,
        source: str | os.PathLike[str],
        output: str | os.PathLike[str] | None = None,
        *,
        probabilities: str | os.PathLike[str] | None = None,
        frames: slice | None = None,
        progress: bool = True,
        follow: bool = False,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        resume: bool = False,
        format: str | None = None,
        _bar: Any = None,
    ) -> SegmentSummary:
        """Segment a stack (TIFF, OME-Zarr, folder or glob of frames) into a mask stack.

        Frames are read in a background thread while the engine runs, masks are written
        frame by frame under a hidden partial name renamed on success, and memory use
        does not grow with the number of frames.

        A run killed outright (SIGKILL, a reboot) leaves its partial output; the same
        call with ``resume=True`` keeps its complete frames and segments only the
        missing ones, giving the output an uninterrupted run gives. A resumable run
        interrupted with Ctrl-C keeps its partial output too. Without ``resume`` an
        earlier partial output is replaced.

        With ``follow``, the input is still being written (a TIFF acquisition software
        appends pages to, or a folder receiving one file per frame): frames are
        segmented as they become complete, and the run ends after ``idle_timeout``
        seconds without a new frame, or on Ctrl-C (pressed once or twice; a third press
        interrupts at once and discards the output); both are the normal end, and the
        masks of every frame so far are kept. Ctrl-C before the first frame arrived
        interrupts (there is nothing to keep). A writer
        that truncates or corrupts the input ends the run with an `InputError`, the
        masks written before it kept.

        Args:
            source: Input stack, folder or glob.
            output: Mask output: a TIFF, or an OME-Zarr image for a name ending in
                ``.zarr``; default ``<input stem>_mask.tif`` (``.ome.zarr`` with
                ``format="ome-zarr"``) beside the input.
            probabilities: Optional float32 probability output (TIFF or OME-Zarr).
            frames: Optional slice of frames to process (not with ``follow``).
            progress: Show a progress bar on stderr.
            follow: Follow an input that is still being written.
            idle_timeout: With ``follow``: seconds without a new frame that end the run.
            resume: Continue the partial output of a killed run with the same settings.
            format: ``"tiff"`` or ``"ome-zarr"``, for the default output name; a
                given ``output`` names its own format.
            _bar: A progress bar shared with other videos (`segment_many`), instead of
                one of this run's own.

        Returns:
            A `SegmentSummary`.
        """
        started = time.perf_counter()
        out_given = Path(output) if output is not None else None
        check_format(format, out_given)
        if follow:
            if frames is not None:
                raise ConfigError("a frame selection cannot be combined with following")
            if resume:
                raise ConfigError("a followed input cannot be resumed; segment it again")
            if self.contract.normalization.needs_stack_statistics:
                raise ConfigError(
                    "this model normalizes per stack, which needs the whole stack; "
                    "following a growing input needs per-frame normalization "
                    "(--normalize-scope frame)"
                )
            opened: FrameSource | FollowedFrames = follow_frames(source, idle_timeout=idle_timeout)
        else:
            opened = open_frames(source, frames)
        with opened as src:
            out_path = out_given if out_given is not None else default_output(src.path, format)
            prob_path = Path(probabilities) if probabilities is not None else None
            check_outputs(src.path, out_path, prob_path)
            if isinstance(src, FollowedFrames):
                src.wait_first()  # the frame shape the writers need
                total = None
                stream = VideoStream(src.name, None, src.describe_frame)
            else:
                total = len(src)
                stream = None
            assert src.frame_shape is not None
            check_shape(src.frame_shape, self.contract.channels, self.contract.input_channels)
            if isinstance(src, FrameSource):
                check_video(self, src)
            with ExitStack() as writers:
                if isinstance(src, FollowedFrames):
                    # Entered first, left last: a Ctrl-C pressed while the outputs are
                    # being finished still ends following gently, keeping the masks.
                    writers.enter_context(_ctrl_c_stops(src))
                # Outputs open before the progress bar, so that a bad path fails cleanly;
                # each is renamed into place only if the whole run succeeds.
                outputs = self._open_outputs(
                    src, [(out_path, "masks"), (prob_path, "probabilities")], resume, frames
                )
                for out in outputs:
                    writers.enter_context(out)
                wanted = None if total is None else [missing_frames(out) for out in outputs]
                todo = None if wanted is None else self._frames_to_run(wanted)
                if stream is None:
                    assert isinstance(src, FrameSource) and todo is not None
                    frame_of = todo  # messages name frames by their number in the input
                    stream = VideoStream(
                        src.name,
                        self.stack_statistics(src),
                        lambda k: src.describe_frame(frame_of[k]),
                    )
                count, failure = self._write_masks(
                    src, stream, outputs, wanted, todo, progress, follow=follow, bar=_bar
                )
                resumed = outputs[0].resumed
                restarted = outputs[0].replaced_other_settings
        if failure is not None:  # the input broke while being followed
            raise InputError(
                f"{failure}; the masks of the {count} frames before were kept in {out_path}"
            ) from failure
        seconds = time.perf_counter() - started
        return SegmentSummary(count, seconds, out_path, prob_path, resumed, restarted)

    def segment_many(
        self,
        sources: Sequence[str | os.PathLike[str]],
        output_dir: str | os.PathLike[str] | None = None,
        *,
        progress: bool = True,
        resume: bool = False,
        format: str | None = None,
        scheduler: str | None = None,
    ) -> RunSummary:
        """Segment several stacks with one progress bar, here or on a Dask cluster.

        Each input gets ``<stem>_mask.tif`` (``.ome.zarr`` with ``format="ome-zarr"``)
        in ``output_dir`` (created if missing), or beside itself without one (see
        `default_output`). A video that fails (a missing or corrupt file, a frame with
        NaN) is reported and the others go on; its output is not written.

        Args:
            sources: Input stacks, folders or globs.
            output_dir: Folder for the masks; None: beside each input.
            progress: Show one progress bar over all frames of all videos.
            resume: Continue the partial outputs of a killed run (see `segment`).
            format: ``"tiff"`` (default) or ``"ome-zarr"``.
            scheduler: Run on the ``dask.distributed`` cluster at this address
                (``"local"``: a new `LocalCluster` sized to this machine); see
                `unetrt.cluster`. None: here, one video after the other.

        Returns:
            A `RunSummary`: one `SegmentSummary` per video done, and the videos that
            failed with their error.
        """
        check_format(format, None)
        folder = Path(output_dir) if output_dir is not None else None
        if folder is not None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"cannot create the output folder {folder}: {exc}") from exc
        outputs = [
            default_output(Path(s), format)
            if folder is None
            else folder / default_output(Path(s), format).name
            for s in sources
        ]
        if len(set(outputs)) < len(outputs):
            raise OutputError(
                "two inputs would write the same mask file (same name); give them "
                "different names or segment them one at a time with -o"
            )
        inputs = {Path(s).resolve() for s in sources}
        for source, output in zip(sources, outputs, strict=True):
            if output.resolve() in inputs:
                raise OutputError(
                    f"the masks of {source} would overwrite the input {output}; write them "
                    "to another folder with -o"
                )
        if scheduler is not None:
            from .cluster import segment_on_cluster

            return segment_on_cluster(
                self, sources, outputs, scheduler, resume=resume, progress=progress
            )
        done: list[SegmentSummary] = []
        failed: list[tuple[str, str]] = []
        with _progress(count_frames(sources), progress, "videos") as bar:
            for i, (source, output) in enumerate(zip(sources, outputs, strict=True)):
                bar.set_postfix_str(f"video {i + 1}/{len(sources)}")
                try:
                    done.append(
                        self.segment(source, output, progress=progress, resume=resume, _bar=bar)
                    )
                except UnetrtError as exc:
                    failed.append((os.fspath(source), str(exc)))
        return RunSummary(tuple(done), tuple(failed))

    def open_output(
        self,
        src: FrameSource | FollowedFrames,
        path: Path,
        kind: str,
        resume: bool,
        frames: slice | None = None,
    ) -> ResumableOutput:
        """The writer of the ``kind`` (``"masks"`` or ``"probabilities"``) output of
        `src` at `path`, resuming a killed run's partial output if asked and it was
        made with the same settings (`run_settings`)."""
        assert src.frame_shape is not None
        height, width = src.frame_shape[:2]
        if kind == "masks":
            shape: tuple[int, ...] = (height, width)
            dtype: type[np.generic] = np.uint16 if self.postprocess.label else np.uint8
        else:
            k = self.classes
            shape, dtype = ((height, width) if k == 1 else (height, width, k)), np.float32
        total = len(src) if isinstance(src, FrameSource) else None
        return open_output(
            path,
            frame_shape=shape,
            dtype=dtype,
            n_frames=total,
            run=self.run_settings(src, kind, frames),
            resume=resume,
            name=kind,
        )

    def _open_outputs(
        self,
        src: FrameSource | FollowedFrames,
        wanted: list[tuple[Path | None, str]],
        resume: bool,
        frames: slice | None,
    ) -> list[ResumableOutput]:
        """Open every output or none: one that fails to open (a typo in its folder)
        leaves the others' earlier partial outputs as they were, to resume."""
        opened: list[ResumableOutput] = []
        try:
            for path, kind in wanted:
                if path is not None:
                    opened.append(self.open_output(src, path, kind, resume, frames))
        except BaseException:
            for out in opened:
                if resume:
                    out.suspend()
                else:
                    out.abort()
            raise
        return opened

    def run_settings(
        self, src: FrameSource | FollowedFrames, kind: str, frames: slice | None = None
    ) -> dict[str, Any]:
        """What the `kind` output of `src` depends on, as JSON values: the model file,
        the input file, the frames and every option that changes masks (not threads or
        batch). A partial output is resumed only with equal settings."""
        options = self.spec.options()
        for name in ("threads", "batch", "queue_size", "when_full"):
            del options[name]

        def identity(path: Path) -> list[Any]:
            try:
                files = [path] if not path.is_dir() else [p for p in path.rglob("*") if p.is_file()]
                stats = [f.stat() for f in files]  # a Zarr store: every chunk file counts
            except OSError:
                return [os.fspath(path)]
            size = sum(st.st_size for st in stats)
            newest = max((st.st_mtime_ns for st in stats), default=0)
            return [os.path.abspath(path), len(stats), size, newest]

        return {
            "output": kind,
            "model": identity(Path(self.model.path)),
            "input": [identity(Path(f)) for f in src.files]
            if isinstance(src, FrameSource)
            else identity(src.path),
            "frames": None if frames is None else [frames.start, frames.stop, frames.step],
            "options": {k: repr(v) for k, v in sorted(options.items())},
            "contract": self.contract.to_dict(),
        }

    def _frames_to_run(self, wanted: list[set[int]]) -> list[int]:
        """The frames a run reads to make the frames its outputs still want: those
        frames, and for a temporal model every frame its state or window needs (stream:
        from the first frame; window: from T-1 frames before the first one wanted)."""
        todo = sorted(set().union(*wanted))
        if self.temporal is None or not todo:
            return todo
        start = 0
        every = self.temporal.reset_every
        if every is not None:  # stream mode: from the reset before the first frame wanted
            start = todo[0] // every * every
        if self.temporal.mode == "window":
            assert isinstance(self._executor, StatefulExecutor)
            start = max(todo[0] - (self._executor.time_steps - 1), 0)
        return list(range(start, todo[-1] + 1))

    def _write_masks(
        self,
        src: FrameSource | FollowedFrames,
        stream: VideoStream,
        outputs: list[ResumableOutput],
        wanted: list[set[int]] | None,
        todo: list[int] | None,
        progress: bool,
        *,
        follow: bool,
        bar: Any,
    ) -> tuple[int, InputError | None]:
        """The frame loop of `segment`: segments the frames `todo` (every frame, in
        order, when None: a followed input) into `outputs` (masks first), each output
        getting the frames it `wanted`; returns the number of frames segmented and, when
        following, the error that ended the input (the masks before it are kept)."""
        failure: list[InputError] = []
        frames: Iterator[np.ndarray]
        indices: Iterable[int]
        if todo is None:
            frames, indices = _until_broken(iter(src), failure), itertools.count()
        else:
            assert isinstance(src, FrameSource)
            frames, indices = (src.read(i) for i in todo), todo
        with ExitStack() as stack:
            if bar is None:
                total = None if todo is None else len(todo)
                bar = stack.enter_context(_progress(total, progress, src.name))
            else:
                bar.set_description_str(src.name)
            count = 0
            if len(outputs) == 1:  # masks only: a GPU executor downloads nothing else
                only = self.segment_frames(prefetch(frames), stream)
                for index, mask in zip(indices, only, strict=False):  # indices may be endless
                    if wanted is None or index in wanted[0]:
                        outputs[0].write(mask, index)
                    count += 1
                    bar.update(1)
                return count, (failure[0] if failure else None)
            results = self.predict_frames(prefetch(frames), stream)
            for index, probs in zip(indices, results, strict=False):  # indices may be endless
                for i, out in enumerate(outputs):
                    if wanted is None or index in wanted[i]:
                        out.write(self.to_mask(probs) if i == 0 else probs, index)
                count += 1
                bar.update(1)
        return count, (failure[0] if failure else None)

    def close(self) -> None:
        """Finish the frames waiting in the live queue, then release the engine."""
        self._queue.close()
        self._executor.close()
        self.model.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_output(source: Path, format: str | None = None) -> Path:
    """``<input stem>_mask.tif`` (``.ome.zarr`` for ``format="ome-zarr"``) beside the
    input; for a folder or a glob pattern, ``<folder>_mask.tif`` beside the folder
    (never where the input would find it)."""
    source = Path(source)
    if any(c in source.name for c in "*?["):
        source = source.parent
    is_folder = source.is_dir() and not is_zarr(source)
    stem = source.name if is_folder else source.name.split(".")[0]
    suffix = ".ome.zarr" if format == "ome-zarr" else ".tif"
    return source.parent / f"{stem}_mask{suffix}"


def check_video(segmenter: Segmenter, src: FrameSource) -> None:
    """Raises InputError when a temporal model is given a single image."""
    if segmenter.temporal is not None and len(src) == 1:
        raise InputError(
            f"{src.name} is a single image; a temporal model segments videos "
            f"(use a frame model for single images, e.g. --model default)"
        )


def check_format(format: str | None, output: Path | None) -> None:
    """Refuse an unknown output format, or one the output's own name contradicts."""
    if format is None:
        return
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if output is not None and output_format(output) != format:
        raise ConfigError(
            f"{output} is a {output_format(output)} name but the format asked for is "
            f"{format}; name an OME-Zarr output *.ome.zarr, a TIFF *.tif"
        )


def missing_frames(output: ResumableOutput) -> set[int]:
    """The frames `output` still needs (all of them, unless it resumes a partial one)."""
    return {i for run in output.missing() for i in run}


def count_frames(sources: Sequence[str | os.PathLike[str]]) -> int:
    """Frames in all the sources that open (the others count 0: reported later)."""
    total = 0
    for source in sources:
        try:
            with open_frames(source) as stack:
                total += len(stack)
        except UnetrtError:
            pass
    return total


def check_outputs(source: Path, output: Path, probabilities: Path | None) -> None:
    """Refuse outputs that would overwrite the input, or each other."""
    src = Path(source).resolve()
    for path in (output, probabilities):
        if path is not None and path.resolve() == src:
            raise OutputError(f"output {path} would overwrite the input")
    if probabilities is not None and probabilities.resolve() == output.resolve():
        raise OutputError(f"--probabilities and the mask output are the same file: {output}")


def _until_broken(frames: Iterator[np.ndarray], failure: list[InputError]) -> Iterator[np.ndarray]:
    """The frames of a followed input until it ends or breaks; a break is kept in
    ``failure`` instead of raised, so that the masks written so far are kept."""
    try:
        yield from frames
    except InputError as exc:
        failure.append(exc)


#: Ctrl-C presses that end following normally; the next one interrupts (masks discarded).
_GENTLE_STOPS = 2


@contextlib.contextmanager
def _ctrl_c_stops(followed: FollowedFrames) -> Iterator[None]:
    """While following in the main thread, Ctrl-C ends the input: the normal end, the
    frames in flight are finished and the masks kept. Users often press it twice, so
    the second press does the same; a third interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    presses = 0

    def stop(signum: int, frame: Any) -> None:
        nonlocal presses
        presses += 1
        followed.stop()
        if presses >= _GENTLE_STOPS:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        # None: a handler installed from C, which Python cannot put back; use the default.
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


def _progress(total: int | None, enabled: bool, name: str) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        disable=not enabled,
        unit="frame",
        desc=name,
        dynamic_ncols=True,
        leave=False,
    )
