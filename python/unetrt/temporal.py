"""Temporal step models over videos: the state carried frame to frame, exactly tiled.

A step model (contract ``temporal: "stateful"``) takes a frame and, per recurrent state
(`unetrt.contract.StateSpec`), the state after the previous frame; it returns the
prediction and the new states. `StatefulExecutor` runs it in one of two modes:

``stream``
    One step per frame; the state goes from frame to frame over the whole video (from
    zero at the first frame, and again every ``reset_every`` frames if given). Memory
    stays constant: two maps per state (the one read, the one written).
``window``
    The mask of frame t comes from the ``window`` (default: the contract's
    ``time_steps``) frames t-T+1..t, run from zero state, frame 0 standing in for the
    frames before the start of the video: what the model was trained on. T steps per
    frame; the last T prepared frames are kept.

Tiles are independent for one step only: a state kept per tile would go wrong at tile
borders, and the error would spread a little further every step. So each state is kept
as a whole-frame map at its stride (the padded frame's size divided by the stride, in
the model's layout). Every step cuts each tile's state window from the map (the tile's
window divided by the stride: windows start on the alignment grid, which the strides
divide), runs the tiles, and copies each tile's state core into the next map. A state
core is the tile's frame core with its borders rounded down to the stride (still inside
the overlap, at least the halo from either window's edge, since window origins and the
halo are multiples of the alignment), and the last core reaches the padded border. So
every state pixel comes from a window that holds its whole receptive field, and the
tiled run equals the whole-frame run on every frame, however long the video.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import masks, tiling
from .backends import Backend, create_backend
from .backends.base import channel_axis, spatial_axes
from .contract import StateSpec
from .errors import ConfigError, InputError, UnetrtError
from .model import Model
from .normalize import Affine
from .pipeline import (
    CpuExecutor,
    ExecutorConfig,
    FrameJob,
    VideoStream,
    _BatchBuffers,
    check_outputs,
    finish,
    stitch,
)
from .stepsplit import StepSplit, split_step_model

TEMPORAL_MODES = ("stream", "window")


@dataclass(frozen=True)
class TemporalOptions:
    """How a step model runs over a video.

    Attributes:
        mode: ``"stream"`` or ``"window"``.
        reset_every: Stream mode: restart from zero state every this many frames.
        window: Window mode: frames per window (default: the contract's ``time_steps``).
    """

    mode: str = "stream"
    reset_every: int | None = None
    window: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in TEMPORAL_MODES:
            raise ConfigError(f"temporal must be one of {TEMPORAL_MODES}, got {self.mode!r}")
        for name in ("reset_every", "window"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or int(value) < 1):
                raise ConfigError(f"{name} must be a positive number of frames, got {value!r}")
        if self.reset_every is not None and self.mode != "stream":
            raise ConfigError("reset_every (--reset-every) applies to --temporal stream only")
        if self.window is not None and self.mode != "window":
            raise ConfigError("window (--window) applies to --temporal window only")


def temporal_options(
    model: Model,
    mode: str | None,
    reset_every: int | None = None,
    window: int | None = None,
) -> TemporalOptions | None:
    """The temporal options for this model, or None for a frame model.

    A step model run without a mode streams.

    Raises:
        ConfigError: A mode (or its options) given for a frame model.
    """
    if not model.stateful:
        if mode is not None or reset_every is not None or window is not None:
            kind = model.contract.temporal
            what = "a frame model" if kind == "none" else f"a {kind!r} model"
            raise ConfigError(
                f"--temporal needs a temporal step model (contract temporal 'stateful'); "
                f"{model.path.name} is {what}"
            )
        return None
    return TemporalOptions(mode or "stream", reset_every, window)


@dataclass(eq=False)
class _Parts:
    """The backends of a split step model (`unetrt.stepsplit`), for window mode."""

    split: StepSplit
    frame: Backend
    state: Backend
    full: Backend

    @classmethod
    def of(cls, model: Model, threads: int) -> _Parts | None:
        """The parts of `model` on its backend and device, or None if it cannot be split."""
        try:
            split = split_step_model(
                model.path, model.image.name, model.prediction.name, model.contract.states
            )
        except Exception:  # not an ONNX file (a compiled engine), or onnx cannot read it
            return None
        if split is None:
            return None
        be = model.backend
        made: list[Backend] = []
        try:
            for part in (split.frame_part, split.state_part, split.full_part):
                made.append(
                    create_backend(part, be.name, be.device, threads, be.layout, model.precision)
                )
        except UnetrtError:
            for backend in made:
                backend.close()
            return None
        return cls(split, *made)

    def close(self) -> None:
        for backend in (self.frame, self.state, self.full):
            backend.close()


class _StateMaps:
    """The whole-frame state maps of one video: per state, the map read by this step
    and the one written (swapped after the step)."""

    def __init__(self, states: tuple[StateSpec, ...], layout: str, plan: tiling.TilePlan):
        self.layout = layout
        self.frame_size = (plan.height, plan.width)
        self.size = (plan.padded_h, plan.padded_w)
        self.current: dict[str, np.ndarray] = {}
        self.next: dict[str, np.ndarray] = {}
        for s in states:
            shape = [plan.padded_h // s.stride, plan.padded_w // s.stride]
            shape.insert(channel_axis(layout) - 1, s.channels)
            self.current[s.input] = np.zeros(shape, np.float32)
            self.next[s.input] = np.empty(shape, np.float32)

    def zero(self) -> None:
        for array in self.current.values():
            array.fill(0.0)

    def swap(self) -> None:
        self.current, self.next = self.next, self.current


def _window(layout: str, y: slice, x: slice) -> tuple[slice, ...]:
    """Index of a (rows, cols) window of a 3-D map in the model's layout."""
    return (y, x, slice(None)) if layout == "NHWC" else (slice(None), y, x)


def video_maps(
    stream: VideoStream, owner: tuple[Any, ...], plan: tiling.TilePlan, label: str, make: Any
) -> Any:
    """The whole-frame state maps of a video (``stream.state["maps"]``), made by
    ``make()`` at its first frame; the host and the GPU executor keep theirs so.

    Args:
        stream: The video.
        owner: What the maps belong to (model, states, layout, mode, executor); a stream
            carrying another owner's state is refused.
        plan: This frame's tile plan.
        label: This frame, in words.
        make: Makes the maps (with ``frame_size`` and ``size`` attributes: the frame's
            and the padded frame's (height, width)).

    Raises:
        ConfigError: If the stream carries the state of another model or mode.
        InputError: If this frame is not of the size of the frames before it.
    """
    if stream.state.setdefault("owner", owner) != owner:
        raise ConfigError(
            f"stream {stream.name!r} carries the state of another model or temporal "
            f"mode; open a new stream (Segmenter.stream()) for this Segmenter"
        )
    maps = stream.state.get("maps")
    if maps is None:
        maps = stream.state["maps"] = make()
    elif maps.frame_size != (plan.height, plan.width) or maps.size != (
        plan.padded_h,
        plan.padded_w,
    ):
        raise InputError(
            f"{label} is {plan.height} x {plan.width} pixels, the frames before it "
            f"{maps.frame_size[0]} x {maps.frame_size[1]}; a temporal model carries its "
            f"state from frame to frame and needs frames of one size"
        )
    return maps


class StatefulExecutor(CpuExecutor):
    """The host executor for step models (see the module docstring).

    Frames run one after the other (a step needs the whole state of the step before);
    the tiles of one frame share engine calls, ``batch`` tiles per call.

    Args:
        model: The opened step model.
        config: Tiling, batching and stitching options.
        options: Stream or window mode.
    """

    def __init__(self, model: Model, config: ExecutorConfig, options: TemporalOptions) -> None:
        super().__init__(model, config)
        self.options = options
        self.states = model.contract.states
        self.time_steps = options.window or model.contract.time_steps
        self._parts: _Parts | None = None
        if options.mode == "window" and self.time_steps > 1:
            self._parts = _Parts.of(model, config.threads)

    @property
    def shares_frame_work(self) -> bool:
        """Window mode: whether the step model's frame part runs once per frame
        (`unetrt.stepsplit`), not once per window."""
        return self._parts is not None

    def close(self) -> None:
        """Release the backends of the split model, if any."""
        if self._parts is not None:
            self._parts.close()

    def _run(
        self,
        stream: VideoStream,
        frames: Iterable[np.ndarray],
        buffers: _BatchBuffers,
        isolate: bool,
    ) -> Iterator[np.ndarray | Exception]:
        for raw in frames:
            try:
                job = self._new_job(stream, raw)
                maps = self._maps(stream, job)
            except UnetrtError as exc:
                if not isolate:
                    raise
                yield exc
                continue
            assert job.frame is not None
            if self.options.mode == "stream":
                reset = self.options.reset_every
                if job.index == 0 or (reset is not None and job.index % reset == 0):
                    maps.zero()
                self._step(job.frame, job.affine, job, maps, buffers, predict=True)
            elif self._parts is not None:
                self._window_split(stream, job, maps, buffers, self._parts)
            else:
                # A copy: the caller (or the live queue's slot) may reuse its frame array.
                clip = self._clip(stream, (np.array(job.frame, copy=True), job.affine))
                maps.zero()
                for k, (frame, affine) in enumerate(clip):
                    last = k == len(clip) - 1
                    self._step(frame, affine, job, maps, buffers, predict=last)
            job.frame = None
            yield finish(job, self.config.threads)

    def _maps(self, stream: VideoStream, job: FrameJob) -> _StateMaps:
        """The video's state maps, made at its first frame (see `video_maps`)."""
        owner = (
            str(self.model.path),
            self.states,
            self.config.contract.layout,
            self.options,
            self.time_steps,
            self._parts is not None,
        )
        layout = self.config.contract.layout
        maps = video_maps(
            stream, owner, job.plan, job.label, lambda: _StateMaps(self.states, layout, job.plan)
        )
        assert isinstance(maps, _StateMaps)
        return maps

    def _clip(self, stream: VideoStream, entry: Any) -> list[Any]:
        """Window mode: what is kept of this frame and the T-1 before it (frame 0
        repeated before the start of the video)."""
        clip = stream.state.get("clip")
        if clip is None:
            steps = self.time_steps
            clip = stream.state["clip"] = deque([entry] * steps, maxlen=steps)
        else:
            clip.append(entry)  # a full deque drops its oldest frame
        return list(clip)

    def _batches(self, plan: tiling.TilePlan) -> list[slice]:
        batch = self.config.batch
        return [slice(i, min(i + batch, plan.n_tiles)) for i in range(0, plan.n_tiles, batch)]

    def _window_split(
        self,
        stream: VideoStream,
        job: FrameJob,
        maps: _StateMaps,
        buffers: _BatchBuffers,
        parts: _Parts,
    ) -> None:
        """Window mode with a split step model: the frame part once for this frame, the
        state part over the T-1 frames before it (their stored boundary tensors), the
        full part on this frame."""
        plan, layout, threads = job.plan, self.config.contract.layout, self.config.threads
        inputs = self._inputs(buffers, plan)
        image = self.model.image.name
        boundaries = []  # per batch of tiles: this frame's boundary tensors
        for tiles in self._batches(plan):
            n = tiles.stop - tiles.start
            rows = self.config.batch if self._padded else n
            assert job.frame is not None
            tiling.extract_tiles(
                job.frame, plan, tiles, job.affine, layout=layout, out=inputs[:n], threads=threads
            )
            made = parts.frame.run({image: inputs[:rows]})
            kept = {name: made[name].copy() for name in parts.split.boundary_full if name in made}
            if image in parts.split.boundary_full:
                kept[image] = inputs[:rows].copy()
            boundaries.append(kept)
        entry = [{k: b[k] for k in parts.split.boundary_state} for b in boundaries]
        clip = self._clip(stream, entry)
        maps.zero()
        for earlier in clip[:-1]:
            for j, tiles in enumerate(self._batches(plan)):
                n = tiles.stop - tiles.start
                rows = self.config.batch if self._padded else n
                feeds = {**earlier[j], **self._cut_states(buffers, plan, maps, tiles, rows)}
                outs = parts.state.run(feeds)
                self._take_states({s.input: outs[s.output] for s in self.states}, job, maps, tiles)
            maps.swap()
        prediction_name = self.model.prediction.name
        for j, tiles in enumerate(self._batches(plan)):
            n = tiles.stop - tiles.start
            rows = self.config.batch if self._padded else n
            feeds = {**boundaries[j], **self._cut_states(buffers, plan, maps, tiles, rows)}
            out = None if buffers.outputs is None else {prediction_name: buffers.outputs[:rows]}
            self._take_prediction(parts.full.run(feeds, out)[prediction_name], job, tiles)

    def _inputs(self, buffers: _BatchBuffers, plan: tiling.TilePlan) -> np.ndarray:
        """The input batch for tiles of this plan (state tile buffers made anew with it)."""
        shape = self._tile_shape(plan)
        if buffers.inputs is None or buffers.inputs.shape[1:] != shape:
            self._allocate(buffers, shape)
            buffers.states = {}
        assert buffers.inputs is not None
        return buffers.inputs

    def _step(
        self,
        frame: np.ndarray,
        affine: Affine,
        job: FrameJob,
        maps: _StateMaps,
        buffers: _BatchBuffers,
        predict: bool,
    ) -> None:
        """One step of the model over every tile of a frame: the state maps advance by
        one frame; with ``predict`` the tiles' predictions are stitched into ``job``."""
        plan, layout, threads = job.plan, self.config.contract.layout, self.config.threads
        inputs = self._inputs(buffers, plan)
        for tiles in self._batches(plan):
            n = tiles.stop - tiles.start
            tiling.extract_tiles(
                frame, plan, tiles, affine, layout=layout, out=inputs[:n], threads=threads
            )
            rows = self.config.batch if self._padded else n
            out = None if buffers.outputs is None else buffers.outputs[:rows]
            state_tiles = self._cut_states(buffers, plan, maps, tiles, rows)
            prediction, new = self.model.step(inputs[:rows], state_tiles, out)
            self._take_states(new, job, maps, tiles)
            if predict:
                self._take_prediction(prediction, job, tiles)
        maps.swap()

    def _take_states(
        self, new: dict[str, np.ndarray], job: FrameJob, maps: _StateMaps, tiles: slice
    ) -> None:
        """A batch's new state tiles, checked, into the next maps."""
        n = tiles.stop - tiles.start
        slots = [(job, i) for i in range(tiles.start, tiles.stop)]
        for value in new.values():
            check_outputs(value[:n], slots)
        self._stitch_states(new, job.plan, maps, tiles)

    def _take_prediction(self, prediction: np.ndarray, job: FrameJob, tiles: slice) -> None:
        """A batch's predictions, checked and activated, into the frame's result."""
        n = tiles.stop - tiles.start
        prediction = prediction[:n]
        check_outputs(prediction, [(job, i) for i in range(tiles.start, tiles.stop)])
        layout = self.config.contract.layout
        prediction = masks.activate(prediction, self.config.contract.output, channel_axis(layout))
        stitch(job, prediction, tiles, layout, self.config.threads)

    def _cut_states(
        self,
        buffers: _BatchBuffers,
        plan: tiling.TilePlan,
        maps: _StateMaps,
        tiles: slice,
        rows: int,
    ) -> dict[str, np.ndarray]:
        """Each tile's state window, cut from the maps into the batch's state buffers
        (the first `rows` of them: a fixed-batch model's padding rows included)."""
        layout = maps.layout
        out: dict[str, np.ndarray] = {}
        for s in self.states:
            buffer = buffers.states.get(s.input)
            if buffer is None:
                shape = [self.config.batch, 0, 0, 0]
                for axis, extent in zip(
                    spatial_axes(layout), (plan.tile_h, plan.tile_w), strict=True
                ):
                    shape[axis] = extent // s.stride
                shape[channel_axis(layout)] = s.channels
                buffer = buffers.states[s.input] = np.zeros(shape, np.float32)
            n = tiles.stop - tiles.start
            tiling.cut_states(
                maps.current[s.input],
                plan,
                tiles,
                s.stride,
                buffer[:n],
                layout,
                threads=self.config.threads,
            )
            out[s.input] = buffer[:rows]
        return out

    def _stitch_states(
        self,
        new: dict[str, np.ndarray],
        plan: tiling.TilePlan,
        maps: _StateMaps,
        tiles: slice,
    ) -> None:
        """Each tile's state core into the next maps (see the module docstring)."""
        n = tiles.stop - tiles.start
        for s in self.states:
            tiling.stitch_states(
                new[s.input][:n],
                plan,
                tiles,
                s.stride,
                maps.next[s.input],
                maps.layout,
                threads=self.config.threads,
            )
