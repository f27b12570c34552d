"""The GPU executor: `unetrt.pipeline.Executor` on a `Device`, frames in flight.

`DeviceExecutor` does the host part of each frame (`unetrt.pipeline.prepare`: checks,
illumination, the normalization's affine map; the frozen tile plan of its
`VideoStream`) and hands the rest to a `FrameScheduler`: the frame goes to the device as
it is, tiles are cut, normalized, run, stitched and thresholded there, and only the mask
(`run_masks`) or the probabilities (`run`) come back. Engines: `BackendEngine` binds a
backend that runs on device pointers (TensorRT); `ModelEngine` runs any `Model` on the
`HostDevice` twin, which is how CI tests the scheduling without a GPU.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ..errors import ConfigError, ModelError, UnetrtError
from ..model import Model
from ..pipeline import ExecutorConfig, VideoStream, prepare
from ..temporal import TemporalOptions, video_maps
from ..tiling import TilePlan
from .device import CUDA_ERRORS, Buffer, CudaDevice, Device, HostDevice
from .scheduler import (
    DEFAULT_DEPTH,
    DeviceEngine,
    DeviceMaps,
    FrameScheduler,
    FrameWork,
    SchedulerConfig,
)

_KERNEL_DTYPES = (np.uint8, np.uint16, np.float32)


class BackendEngine:
    """A model whose backend runs on device memory (`unetrt.backends.tensorrt.TensorRTBackend`:
    ``enqueue`` for one image input, ``enqueue_tensors`` for a step model's tensors)."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.backend: Any = model.backend  # has enqueue / enqueue_tensors (runs_on_device)

    def enqueue(self, inputs: Buffer, outputs: Buffer, stream: Any) -> None:
        self.backend.enqueue(inputs.ptr, inputs.shape, outputs.ptr, stream.handle)

    def enqueue_step(
        self,
        inputs: Buffer,
        states: dict[str, Buffer],
        outputs: Buffer,
        new_states: dict[str, Buffer],
        stream: Any,
    ) -> None:
        image, prediction = self.model.image.name, self.model.prediction.name
        specs = {s.input: s for s in self.model.contract.states}
        addresses = {image: inputs.ptr, prediction: outputs.ptr}
        shapes = {image: inputs.shape}
        for name, window in states.items():
            addresses[name] = window.ptr
            shapes[name] = window.shape
            addresses[specs[name].output] = new_states[name].ptr
        self.backend.enqueue_tensors(addresses, shapes, stream.handle)


class ModelEngine:
    """A `Model` on the `HostDevice` twin: its backend runs in the stream's turn."""

    def __init__(self, model: Model, device: HostDevice) -> None:
        self.model = model
        self.device = device

    def enqueue(self, inputs: Buffer, outputs: Buffer, stream: Any) -> None:
        x, y = inputs.host, outputs.host
        assert x is not None and y is not None

        def run() -> None:
            result = self.model.predict(x, y)
            if result is not y:
                np.copyto(y, result)

        self.device.defer(stream, run)

    def enqueue_step(
        self,
        inputs: Buffer,
        states: dict[str, Buffer],
        outputs: Buffer,
        new_states: dict[str, Buffer],
        stream: Any,
    ) -> None:
        x, y = inputs.host, outputs.host
        windows = {name: b.host for name, b in states.items()}
        targets = {name: b.host for name, b in new_states.items()}
        assert x is not None and y is not None

        def run() -> None:
            prediction, new = self.model.step(x, windows, y)  # type: ignore[arg-type]
            if prediction is not y:
                np.copyto(y, prediction)
            for name, value in new.items():
                np.copyto(targets[name], value)  # type: ignore[arg-type]

        self.device.defer(stream, run)


def runs_on_device(backend: Any) -> bool:
    """Whether a backend can run on device pointers (has ``enqueue``)."""
    return callable(getattr(backend, "enqueue", None))


class DeviceExecutor:
    """Frames of a video through the pipeline on a device (see the module docstring).

    Args:
        model: The opened model (its contract and output channels).
        config: Tiling, batching and stitching options.
        device: A `CudaDevice`, or the `HostDevice` twin.
        engine: The network on the device's buffers.
        depth: Frames in flight.
        temporal: A step model's mode (stream mode only; window mode runs on the host).
    """

    def __init__(
        self,
        model: Model,
        config: ExecutorConfig,
        device: Device,
        engine: DeviceEngine,
        depth: int = DEFAULT_DEPTH,
        temporal: TemporalOptions | None = None,
    ) -> None:
        if temporal is not None and temporal.mode != "stream":
            raise ConfigError(
                "temporal window mode runs on the CPU executor in this version; use "
                "--temporal stream on the GPU, or segment the ONNX model with --device cpu"
            )
        self.temporal = temporal
        self.model = model
        self.config = config
        self.device = device
        self.engine = engine
        self.depth = depth
        self.classes = model.output_channels or 1
        if model.output_channels is None:
            raise ConfigError(
                "the GPU executor needs a model whose output channels are known from its "
                "shape or contract"
            )
        for spec in (model.image, model.prediction):
            if spec.dtype != np.float32:
                raise ConfigError(
                    f"the GPU executor hands the model float32 tiles and reads float32 "
                    f"outputs; {spec.name!r} is {spec.dtype} (unetrt build-engine keeps "
                    f"float32 inputs and outputs at every precision)"
                )
        self._free: dict[str, list[FrameScheduler]] = {"masks": [], "probabilities": []}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Release the device buffers (the schedulers hold them)."""
        with self._lock:
            for schedulers in self._free.values():
                schedulers.clear()

    def run(
        self, stream: VideoStream, frames: Iterable[np.ndarray], *, isolate: bool = False
    ) -> Iterator[np.ndarray | Exception]:
        """Probabilities of each frame, in order; see `unetrt.pipeline.Executor.run`."""
        return self._run("probabilities", stream, frames, isolate)

    def run_masks(
        self, stream: VideoStream, frames: Iterable[np.ndarray], *, isolate: bool = False
    ) -> Iterator[np.ndarray | Exception]:
        """Masks (`unetrt.masks.mask_of`, computed on the device), in order."""
        return self._run("masks", stream, frames, isolate)

    def _run(
        self, result: str, stream: VideoStream, frames: Iterable[np.ndarray], isolate: bool
    ) -> Iterator[np.ndarray | Exception]:
        activate = getattr(self.device, "activate_thread", None)
        if activate is not None:
            activate()
        with self._lock:
            pool = self._free[result]
            scheduler = pool.pop() if pool else self._scheduler(result)
        try:
            yield from scheduler.run(self._prepared(stream, frames, isolate))
        except CUDA_ERRORS as exc:  # out of memory, a failed launch: one line, no traceback
            raise ModelError(
                f"the GPU failed on {stream.name} ({exc}); a smaller --tile or --batch needs "
                f"less GPU memory"
            ) from exc
        finally:
            with self._lock:
                self._free[result].append(scheduler)

    def _scheduler(self, result: str) -> FrameScheduler:
        contract, accepted = self.config.contract, self.model.accepted
        config = SchedulerConfig(
            layout=contract.layout,
            channels=contract.channels,
            classes=self.classes,
            batch=self.config.batch,
            padded=accepted.fixed_batch is not None,
            stitch=self.config.stitch,
            logits=contract.output == "logits",
            independent=contract.output == "sigmoid",
            threshold=contract.threshold,
            result=result,
            depth=self.depth,
            states=contract.states if self.temporal is not None else (),
        )
        return FrameScheduler(self.device, self.engine, config)

    def _prepared(
        self, stream: VideoStream, frames: Iterable[np.ndarray], isolate: bool
    ) -> Iterator[FrameWork | Exception]:
        config = self.config
        blend = config.stitch == "blend"
        for raw in frames:
            index = stream.next_frame()
            label = stream.describe_frame(index)
            try:
                frame, affine = prepare(raw, stream, config.contract, config.checks, label)
            except UnetrtError as exc:
                if not isolate:
                    raise
                yield exc
                continue
            if frame.ndim == 2:
                frame = frame[..., None]
            if frame.dtype not in _KERNEL_DTYPES:
                frame = frame.astype(np.float32)
            planned = stream.planned(config.tiles, frame.shape[0], frame.shape[1], blend)
            work = FrameWork(label, np.ascontiguousarray(frame), affine, planned)
            if self.temporal is not None:
                try:
                    work.maps = self._maps(stream, planned.plan, label)
                except UnetrtError as exc:
                    if not isolate:
                        raise
                    yield exc
                    continue
                every = self.temporal.reset_every
                work.reset = index == 0 or (every is not None and index % every == 0)
            yield work

    def _maps(self, stream: VideoStream, plan: TilePlan, label: str) -> DeviceMaps:
        """The video's state maps on this device (`unetrt.temporal.video_maps`)."""
        layout, states = self.config.contract.layout, self.config.contract.states
        owner = (str(self.model.path), states, layout, self.temporal, "device", id(self.device))
        maps = video_maps(
            stream, owner, plan, label, lambda: DeviceMaps.make(self.device, states, layout, plan)
        )
        assert isinstance(maps, DeviceMaps)
        return maps


def cuda_executor(
    model: Model, config: ExecutorConfig, index: int, temporal: TemporalOptions | None = None
) -> DeviceExecutor:
    """The executor of a model whose backend runs on device pointers, on GPU ``index``.

    Raises:
        ConfigError: Without the CUDA build or that GPU, or for a temporal window mode.
    """
    engine = BackendEngine(model)
    return DeviceExecutor(model, config, CudaDevice(index), engine, temporal=temporal)
