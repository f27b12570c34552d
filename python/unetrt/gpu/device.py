"""Devices the frame scheduler runs on: the CUDA device and its CPU twin.

A `Device` is the small interface the scheduler (`unetrt.gpu.scheduler`) is written
against: memory (`alloc`, `staging`), streams and events (`new_stream`, `new_event`,
`record`, `wait`, `synchronize`), copies (`upload`, `download`, `zero`) and the
pipeline's kernels (`extract`, `activate`, `stitch_crop`, `stitch_blend`,
`finish_blend`, `mask`, `count_nonfinite`, and for step models `cut_states`,
`stitch_states`). Everything but `alloc`, `staging`, `new_*` and `synchronize` is
enqueued on a stream and returns at once.

- `CudaDevice` runs them with the CUDA part of the C++ module (``unetrt._core.cuda``):
  device memory, pinned staging memory, non-blocking streams, events, and the kernels of
  ``cpp/src/cuda``, which share their per-pixel arithmetic with the CPU core.
- `HostDevice` is its twin on the CPU: buffers are NumPy arrays, the kernels are the CPU
  core's, and every enqueued operation is deferred until a `synchronize` needs it, the
  streams interleaved in a random order that respects only stream order and event
  waits, as a GPU may. A scheduler that forgot a wait, or reused a buffer too early,
  gives wrong results on it (the CI tests run it with many seeds).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .. import _core, masks
from ..backends.base import Device as DeviceSpec
from ..backends.base import parse_device
from ..errors import ConfigError
from ..normalize import Affine
from ..tiling import TilePlan

#: What a failed CUDA runtime call raises (none without the CUDA build).
CUDA_ERRORS: tuple[type[Exception], ...] = (_core.cuda.CudaError,) if hasattr(_core, "cuda") else ()


# ----------------------------------------------------------------------- what is here
def cuda_compiled() -> bool:
    """Whether the C++ module was built with its CUDA part (nvcc found at install)."""
    return bool(_core.build_info()["cuda"])


def cuda_device_count() -> int:
    """GPUs the CUDA runtime sees now (0 without the CUDA build, a driver or a GPU)."""
    return int(_core.build_info()["cuda_devices"])


def device_properties(index: int) -> dict[str, Any]:
    """Name, compute capability (``"9.0"``) and memory (bytes) of GPU ``index``."""
    check_cuda_device(f"cuda:{index}")
    return dict(_core.cuda.device_properties(index))


def check_cuda_device(device: str | DeviceSpec) -> DeviceSpec:
    """The parsed CUDA device, if this build and machine can use it.

    Raises:
        ConfigError: One line saying what is missing: the CUDA build, a GPU, or that GPU.
    """
    spec = parse_device(device)
    if spec.kind != "cuda":
        raise ConfigError(f"device {spec} is not a CUDA device; use cuda or cuda:N")
    if not cuda_compiled():
        raise ConfigError(
            f"device {spec}: this unetrt was built without CUDA (no nvcc when it was "
            f"installed); reinstall with the CUDA toolkit on PATH, or use --device cpu"
        )
    count = cuda_device_count()
    if count == 0:
        raise ConfigError(
            f"device {spec}: no CUDA GPU is visible here (check the NVIDIA driver and "
            f"CUDA_VISIBLE_DEVICES); use --device cpu"
        )
    if spec.index >= count:
        raise ConfigError(
            f"device {spec}: only {count} GPU(s) visible (cuda:0 to cuda:{count - 1})"
        )
    return spec


# ----------------------------------------------------------------------- the interface
@dataclass(eq=False)
class Buffer:
    """Memory of a device holding one array.

    Attributes:
        shape: The array's shape.
        dtype: Its element type.
        ptr: The device address (`CudaDevice`); 0 on the `HostDevice`.
        host: The array itself on the `HostDevice`; None on a GPU.
        owner: What keeps the memory alive (shared by views).
    """

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    ptr: int = 0
    host: np.ndarray | None = None
    owner: Any = field(default=None, repr=False)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def rows(self, start: int, stop: int) -> Buffer:
        """A view of rows ``start:stop`` of the first axis."""
        row = self.nbytes // self.shape[0] if self.shape[0] else 0
        shape = (stop - start, *self.shape[1:])
        host = None if self.host is None else self.host[start:stop]
        return Buffer(
            shape, self.dtype, self.ptr + start * row if self.ptr else 0, host, self.owner
        )

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        """For CuPy and PyTorch (``cupy.asarray``, ``torch.as_tensor``) on a GPU buffer."""
        if not self.ptr:
            raise AttributeError("a host buffer has no CUDA array interface")
        return {
            "shape": self.shape,
            "typestr": self.dtype.str,
            "data": (self.ptr, False),
            "version": 2,
        }


class Device(Protocol):
    """What the frame scheduler needs of a device (see the module docstring)."""

    name: str

    def alloc(self, shape: tuple[int, ...], dtype: Any) -> Buffer: ...
    def staging(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray: ...
    def new_stream(self) -> Any: ...
    def new_event(self) -> Any: ...
    def record(self, event: Any, stream: Any) -> None: ...
    def wait(self, stream: Any, event: Any) -> None: ...
    def synchronize(self, event: Any) -> None: ...
    def synchronize_stream(self, stream: Any) -> None: ...
    def upload(self, dst: Buffer, src: np.ndarray, stream: Any) -> None: ...
    def download(self, dst: np.ndarray, src: Buffer, stream: Any) -> None: ...
    def zero(self, buf: Buffer, stream: Any) -> None: ...
    def extract(
        self,
        frame: Buffer,
        tiles: Buffer,
        tile_h: int,
        tile_w: int,
        affine: Affine,
        layout: str,
        out: Buffer,
        stream: Any,
    ) -> None: ...
    def activate(self, batch: Buffer, layout: str, stream: Any) -> None: ...
    def stitch_crop(
        self, outputs: Buffer, tiles: Buffer, layout: str, dst: Buffer, stream: Any
    ) -> None: ...
    def stitch_blend(
        self,
        outputs: Buffer,
        tiles: Buffer,
        weights: Buffer,
        layout: str,
        acc: Buffer,
        weight_sum: Buffer,
        stream: Any,
    ) -> None: ...
    def finish_blend(self, acc: Buffer, weight_sum: Buffer, stream: Any) -> None: ...
    def count_nonfinite(self, data: Buffer, count: Buffer, stream: Any) -> None: ...
    def mask(
        self, prob: Buffer, independent: bool, threshold: float, out: Buffer, stream: Any
    ) -> None: ...
    def cut_states(
        self,
        state_map: Buffer,
        tiles: Buffer,
        plan: TilePlan,
        stride: int,
        layout: str,
        out: Buffer,
        stream: Any,
    ) -> None: ...
    def stitch_states(
        self,
        states: Buffer,
        tiles: Buffer,
        plan: TilePlan,
        stride: int,
        layout: str,
        state_map: Buffer,
        stream: Any,
    ) -> None: ...


def map_dims(state_map: Buffer, layout: str) -> tuple[int, int, int]:
    """(rows, cols, channels) of a 3-D state map in ``layout``."""
    a, b, c = state_map.shape
    return (a, b, c) if layout == "NHWC" else (b, c, a)


def batch_dims(batch: Buffer, layout: str) -> tuple[int, int, int, int]:
    """(n, tile_h, tile_w, channels) of a 4-D batch in ``layout``."""
    n, a, b, c = batch.shape
    return (n, a, b, c) if layout == "NHWC" else (n, b, c, a)


# ----------------------------------------------------------------------- CUDA
class CudaDevice:
    """A GPU, through ``unetrt._core.cuda``.

    Args:
        index: The GPU ordinal (``cuda:N``).

    Raises:
        ConfigError: Without the CUDA build or that GPU (`check_cuda_device`).
    """

    def __init__(self, index: int = 0) -> None:
        check_cuda_device(f"cuda:{index}")
        self.index = index
        self.cuda = _core.cuda
        self.cuda.set_device(index)
        self.name = f"cuda:{index} ({self.cuda.device_properties(index)['name']})"

    def activate_thread(self) -> None:
        """Make this GPU current in the calling thread (CUDA's current device is per thread)."""
        self.cuda.set_device(self.index)

    def alloc(self, shape: tuple[int, ...], dtype: Any) -> Buffer:
        dt = np.dtype(dtype)
        memory = self.cuda.DeviceMemory(max(int(np.prod(shape, dtype=np.int64)) * dt.itemsize, 1))
        return Buffer(tuple(shape), dt, memory.ptr, None, memory)

    def staging(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dt = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        pinned = self.cuda.PinnedMemory(max(nbytes, 1))
        # frombuffer keeps the pinned memory alive as long as the array (its base).
        return np.frombuffer(pinned, np.uint8, count=nbytes).view(dt).reshape(shape)

    def new_stream(self) -> Any:
        return self.cuda.Stream()

    def new_event(self) -> Any:
        return self.cuda.Event()

    def record(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def wait(self, stream: Any, event: Any) -> None:
        event.wait_on(stream)

    def synchronize(self, event: Any) -> None:
        event.synchronize()

    def synchronize_stream(self, stream: Any) -> None:
        stream.synchronize()

    def upload(self, dst: Buffer, src: np.ndarray, stream: Any) -> None:
        _check_copy(dst, src)
        self.cuda.upload(dst.ptr, src, stream)

    def download(self, dst: np.ndarray, src: Buffer, stream: Any) -> None:
        _check_copy(src, dst)
        self.cuda.download(dst, src.ptr, stream)

    def zero(self, buf: Buffer, stream: Any) -> None:
        self.cuda.fill(buf.ptr, 0, buf.nbytes, stream)

    def extract(
        self,
        frame: Buffer,
        tiles: Buffer,
        tile_h: int,
        tile_w: int,
        affine: Affine,
        layout: str,
        out: Buffer,
        stream: Any,
    ) -> None:
        h, w, c = frame.shape
        self.cuda.extract_tiles(
            frame.ptr, frame.dtype.name, h, w, c, tiles.ptr, tiles.shape[0], tile_h, tile_w,
            affine.scale, affine.offset, affine.lo, affine.hi, layout, out.ptr, stream,
        )  # fmt: skip

    def activate(self, batch: Buffer, layout: str, stream: Any) -> None:
        n, th, tw, k = batch_dims(batch, layout)
        self.cuda.activate(batch.ptr, n, th, tw, k, layout, stream)

    def stitch_crop(
        self, outputs: Buffer, tiles: Buffer, layout: str, dst: Buffer, stream: Any
    ) -> None:
        n, th, tw, k = batch_dims(outputs, layout)
        h, w, _ = dst.shape
        self.cuda.stitch_crop(outputs.ptr, n, th, tw, k, layout, tiles.ptr, dst.ptr, h, w, stream)

    def stitch_blend(
        self,
        outputs: Buffer,
        tiles: Buffer,
        weights: Buffer,
        layout: str,
        acc: Buffer,
        weight_sum: Buffer,
        stream: Any,
    ) -> None:
        n, th, tw, k = batch_dims(outputs, layout)
        h, w, _ = acc.shape
        self.cuda.stitch_blend(
            outputs.ptr, n, th, tw, k, layout, tiles.ptr, weights.ptr, acc.ptr, weight_sum.ptr,
            h, w, stream,
        )  # fmt: skip

    def finish_blend(self, acc: Buffer, weight_sum: Buffer, stream: Any) -> None:
        h, w, k = acc.shape
        self.cuda.finish_blend(acc.ptr, weight_sum.ptr, h * w, k, stream)

    def count_nonfinite(self, data: Buffer, count: Buffer, stream: Any) -> None:
        self.cuda.count_nonfinite(data.ptr, data.nbytes // 4, count.ptr, stream)

    def mask(
        self, prob: Buffer, independent: bool, threshold: float, out: Buffer, stream: Any
    ) -> None:
        h, w, k = prob.shape
        self.cuda.class_mask(prob.ptr, h * w, k, independent, threshold, out.ptr, stream)

    def cut_states(
        self,
        state_map: Buffer,
        tiles: Buffer,
        plan: TilePlan,
        stride: int,
        layout: str,
        out: Buffer,
        stream: Any,
    ) -> None:
        rows, cols, k = map_dims(state_map, layout)
        self.cuda.cut_states(
            state_map.ptr, rows, cols, k, stride, layout, tiles.ptr, tiles.shape[0],
            plan.tile_h, plan.tile_w, out.ptr, stream,
        )  # fmt: skip

    def stitch_states(
        self,
        states: Buffer,
        tiles: Buffer,
        plan: TilePlan,
        stride: int,
        layout: str,
        state_map: Buffer,
        stream: Any,
    ) -> None:
        rows, cols, k = map_dims(state_map, layout)
        p = plan
        self.cuda.stitch_states(
            states.ptr, rows, cols, k, stride, layout, tiles.ptr, tiles.shape[0], p.tile_h,
            p.tile_w, p.height, p.width, p.padded_h, p.padded_w, state_map.ptr, stream,
        )  # fmt: skip


def _check_copy(device: Buffer, host: np.ndarray) -> None:
    if host.nbytes != device.nbytes or not host.flags.c_contiguous:
        raise ValueError(
            f"copy of {host.nbytes} bytes ({host.shape}) between a host array and a device "
            f"buffer of {device.nbytes} bytes ({device.shape}); both must match, C-contiguous"
        )


# ----------------------------------------------------------------------- the CPU twin
@dataclass(eq=False)
class _Mark:
    """The work a stream held when an event was recorded: done once it has run."""

    done: bool = False


@dataclass(eq=False)
class HostStream:
    """A stream of the `HostDevice`: operations waiting to run, in order."""

    number: int
    ops: deque[tuple[Callable[[], None], _Mark | None]] = field(default_factory=deque)


@dataclass(eq=False)
class HostEvent:
    """An event of the `HostDevice`: the mark of its latest `record`."""

    mark: _Mark | None = None


class HostDevice:
    """The CPU twin of `CudaDevice` (see the module docstring).

    Args:
        seed: Order in which runnable streams take turns: None runs the oldest stream
            first (deterministic), an integer a random interleaving from that seed.
        threads: Threads for the CPU kernels.
    """

    name = "host"

    def __init__(self, seed: int | None = None, threads: int = 1) -> None:
        self._rng = None if seed is None else random.Random(seed)
        self._streams: list[HostStream] = []
        self.threads = threads
        self.ops_run = 0

    # --------------------------------------------------------- memory and ordering
    def alloc(self, shape: tuple[int, ...], dtype: Any) -> Buffer:
        # Filled with NaN (or 0xAB bytes) so that reading before writing shows up.
        dt = np.dtype(dtype)
        array = np.full(shape, np.nan, dt) if dt.kind == "f" else np.full(shape, 0xAB, dt)
        return Buffer(tuple(shape), dt, 0, array, array)

    def staging(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.zeros(shape, dtype)

    def new_stream(self) -> HostStream:
        stream = HostStream(len(self._streams))
        self._streams.append(stream)
        return stream

    def new_event(self) -> HostEvent:
        return HostEvent()

    def defer(self, stream: HostStream, op: Callable[[], None]) -> None:
        """Run ``op`` on ``stream`` in its turn (host work ordered like device work)."""
        stream.ops.append((op, None))

    def record(self, event: HostEvent, stream: HostStream) -> None:
        mark = event.mark = _Mark()

        def reached() -> None:
            mark.done = True

        stream.ops.append((reached, None))

    def wait(self, stream: HostStream, event: HostEvent) -> None:
        if event.mark is not None:  # as CUDA: waiting on a never-recorded event is a no-op
            stream.ops.append((lambda: None, event.mark))

    def synchronize(self, event: HostEvent) -> None:
        mark = event.mark
        if mark is not None:
            self._run_until(lambda: mark.done)

    def synchronize_stream(self, stream: HostStream) -> None:
        self._run_until(lambda: not stream.ops)

    def _run_until(self, reached: Callable[[], bool]) -> None:
        while not reached():
            runnable = [
                s for s in self._streams if s.ops and (s.ops[0][1] is None or s.ops[0][1].done)
            ]
            if not runnable:
                raise RuntimeError("the host device's streams wait on each other (deadlock)")
            stream = runnable[0] if self._rng is None else self._rng.choice(runnable)
            op, _ = stream.ops.popleft()
            op()
            self.ops_run += 1

    # --------------------------------------------------------- copies
    def upload(self, dst: Buffer, src: np.ndarray, stream: HostStream) -> None:
        _check_copy(dst, src)
        target = _host(dst)
        # Read at run time, as an asynchronous copy from pinned memory does.
        self.defer(stream, lambda: np.copyto(target, src.reshape(target.shape)))

    def download(self, dst: np.ndarray, src: Buffer, stream: HostStream) -> None:
        _check_copy(src, dst)
        source = _host(src)
        self.defer(stream, lambda: np.copyto(dst, source.reshape(dst.shape)))

    def zero(self, buf: Buffer, stream: HostStream) -> None:
        target = _host(buf)
        self.defer(stream, lambda: target.fill(0))

    # --------------------------------------------------------- kernels (the CPU core's)
    def extract(
        self,
        frame: Buffer,
        tiles: Buffer,
        tile_h: int,
        tile_w: int,
        affine: Affine,
        layout: str,
        out: Buffer,
        stream: HostStream,
    ) -> None:
        src, rows, dst = _host(frame), _host(tiles), _host(out)
        a = affine
        self.defer(
            stream,
            lambda: _core.extract_tiles(
                src, rows, tile_h, tile_w, a.scale, a.offset, a.lo, a.hi, layout, dst,
                self.threads,
            ),
        )  # fmt: skip

    def activate(self, batch: Buffer, layout: str, stream: HostStream) -> None:
        data = _host(batch)
        axis = 3 if layout == "NHWC" else 1
        self.defer(stream, lambda: np.copyto(data, masks.activate(data, "logits", axis)))

    def stitch_crop(
        self, outputs: Buffer, tiles: Buffer, layout: str, dst: Buffer, stream: HostStream
    ) -> None:
        src, rows, target = _host(outputs), _host(tiles), _host(dst)
        self.defer(stream, lambda: _core.stitch_crop(src, rows, target, layout, self.threads))

    def stitch_blend(
        self,
        outputs: Buffer,
        tiles: Buffer,
        weights: Buffer,
        layout: str,
        acc: Buffer,
        weight_sum: Buffer,
        stream: HostStream,
    ) -> None:
        src, rows, w, a, ws = (
            _host(outputs),
            _host(tiles),
            _host(weights),
            _host(acc),
            _host(weight_sum),
        )
        self.defer(stream, lambda: _core.stitch_blend(src, rows, w, a, ws, layout, self.threads))

    def finish_blend(self, acc: Buffer, weight_sum: Buffer, stream: HostStream) -> None:
        a, ws = _host(acc), _host(weight_sum)
        self.defer(stream, lambda: _core.finish_blend(a, ws, self.threads))

    def count_nonfinite(self, data: Buffer, count: Buffer, stream: HostStream) -> None:
        values, counter = _host(data), _host(count)

        def run() -> None:
            counter[0] += np.count_nonzero(~np.isfinite(values))

        self.defer(stream, run)

    def mask(
        self, prob: Buffer, independent: bool, threshold: float, out: Buffer, stream: HostStream
    ) -> None:
        p, o = _host(prob), _host(out)

        def run() -> None:
            if p.shape[-1] == 1:
                _core.threshold_mask(p[..., 0].copy(), threshold, o, self.threads)
            else:
                _core.class_mask(p, independent, threshold, o, self.threads)

        self.defer(stream, run)

    def cut_states(
        self,
        state_map: Buffer,
        tiles: Buffer,
        plan: TilePlan,
        stride: int,
        layout: str,
        out: Buffer,
        stream: HostStream,
    ) -> None:
        m, rows, o, p = _host(state_map), _host(tiles), _host(out), plan
        self.defer(
            stream,
            lambda: _core.cut_states(m, rows, stride, p.tile_h, p.tile_w, layout, o, self.threads),
        )

    def stitch_states(
        self,
        states: Buffer,
        tiles: Buffer,
        plan: TilePlan,
        stride: int,
        layout: str,
        state_map: Buffer,
        stream: HostStream,
    ) -> None:
        src, rows, m, p = _host(states), _host(tiles), _host(state_map), plan
        self.defer(
            stream,
            lambda: _core.stitch_states(
                src, rows, stride, p.tile_h, p.tile_w, p.height, p.width, p.padded_h,
                p.padded_w, layout, m, self.threads,
            ),
        )  # fmt: skip


def _host(buf: Buffer) -> np.ndarray:
    if buf.host is None:
        raise ValueError("a GPU buffer given to the host device")
    return buf.host
