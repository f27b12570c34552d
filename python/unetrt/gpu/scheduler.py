"""Frames in flight on a device: the scheduling logic, written once for any `Device`.

Three streams and a ring of ``depth`` frame slots::

    copy-in   frame n+1: host frame -> pinned staging -> device      record uploaded[n+1]
    compute   frame n:   wait uploaded[n]; per batch of tiles: extract + normalize ->
                         engine -> activate -> check -> stitch; finish; mask
                                                                    record computed[n]
    copy-out  frame n-1: wait computed[n-1]; mask (uint8) or probabilities -> pinned
                                                                    record downloaded[n-1]

Frames go up once, as the integers they are; tiles never cross to the host; only the
result comes back. A slot (its staging, device frame, result and check counter) is
reused only after the host has waited for its frame's download, which also orders the
reuse after the slot's compute and upload. The input and output batches and the tile
tables are shared by all slots: only the compute stream touches them, in order. Results
come out in submission order.

Step models (ConvLSTM, stream mode): each frame's step also cuts every tile's state
window from the video's state maps on the device (`DeviceMaps`, kept in its
`VideoStream`) and stitches the tiles' new state cores into the other map, swapped
after the frame; the compute stream runs the frames' steps in order, so each step reads
the state the step before wrote, while uploads and downloads still overlap.

Ownership: the scheduler owns every buffer (allocated once per frame size, tile shape or
plan, never per frame) but the state maps, which the video owns; the engine writes into
the output batches it is handed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..backends.base import channel_axis, spatial_axes
from ..contract import StateSpec
from ..errors import ModelError
from ..normalize import Affine
from ..pipeline import PlannedSize
from ..tiling import TilePlan
from .device import Buffer, Device

#: Frames in flight: one uploading, one computing, one downloading.
DEFAULT_DEPTH = 3
RESULTS = ("masks", "probabilities")
#: Plans whose tile tables stay on the device (one per frame size and video).
MAX_PLANS = 8


class DeviceEngine(Protocol):
    """A network that runs on the device's buffers, enqueued on a stream.

    `unetrt.backends.tensorrt` binds the buffers' addresses to its engine
    (``set_tensor_address`` + ``execute_async_v3``); the tests and the GPU benchmark use
    CuPy / PyTorch stand-ins on the same pointers; the `HostDevice` twin a `Model`.
    """

    def enqueue(self, inputs: Buffer, outputs: Buffer, stream: Any) -> None:
        """Run the network on ``inputs`` (a batch of tiles), writing ``outputs``."""
        ...

    def enqueue_step(
        self,
        inputs: Buffer,
        states: dict[str, Buffer],
        outputs: Buffer,
        new_states: dict[str, Buffer],
        stream: Any,
    ) -> None:
        """A step model's step: the tiles and their state windows (per state input name)
        in, the prediction and the new state windows (by state input name) out."""
        ...


@dataclass(frozen=True)
class SchedulerConfig:
    """What the scheduler needs of the model and the options.

    Attributes:
        layout: The model's layout, ``"NHWC"`` or ``"NCHW"``.
        channels: Input channels per pixel.
        classes: Output channels per pixel (K).
        batch: Tiles per engine call.
        padded: The engine takes exactly ``batch`` tiles (partial batches padded).
        stitch: ``"crop"`` or ``"blend"``.
        logits: The outputs are logits (activated on the device).
        independent: K > 1 sigmoid channels are independent (mask rule).
        threshold: The mask threshold.
        result: ``"masks"`` (uint8, the device computes them) or ``"probabilities"``.
        depth: Frames in flight.
        states: A step model's states (empty for frame models).
    """

    layout: str
    channels: int
    classes: int
    batch: int = 1
    padded: bool = False
    stitch: str = "crop"
    logits: bool = False
    independent: bool = False
    threshold: float = 0.5
    result: str = "masks"
    depth: int = DEFAULT_DEPTH
    states: tuple[StateSpec, ...] = ()

    def __post_init__(self) -> None:
        if self.result not in RESULTS:
            raise ValueError(f"result must be one of {RESULTS}, got {self.result!r}")
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")


@dataclass(eq=False)
class DeviceMaps:
    """A video's whole-frame state maps on the device: per state input, the map the next
    step reads (``current``) and the one it writes (``next``), swapped after each step.

    Attributes:
        frame_size: The frames' (height, width).
        size: The padded frames' (height, width).
    """

    frame_size: tuple[int, int]
    size: tuple[int, int]
    current: dict[str, Buffer]
    next: dict[str, Buffer]

    @classmethod
    def make(
        cls, device: Device, states: tuple[StateSpec, ...], layout: str, plan: TilePlan
    ) -> DeviceMaps:
        """Maps for frames of this plan's size (contents undefined: the first step of a
        video zeroes them)."""
        made: tuple[dict[str, Buffer], dict[str, Buffer]] = ({}, {})
        for s in states:
            shape = [plan.padded_h // s.stride, plan.padded_w // s.stride]
            shape.insert(channel_axis(layout) - 1, s.channels)
            for maps in made:
                maps[s.input] = device.alloc(tuple(shape), np.float32)
        return cls((plan.height, plan.width), (plan.padded_h, plan.padded_w), *made)

    def swap(self) -> None:
        self.current, self.next = self.next, self.current


@dataclass(eq=False)
class FrameWork:
    """One prepared frame for the scheduler: the kernel frame (H, W, C; uint8, uint16 or
    float32), its normalization map and its frozen plan; for a step model the video's
    state maps, and whether the state starts afresh at this frame."""

    label: str
    frame: np.ndarray
    affine: Affine
    planned: PlannedSize
    maps: DeviceMaps | None = None
    reset: bool = False


@dataclass(eq=False)
class _Slot:
    """The per-frame buffers of one place in the ring, and its three events."""

    uploaded: Any
    computed: Any
    downloaded: Any
    key: tuple[Any, ...] | None = None
    staging_in: np.ndarray | None = None
    frame: Buffer | None = None
    probabilities: Buffer | None = None
    weight_sum: Buffer | None = None
    mask: Buffer | None = None
    nonfinite: Buffer | None = None
    staging_out: np.ndarray | None = None
    staging_count: np.ndarray | None = None
    work: FrameWork | None = None


@dataclass(eq=False)
class _Batches:
    """The batches the engine reads and writes, for one tile shape: tiles and their
    outputs, and per state input its windows in and out."""

    shape: tuple[int, ...]
    inputs: Buffer
    outputs: Buffer
    states: dict[str, Buffer]
    new_states: dict[str, Buffer]


@dataclass(eq=False)
class _PlanBuffers:
    """A plan's tile table and blend taper on the device (uploaded once)."""

    tiles: Buffer
    taper: Buffer | None
    host: list[np.ndarray] = field(default_factory=list)  # what the uploads read


