"""`Segmenter`: the whole pipeline, for one frame (live use) or a whole stack.

reader -> normalizer -> tiler -> backend -> stitcher -> masks / post-processing -> writer.
Each stage lives in its own module; this one only wires them and owns the batch loop,
which packs tiles from consecutive frames into one engine call so that whole-frame
tiles of small frames still run in batches.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import tiling
from .contract import ModelContract
from .errors import ConfigError, InputError, ModelError, OutputError
from .io import FrameSource, StackWriter, open_frames, prefetch
from .model import Model, open_model
from .normalize import Affine, Normalization, Statistics, prepare_frame, sample_statistics
from .postprocess import PostProcess

#: Largest tile (in pixels) that ``tile="auto"`` sends to the engine in one piece.
#: 2048 x 2048 keeps a 32-filter U-Net's activations within a few GiB of memory.
DEFAULT_MAX_TILE_PIXELS = 2048 * 2048

STITCH_MODES = ("crop", "blend")


@dataclass(frozen=True)
class SegmentSummary:
    """What a `Segmenter.segment` run did."""

    frames: int
    seconds: float
    output: Path
    probabilities: Path | None = None

    @property
    def frames_per_second(self) -> float:
        """Frames per second over the whole run (reading and writing included)."""
        return self.frames / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        return (
            f"segmented {self.frames} frames in {self.seconds:.1f} s "
            f"({self.frames_per_second:.2f} frames/s) -> {self.output}"
        )


def default_model_path() -> Path:
    """Path of the model shipped inside the package (used when no model is given)."""
    return Path(__file__).resolve().parent / "models" / "default.onnx"


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


@dataclass
class _FrameJob:
    """A frame in flight: its tiles are being run and stitched into `probabilities`."""

    frame: np.ndarray
    plan: tiling.TilePlan
    affine: Affine
    probabilities: np.ndarray
    weight_sum: np.ndarray | None
    remaining: int = field(init=False)

    def __post_init__(self) -> None:
        self.remaining = self.plan.n_tiles


class Segmenter:
    """Segment microscopy frames with a U-Net model.

    Example:
        >>> seg = Segmenter("model.onnx")
        >>> mask = seg.segment_frame(frame)            # live: one frame at a time
        >>> seg.segment("video.tif", "video_mask.tif")  # offline: a whole stack

    Args:
        model: Path to an ONNX model; None uses the default model shipped with unetrt.
        backend: ``"auto"`` or ``"onnxruntime"``.
        device: ``"cpu"`` or ``"cuda:N"``.
        tile: ``"auto"`` (fewest, largest tiles: a whole frame when it fits), a size
            ``256`` / ``"256x512"``.
        halo: ``"auto"`` (from the model contract) or pixels of context per tile side.
        batch: Tiles per engine call (tiles of consecutive frames are packed together).
        stitch: ``"crop"`` (exact: keep each tile's centre) or ``"blend"`` (Gaussian-
            weighted average of overlapping tiles).
        normalization: Overrides the model's normalization: a whole `Normalization`,
            or a dict of the fields to change (e.g. ``{"scope": "stack"}``).
        threshold: Overrides the model's foreground threshold.
        threads: Threads for the engine and the C++ core (None: library defaults).
        max_tile_pixels: Memory budget for ``tile="auto"``.
        postprocess: Optional mask post-processing.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        backend: str = "auto",
        device: str = "cpu",
        tile: str | int | tuple[int, int] = "auto",
        halo: str | int = "auto",
        batch: int = 1,
        stitch: str = "crop",
        normalization: Normalization | dict[str, Any] | None = None,
        threshold: float | None = None,
        threads: int | None = None,
        max_tile_pixels: int = DEFAULT_MAX_TILE_PIXELS,
        postprocess: PostProcess | None = None,
    ) -> None:
        if batch < 1:
            raise ConfigError(f"batch must be >= 1, got {batch}")
        if stitch not in STITCH_MODES:
            raise ConfigError(f"stitch must be one of {STITCH_MODES}, got {stitch!r}")
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        if max_tile_pixels < 1:
            raise ConfigError(f"max_tile_pixels must be positive, got {max_tile_pixels}")
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
        if model is None:
            model = default_model_path()
            if not model.is_file():
                raise ModelError("no model given and this unetrt build ships no default model")
        self.model: Model = open_model(
            model, backend=backend, device=device, threads=threads, overrides=overrides
        )
        contract = self.model.contract
        if isinstance(normalization, dict):  # partial override of the model's own
            changed = Normalization.from_dict({**contract.normalization.to_dict(), **normalization})
            contract = contract.replace(normalization=changed)
        self._contract = contract
        self.batch = batch
        self.stitch = stitch
        self.threads = threads or 0
        self.postprocess = postprocess or PostProcess()
        self._tile = parse_tile(tile)
        self._max_tile_pixels = max_tile_pixels
        self._plans: dict[tuple[int, int], tiling.TilePlan] = {}
        self._stack_stats: Statistics | None = None
        fixed_batch = self.model.backend.max_batch()
        if fixed_batch is not None:
            if batch not in (1, fixed_batch):
                raise ConfigError(
                    f"this model runs batches of exactly {fixed_batch} tiles, got batch {batch}"
                )
            self.batch = fixed_batch  # partial batches are padded
        if self.postprocess.label and self.classes > 1:
            raise ConfigError(
                f"instance labels need a one-channel foreground model; this model has "
                f"{self.classes} classes"
            )
        fixed = self.model.backend.fixed_tile()
        if fixed is not None and self._tile is not None and self._tile != fixed:
            raise ConfigError(
                f"this model only accepts {fixed[0]}x{fixed[1]} tiles, "
                f"got tile {self._tile[0]}x{self._tile[1]}"
            )

    # ------------------------------------------------------------------ properties
    @property
    def contract(self) -> ModelContract:
        """The model contract in force (read from the model, inferred, or overridden)."""
        return self._contract

    @property
    def classes(self) -> int:
        """Number of output channels: 1 for a foreground probability, K for K classes."""
        channels = self.model.backend.output_channels
        return channels if channels is not None else 1

    # ------------------------------------------------------------------ planning
    def plan_for(self, height: int, width: int) -> tiling.TilePlan:
        """The tile plan used for frames of this size (cached)."""
        key = (height, width)
        plan = self._plans.get(key)
        if plan is None:
            c = self.contract
            fixed = self.model.backend.fixed_tile()
            if fixed is not None:
                max_tile, is_fixed = fixed, True
            elif self._tile is not None:
                max_tile, is_fixed = self._tile, False
            else:
                side = int(self._max_tile_pixels**0.5)
                max_tile, is_fixed = (side, side), False
                if _align_up(height, c.alignment) * _align_up(width, c.alignment) <= (
                    self._max_tile_pixels
                ):
                    max_tile = (_align_up(height, c.alignment), _align_up(width, c.alignment))
            plan = tiling.plan_tiles(
                height,
                width,
                alignment=c.alignment,
                halo=c.halo,
                max_tile=max_tile,
                fixed=is_fixed,
            )
            self._plans[key] = plan
        return plan

    # ------------------------------------------------------------------ normalization
    def fit_stack(self, frames: FrameSource | Sequence[np.ndarray]) -> None:
        """Fix per-stack normalization statistics from evenly spaced frames of a stack.

        Only needed for models whose normalization scope is ``"stack"``; `segment` does
        it itself. Frames are read one at a time, so an open `unetrt.io.FrameSource`
        works as well as a list.

        Args:
            frames: The stack: anything with ``len()`` and indexing (or ``read(i)``).
        """
        read = frames.read if isinstance(frames, FrameSource) else frames.__getitem__
        self._stack_stats = sample_statistics(
            lambda i: self._check_frame(read(i)), len(frames), self.contract.normalization
        )

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        channels = self.contract.channels
        if (channels == 1 and len(shape) != 2) or (
            channels > 1 and (len(shape) != 3 or shape[-1] != channels)
        ):
            expected = "(H, W)" if channels == 1 else f"(H, W, {channels})"
            raise InputError(
                f"the model takes frames of shape {expected} ({channels} channel"
                f"{'s' if channels > 1 else ''}), got frames of shape {tuple(shape)}"
            )

    def _check_frame(self, frame: np.ndarray) -> np.ndarray:
        frame = np.asarray(frame)
        if frame.ndim == 3 and frame.shape[-1] == 1 and self.contract.channels == 1:
            frame = frame[..., 0]
        self._check_shape(frame.shape)
        return frame

    # ------------------------------------------------------------------ inference
    def predict_frames(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Foreground (or class) probabilities for each frame, in order.

        Tiles of consecutive frames share engine calls (``batch`` tiles per call), so at
        most about ``batch`` frames are held in memory whatever the stack length.

        Yields:
            float32 arrays (H, W) for one-channel models, (H, W, K) for K classes.
        """
        layout = self.contract.layout
        pending: deque[_FrameJob] = deque()
        slots: list[tuple[_FrameJob, int]] = []
        buffer: np.ndarray | None = None

        spec = self.contract.normalization
        needs_stats = spec.scope == "stack" and spec.method not in ("none", "range")
        if needs_stats and self._stack_stats is None:
            raise ConfigError(
                "this model normalizes per stack: call fit_stack() with the stack "
                "first, or use segment() which does it"
            )
        for raw in frames:
            # The same two steps as training: illumination correction, then statistics.
            frame, affine = prepare_frame(self._check_frame(raw), spec, self._stack_stats)
            plan = self.plan_for(frame.shape[0], frame.shape[1])
            job = self._new_job(frame, plan, affine)
            pending.append(job)
            if buffer is None or buffer.shape[1:] != self._tile_shape(plan):
                if slots:  # a frame of another size: finish what is batched first
                    self._run_batch(buffer, slots, layout)  # type: ignore[arg-type]
                    slots.clear()
                buffer = np.empty((self.batch, *self._tile_shape(plan)), np.float32)
            for index in range(plan.n_tiles):
                tiling.extract_tiles(
                    frame,
                    plan,
                    slice(index, index + 1),
                    job.affine,
                    layout=layout,
                    out=buffer[len(slots) : len(slots) + 1],
                    threads=self.threads,
                )
                slots.append((job, index))
                if len(slots) == self.batch:
                    self._run_batch(buffer, slots, layout)
                    slots.clear()
            while pending and pending[0].remaining == 0:
                yield self._finish(pending.popleft())
        if slots:
            assert buffer is not None
            self._run_batch(buffer, slots, layout)
        while pending:
            yield self._finish(pending.popleft())

    def _tile_shape(self, plan: tiling.TilePlan) -> tuple[int, int, int]:
        c = self.contract.channels
        if self.contract.layout == "NHWC":
            return (plan.tile_h, plan.tile_w, c)
        return (c, plan.tile_h, plan.tile_w)

    def _new_job(self, frame: np.ndarray, plan: tiling.TilePlan, affine: Affine) -> _FrameJob:
        shape = (frame.shape[0], frame.shape[1], self.classes)
        if self.stitch == "crop":
            return _FrameJob(frame, plan, affine, np.empty(shape, np.float32), None)
        return _FrameJob(
            frame,
            plan,
            affine,
            np.zeros(shape, np.float32),
            np.zeros(shape[:2], np.float32),
        )

    def _run_batch(
        self, buffer: np.ndarray, slots: list[tuple[_FrameJob, int]], layout: str
    ) -> None:
        n = len(slots)
        # A model with a fixed batch size gets full batches; the padding rows are ignored.
        rows = n if self.model.backend.max_batch() is None else self.batch
        outputs = self._activate(self.model.backend.run(buffer[:rows])[:n], layout)
        # Stitch runs of consecutive tiles of the same frame with one call each.
        start = 0
        while start < n:
            job, first = slots[start]
            stop = start + 1
            while stop < n and slots[stop][0] is job:
                stop += 1
            tiles = slice(first, first + (stop - start))
            if job.weight_sum is None:
                tiling.stitch_crop(
                    outputs[start:stop],
                    job.plan,
                    tiles,
                    job.probabilities,
                    layout=layout,
                    threads=self.threads,
                )
            else:
                tiling.stitch_blend(
                    outputs[start:stop],
                    job.plan,
                    tiles,
                    self._taper(job.plan),
                    job.probabilities,
                    job.weight_sum,
                    layout=layout,
                    threads=self.threads,
                )
            job.remaining -= stop - start
            start = stop

    def _activate(self, outputs: np.ndarray, layout: str) -> np.ndarray:
        if self.contract.output != "logits":
            return outputs
        from scipy.special import expit, softmax

        axis = -1 if layout == "NHWC" else 1
        if outputs.shape[axis] == 1:
            return expit(outputs)
        return softmax(outputs, axis=axis)

    def _taper(self, plan: tiling.TilePlan) -> np.ndarray:
        return tiling.taper_weights(plan.tile_h, plan.tile_w)

    def _finish(self, job: _FrameJob) -> np.ndarray:
        if job.weight_sum is not None:
            tiling.finish_blend(job.probabilities, job.weight_sum, threads=self.threads)
        probs = job.probabilities
        return probs[..., 0] if probs.shape[-1] == 1 else probs

    def predict_frame(self, frame: np.ndarray) -> np.ndarray:
        """Probabilities for one frame: float32 (H, W), or (H, W, K) for K classes."""
        return next(iter(self.predict_frames([frame])))

    def to_mask(self, probabilities: np.ndarray) -> np.ndarray:
        """Turn probabilities into a mask and apply post-processing.

        Returns:
            uint8 0/255 for one-channel models; the class index for softmax classes;
            for several sigmoid channels, 1 + the most probable channel where it passes
            the threshold, else 0; uint16 instance labels when post-processing labels.
        """
        threads = self.threads
        if probabilities.ndim == 2:
            mask = tiling.threshold_mask(probabilities, self.contract.threshold, threads=threads)
        else:
            mask = tiling.argmax_mask(probabilities, threads=threads)
            if self.contract.output == "sigmoid":  # independent channels, no background
                passed = probabilities.max(axis=-1) > self.contract.threshold
                mask = np.where(passed, mask + 1, 0).astype(np.uint8)
        return self.postprocess.apply(mask) if self.postprocess.active else mask

    def segment_frame(self, frame: np.ndarray) -> np.ndarray:
        """Mask for one frame (see `to_mask`)."""
        return self.to_mask(self.predict_frame(frame))

    def segment_frames(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Masks for a stream of frames, in order (see `to_mask`)."""
        for probs in self.predict_frames(frames):
            yield self.to_mask(probs)

    # ------------------------------------------------------------------ whole stacks
    def segment(
        self,
        source: str | os.PathLike[str],
        output: str | os.PathLike[str] | None = None,
        *,
        probabilities: str | os.PathLike[str] | None = None,
        frames: slice | None = None,
        progress: bool = True,
    ) -> SegmentSummary:
        """Segment a stack (multi-page TIFF, folder or glob of frames) into a mask stack.

        Frames are read in a background thread while the engine runs, masks are written
        frame by frame to a temporary file renamed on success, and memory use does not
        grow with the number of frames.

        Args:
            source: Input stack, folder or glob.
            output: Mask stack to write; default ``<input stem>_mask.tif`` beside the input.
            probabilities: Optional float32 probability stack to write as well.
            frames: Optional slice of frames to process.
            progress: Show a progress bar on stderr.

        Returns:
            A `SegmentSummary`.
        """
        started = time.perf_counter()
        with open_frames(source, frames) as stack:
            out_path = Path(output) if output is not None else default_output(stack.path)
            prob_path = Path(probabilities) if probabilities is not None else None
            _check_outputs(stack.path, out_path, prob_path)
            if self.contract.normalization.scope == "stack":
                self.fit_stack(stack)
            self._check_shape(stack.frame_shape)
            height, width = stack.frame_shape[:2]
            mask_dtype = np.uint16 if self.postprocess.label else np.uint8
            with ExitStack() as outputs:
                # Outputs open before the progress bar, so that a bad path fails cleanly;
                # each is renamed into place only if the whole run succeeds.
                mask_writer = outputs.enter_context(
                    StackWriter(
                        out_path, frame_shape=(height, width), dtype=mask_dtype, n_frames=len(stack)
                    )
                )
                probs_out = None
                if prob_path is not None:
                    k = self.classes
                    probs_out = outputs.enter_context(
                        StackWriter(
                            prob_path,
                            frame_shape=(height, width) if k == 1 else (height, width, k),
                            dtype=np.float32,
                            n_frames=len(stack),
                        )
                    )
                bar = outputs.enter_context(_progress(len(stack), progress, stack.name))
                count = 0
                for probs in self.predict_frames(prefetch(iter(stack))):
                    if probs_out is not None:
                        probs_out.write(probs)
                    mask_writer.write(self.to_mask(probs))
                    count += 1
                    bar.update(1)
        return SegmentSummary(count, time.perf_counter() - started, out_path, prob_path)

    def close(self) -> None:
        """Release the engine."""
        self.model.backend.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_output(source: Path) -> Path:
    """``<input stem>_mask.tif`` beside the input; for a folder or a glob pattern,
    ``<folder>_mask.tif`` beside the folder (never where the input would find it)."""
    source = Path(source)
    if any(c in source.name for c in "*?["):
        source = source.parent
    stem = source.name if source.is_dir() else source.name.split(".")[0]
    return source.parent / f"{stem}_mask.tif"


def _check_outputs(source: Path, output: Path, probabilities: Path | None) -> None:
    src = Path(source).resolve()
    for path in (output, probabilities):
        if path is not None and path.resolve() == src:
            raise OutputError(f"output {path} would overwrite the input")
    if probabilities is not None and probabilities.resolve() == output.resolve():
        raise OutputError(f"--probabilities and the mask output are the same file: {output}")


def _align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def _progress(total: int, enabled: bool, name: str) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        disable=not enabled,
        unit="frame",
        desc=name,
        dynamic_ncols=True,
        leave=False,
    )