class FrameScheduler:
    """Runs prepared frames through extract -> engine -> stitch -> mask on a device,
    ``depth`` frames in flight (see the module docstring).

    Args:
        device: Where it runs (`CudaDevice`, or the `HostDevice` twin).
        engine: The network, on the device's buffers.
        config: Layout, channels, batching, stitching and the mask rule.
    """

    def __init__(self, device: Device, engine: DeviceEngine, config: SchedulerConfig) -> None:
        self.device = device
        self.engine = engine
        self.config = config
        self.copy_in = device.new_stream()
        self.compute = device.new_stream()
        self.copy_out = device.new_stream()
        self._slots = [
            _Slot(device.new_event(), device.new_event(), device.new_event())
            for _ in range(config.depth)
        ]
        self._batches_held: _Batches | None = None
        self._plans: dict[PlannedSize, _PlanBuffers] = {}

    def run(self, frames: Iterable[FrameWork | Exception]) -> Iterator[np.ndarray | Exception]:
        """The result of each frame, in order: a uint8 (H, W) mask, or float32
        probabilities (H, W) / (H, W, K). An exception given in place of a frame comes
        back in its place.

        Raises:
            ModelError: If the engine produced NaN or infinite values for a frame.
        """
        in_flight: deque[_Slot | Exception] = deque()
        free = deque(self._slots)
        try:
            for item in frames:
                if isinstance(item, Exception):
                    in_flight.append(item)
                    continue
                if not free:  # the ring is full: the oldest frame comes back first
                    yield from self._pop(in_flight, free)
                slot = free.popleft()
                self._submit(slot, item)
                in_flight.append(slot)
            while in_flight:
                yield from self._pop(in_flight, free)
        finally:  # an abandoned run must not leave work that writes into reused buffers
            self.device.synchronize_stream(self.compute)
            self.device.synchronize_stream(self.copy_in)
            self.device.synchronize_stream(self.copy_out)

    def _pop(
        self, in_flight: deque[_Slot | Exception], free: deque[_Slot]
    ) -> Iterator[np.ndarray | Exception]:
        """The exceptions at the head of ``in_flight``, then its oldest frame's result
        (its slot freed)."""
        while in_flight:
            head = in_flight.popleft()
            if isinstance(head, Exception):
                yield head
                continue
            try:
                result = self._collect(head)
            finally:
                free.append(head)
            yield result
            return

    # ------------------------------------------------------------------ one frame
    def _submit(self, slot: _Slot, work: FrameWork) -> None:
        dev, cfg = self.device, self.config
        plan = work.planned.plan
        self._prepare_slot(slot, work.frame)
        assert slot.staging_in is not None and slot.frame is not None
        assert slot.probabilities is not None and slot.nonfinite is not None
        slot.work = work
        np.copyto(slot.staging_in, work.frame)  # the slot is free: its last upload is done
        dev.upload(slot.frame, slot.staging_in, self.copy_in)
        dev.record(slot.uploaded, self.copy_in)

        batches = self._batches(plan.tile_h, plan.tile_w)
        inputs, outputs = batches.inputs, batches.outputs
        tables = self._plan_buffers(work.planned)
        dev.wait(self.compute, slot.uploaded)
        dev.zero(slot.nonfinite, self.compute)
        if slot.weight_sum is not None:
            dev.zero(slot.probabilities, self.compute)
            dev.zero(slot.weight_sum, self.compute)
        maps = work.maps
        if maps is not None and work.reset:
            for state_map in maps.current.values():
                dev.zero(state_map, self.compute)
        for start in range(0, plan.n_tiles, cfg.batch):
            count = min(cfg.batch, plan.n_tiles - start)
            rows = cfg.batch if cfg.padded else count
            tiles = tables.tiles.rows(start, start + count)
            dev.extract(
                slot.frame, tiles, plan.tile_h, plan.tile_w, work.affine, cfg.layout,
                inputs.rows(0, count), self.compute,
            )  # fmt: skip
            if maps is None:
                self.engine.enqueue(inputs.rows(0, rows), outputs.rows(0, rows), self.compute)
            else:
                self._step(batches, maps, tiles, plan, count, rows, slot.nonfinite)
            result = outputs.rows(0, count)
            dev.count_nonfinite(result, slot.nonfinite, self.compute)  # before activation
            if cfg.logits:
                dev.activate(result, cfg.layout, self.compute)
            if slot.weight_sum is None:
                dev.stitch_crop(result, tiles, cfg.layout, slot.probabilities, self.compute)
            else:
                assert tables.taper is not None
                dev.stitch_blend(
                    result, tiles, tables.taper, cfg.layout, slot.probabilities,
                    slot.weight_sum, self.compute,
                )  # fmt: skip
        if maps is not None:
            maps.swap()  # the next frame's step (later on this stream) reads what this wrote
        if slot.weight_sum is not None:
            dev.finish_blend(slot.probabilities, slot.weight_sum, self.compute)
        back = slot.probabilities
        if slot.mask is not None:
            dev.mask(slot.probabilities, cfg.independent, cfg.threshold, slot.mask, self.compute)
            back = slot.mask
        dev.record(slot.computed, self.compute)

        assert slot.staging_out is not None and slot.staging_count is not None
        dev.wait(self.copy_out, slot.computed)
        dev.download(slot.staging_out, back, self.copy_out)
        dev.download(slot.staging_count, slot.nonfinite, self.copy_out)
        dev.record(slot.downloaded, self.copy_out)

    def _step(
        self,
        batches: _Batches,
        maps: DeviceMaps,
        tiles: Buffer,
        plan: TilePlan,
        count: int,
        rows: int,
        nonfinite: Buffer,
    ) -> None:
        """A step model on a batch of tiles: their state windows cut from the current
        maps, the step, the new state cores (checked) into the next maps."""
        dev, layout = self.device, self.config.layout
        for s in self.config.states:
            window = batches.states[s.input].rows(0, count)
            dev.cut_states(
                maps.current[s.input], tiles, plan, s.stride, layout, window, self.compute
            )
        self.engine.enqueue_step(
            batches.inputs.rows(0, rows),
            {name: b.rows(0, rows) for name, b in batches.states.items()},
            batches.outputs.rows(0, rows),
            {name: b.rows(0, rows) for name, b in batches.new_states.items()},
            self.compute,
        )
        for s in self.config.states:
            new = batches.new_states[s.input].rows(0, count)
            dev.count_nonfinite(new, nonfinite, self.compute)
            dev.stitch_states(new, tiles, plan, s.stride, layout, maps.next[s.input], self.compute)

    def _collect(self, slot: _Slot) -> np.ndarray:
        self.device.synchronize(slot.downloaded)
        assert slot.staging_out is not None and slot.staging_count is not None
        assert slot.work is not None
        label, slot.work = slot.work.label, None
        if int(slot.staging_count[0]):
            raise ModelError(f"the model produced NaN or infinite values for {label}")
        result = slot.staging_out.copy()
        return result[..., 0] if result.ndim == 3 and result.shape[-1] == 1 else result

    # ------------------------------------------------------------------ buffers
    def _prepare_slot(self, slot: _Slot, frame: np.ndarray) -> None:
        """The slot's buffers for frames of this shape and dtype (kept while they last)."""
        key = (frame.shape, frame.dtype.str)
        if slot.key == key:
            return
        dev, cfg = self.device, self.config
        h, w = frame.shape[:2]
        slot.key = key
        slot.staging_in = dev.staging(frame.shape, frame.dtype)
        slot.frame = dev.alloc(frame.shape, frame.dtype)
        slot.probabilities = dev.alloc((h, w, cfg.classes), np.float32)
        slot.weight_sum = dev.alloc((h, w), np.float32) if cfg.stitch == "blend" else None
        masks = cfg.result == "masks"
        slot.mask = dev.alloc((h, w), np.uint8) if masks else None
        slot.nonfinite = dev.alloc((1,), np.uint32)
        slot.staging_out = (
            dev.staging((h, w), np.uint8) if masks else dev.staging((h, w, cfg.classes), np.float32)
        )
        slot.staging_count = dev.staging((1,), np.uint32)

    def _batches(self, tile_h: int, tile_w: int) -> _Batches:
        """The engine's batches for tiles of this size (reallocated on a change)."""
        cfg = self.config
        held = self._batches_held
        shape = self._batch_shape(tile_h, tile_w, cfg.channels)
        if held is None or held.shape != shape:
            # The old batches may still be read by queued work.
            self.device.synchronize_stream(self.compute)
            alloc = self.device.alloc
            states, new_states = {}, {}
            for s in cfg.states:
                window = self._batch_shape(tile_h // s.stride, tile_w // s.stride, s.channels)
                states[s.input] = alloc(window, np.float32)
                new_states[s.input] = alloc(window, np.float32)
            out = self._batch_shape(tile_h, tile_w, cfg.classes)
            held = _Batches(
                shape, alloc(shape, np.float32), alloc(out, np.float32), states, new_states
            )
            self._batches_held = held
        return held

    def _batch_shape(self, h: int, w: int, channels: int) -> tuple[int, ...]:
        shape = [self.config.batch, 0, 0, 0]
        for axis, extent in zip(spatial_axes(self.config.layout), (h, w), strict=True):
            shape[axis] = extent
        shape[channel_axis(self.config.layout)] = channels
        return tuple(shape)

    def _plan_buffers(self, planned: PlannedSize) -> _PlanBuffers:
        """The plan's tiles (and taper) on the device, uploaded on the compute stream the
        first time (so every later use on it is ordered after the copy)."""
        tables = self._plans.pop(planned, None)
        if tables is None:
            if len(self._plans) >= MAX_PLANS:  # the oldest plan's tables may still be read
                self.device.synchronize_stream(self.compute)
                del self._plans[next(iter(self._plans))]
            rows = np.ascontiguousarray(planned.plan.tiles, np.int64)
            host: list[np.ndarray] = [rows]
            tiles = self.device.alloc(rows.shape, np.int64)
            self.device.upload(tiles, rows, self.compute)
            taper = None
            if planned.taper is not None:
                weights = np.ascontiguousarray(planned.taper, np.float32)
                host.append(weights)
                taper = self.device.alloc(weights.shape, np.float32)
                self.device.upload(taper, weights, self.compute)
            tables = _PlanBuffers(tiles, taper, host)
        self._plans[planned] = tables  # most recently used last
        return tables
