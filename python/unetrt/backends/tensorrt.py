"""TensorRT backend: runs an engine built by ``unetrt build-engine --backend tensorrt``.

A TensorRT engine is compiled for one TensorRT version and one GPU; its sidecar
``<file>.engine.unetrt.json`` records both (and the contract), so that loading it
elsewhere is refused with a message naming both sides instead of TensorRT's own error.
An engine built ``--version-compatible`` runs on the same or a later TensorRT of the
same major version; one built ``--hardware-compatible`` on any GPU of compute capability
8.0 (Ampere) or later.

The backend runs on host arrays (`TensorRTBackend.run`: upload, execute, download on
its own stream) and on device memory (`TensorRTBackend.enqueue`: the GPU executor's
path, `unetrt.gpu.executor.BackendEngine`), with tensors addressed by name
(``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``).

TensorRT itself is imported inside the functions that need it, never at module import:
``import unetrt`` works without it. Type stubs alone (``tensorrt-stubs``, which leave an
empty ``tensorrt`` namespace package behind) do not count as TensorRT.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from ..closeable import Closeable
from ..contract import check_layout, read_engine
from ..errors import ConfigError, MissingDependencyError, ModelError, UnetrtError
from .base import (
    BackendOptions,
    Device,
    ShapeRange,
    TensorSpec,
    check_feeds,
    check_tensor,
    describe_feeds,
    detect_layout,
    parse_device,
    spatial_axes,
)

if TYPE_CHECKING:
    import tensorrt as trt

    from ..gpu.device import Buffer

#: Suffixes of a serialized TensorRT engine.
ENGINE_SUFFIXES = (".engine", ".plan")
#: The oldest GPU generation a hardware-compatible (AMPERE_PLUS) engine runs on.
AMPERE_PLUS = (8, 0)
#: Where build-engine points when TensorRT cannot run here.
CPU_ENGINES = "build a CPU engine instead: --backend openvino, or --backend onnxruntime --int8"
#: Where loading an engine points when TensorRT cannot run here.
CPU_DEVICE = "segment an ONNX model on the CPU instead (--device cpu)"


# ----------------------------------------------------------------------- what is here
def tensorrt_version() -> str:
    """The installed TensorRT's version, e.g. ``"10.13.0.35"``.

    Raises:
        MissingDependencyError: Without TensorRT (type stubs alone are no TensorRT).
    """
    try:
        import tensorrt
    except ImportError:
        version = None
    else:
        version = getattr(tensorrt, "__version__", None)
    if not isinstance(version, str):
        raise MissingDependencyError(
            "TensorRT is not installed (pip install tensorrt, from NVIDIA's package index)"
        )
    return version


def tensorrt_major(version: str) -> int:
    """The major version of a TensorRT version string (``"10.13.0.35"`` -> 10)."""
    return version_numbers(version)[0]


def check_tensorrt(device: str | Device = "cuda:0", fallback: str = CPU_ENGINES) -> Device:
    """The CUDA device TensorRT runs on here; ``"cpu"`` means ``cuda:0``.

    Checks, in order: TensorRT installed, a CUDA GPU visible, that GPU there.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        fallback: What to do instead, appended to the message.

    Returns:
        The CUDA device.

    Raises:
        MissingDependencyError: One line, without TensorRT.
        ConfigError: One line, without a CUDA GPU (or without that one).
    """
    from ..gpu import device as cuda  # here: it brings scipy in (masks, post-processing)

    try:
        tensorrt_version()
    except MissingDependencyError as exc:
        raise MissingDependencyError(f"{exc}; {fallback}") from None
    if cuda.cuda_device_count() == 0:
        raise ConfigError(
            "TensorRT needs an NVIDIA GPU and no CUDA GPU is visible here (check the NVIDIA "
            f"driver, CUDA_VISIBLE_DEVICES and that unetrt was built with CUDA); {fallback}"
        )
    spec = parse_device(device)
    return cuda.check_cuda_device(Device("cuda", 0) if spec.kind == "cpu" else spec)


def tensorrt_available(device: str | Device = "cuda:0") -> bool:
    """Whether TensorRT is installed and ``device`` (``"cpu"``: cuda:0) is a visible GPU."""
    try:
        check_tensorrt(device)
    except UnetrtError:
        return False
    return True


def gpu_facts(index: int) -> dict[str, str]:
    """The name and compute capability (``"9.0"``) of GPU ``index``, as engines record them."""
    from ..gpu import device as cuda

    props = cuda.device_properties(index)
    return {"name": str(props["name"]), "compute_capability": str(props["compute_capability"])}


def check_compatible(
    label: str, details: Mapping[str, Any], version: str, gpu: Mapping[str, str]
) -> None:
    """Refuse an engine built for another TensorRT or GPU than this machine's.

    Args:
        label: The engine file, in words.
        details: What ``build-engine`` recorded (`unetrt.contract.EngineInfo.details`):
            ``tensorrt``, ``gpu``, ``version_compatible``, ``hardware_compatible``,
            ``source``. An engine that records no version and GPU (not built by unetrt)
            is left to TensorRT's own check.
        version: The installed TensorRT version.
        gpu: This GPU's `gpu_facts`.

    Raises:
        ModelError: Naming both versions and GPUs, and how to rebuild.
    """
    built_version, built_gpu = details.get("tensorrt"), details.get("gpu")
    if not isinstance(built_version, str) or not isinstance(built_gpu, Mapping):
        return
    if details.get("version_compatible"):
        # A version-compatible plan runs on the same or a later release of its major.
        same_version = tensorrt_major(version) == tensorrt_major(built_version) and version_numbers(
            version
        ) >= version_numbers(built_version)
    else:
        same_version = version == built_version
    here_cc = version_numbers(gpu["compute_capability"])
    if details.get("hardware_compatible"):
        same_gpu = here_cc >= AMPERE_PLUS
    else:
        same_gpu = (
            built_gpu.get("name") == gpu["name"]
            and version_numbers(str(built_gpu.get("compute_capability"))) == here_cc
        )
    if same_version and same_gpu:
        return
    source = details.get("source", "MODEL.onnx")
    raise ModelError(
        f"TensorRT engine {label} was built with TensorRT {built_version} for "
        f"{built_gpu.get('name')} (compute capability {built_gpu.get('compute_capability')}); "
        f"this machine has TensorRT {version} and {gpu['name']} (compute capability "
        f"{gpu['compute_capability']}): rebuild it here with unetrt build-engine {source} "
        f"--backend tensorrt"
    )


def version_numbers(version: str) -> tuple[int, ...]:
    """The leading numeric parts of a dotted version: ``"10.13.0.35"`` -> (10, 13, 0, 35),
    a compute capability ``"9.0"`` -> (9, 0)."""
    parts = []
    for part in version.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts) or (0,)


# ----------------------------------------------------------------------- TensorRT's log
class TensorRTLog:
    """TensorRT's logger for this process: its errors are kept for our messages (the
    last few), its warnings and information dropped (they mean little to users)."""

    def __init__(self) -> None:
        import tensorrt as trt

        errors: deque[str] = deque(maxlen=8)
        self.errors = errors
        severe = (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR)

        class Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
                if severity in severe:
                    errors.append(msg.strip())

        self.logger: trt.ILogger = Logger()

    def take(self) -> str:
        """The errors logged since the last call, in one line."""
        text = "; ".join(self.errors) or "TensorRT gave no reason"
        self.errors.clear()
        return text


@functools.cache
def _log_of(module: ModuleType) -> TensorRTLog:
    return TensorRTLog()


def tensorrt_log() -> TensorRTLog:
    """The one `TensorRTLog` of the imported TensorRT (TensorRT wants one logger per
    process: builders and runtimes made with another get a warning)."""
    import tensorrt

    return _log_of(tensorrt)


# ----------------------------------------------------------------------- the backend
class TensorRTBackend(Closeable):
    """A TensorRT engine loaded on a GPU, with one execution context.

    Tensor names, shapes and dtypes are the engine's I/O tensors; the accepted batch and
    tile sizes those of its first optimization profile. Calls from several threads take
    turns (one context holds one set of input shapes).

    Args:
        model: The engine file (``.engine`` or ``.plan``), with its sidecar where
            ``unetrt build-engine`` built it.
        options: The device (``"cpu"`` means ``cuda:0``) and the precision it was
            built in (for the record; the engine computes as it was built).
        layout: ``"NHWC"`` or ``"NCHW"``; None: the contract's, as `open_model` passes
            it, else detected from the input shape.

    Raises:
        ModelError: If the file is not an engine, is missing, was built for another
            TensorRT or GPU, or cannot be loaded, or its tensors do not suit.
        MissingDependencyError: Without TensorRT.
        ConfigError: Without a CUDA GPU.
    """

    name = "tensorrt"

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        options: BackendOptions | None = None,
        layout: str | None = None,
    ) -> None:
        options = options or BackendOptions()
        if layout is not None:
            check_layout(layout)
        self.label = "<model bytes>" if isinstance(model, bytes) else os.fspath(model)
        # First: without TensorRT (or a GPU) building an engine cannot help either.
        spec = check_tensorrt(options.device, CPU_DEVICE)
        if isinstance(model, bytes) or Path(model).suffix.lower() not in ENGINE_SUFFIXES:
            raise ModelError(
                f"model {self.label} is not a TensorRT engine (.engine or .plan); build one "
                f"with: unetrt build-engine {self.label} --backend tensorrt"
            )
        path = Path(model)
        if not path.is_file():
            raise ModelError(f"cannot load model {self.label}: no such file")
        import tensorrt as trt

        from ..gpu import device as cuda

        self.device = str(spec)
        self.precision = options.precision
        built = read_engine(path)
        if built is not None:
            check_compatible(self.label, built.details, trt.__version__, gpu_facts(spec.index))
        # First: TensorRT loads the engine onto the current device, which this sets.
        self._gpu = cuda.CudaDevice(spec.index)
        self._log = tensorrt_log()
        self._runtime = trt.Runtime(self._log.logger)
        if built is not None and built.details.get("version_compatible"):
            # A version-compatible plan carries its own lean runtime (host code).
            self._runtime.engine_host_code_allowed = True
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ModelError(f"TensorRT cannot load engine {self.label}: {self._log.take()}")
        self._engine: trt.ICudaEngine | None = engine
        self._context: trt.IExecutionContext | None = engine.create_execution_context()
        # Device-memory runs: one context per stream (a context's activations and input
        # shapes belong to one run at a time; two schedulers run on two streams at once).
        self._stream_contexts: dict[int, trt.IExecutionContext] = {}
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        modes = {n: engine.get_tensor_mode(n) for n in names}
        dtypes: dict[Any, np.dtype[Any]] = {
            trt.DataType.FLOAT: np.dtype(np.float32),
            trt.DataType.HALF: np.dtype(np.float16),
        }
        shapes = {
            n: tuple(d if d >= 0 else None for d in dims(engine.get_tensor_shape(n))) for n in names
        }
        ins = [n for n in names if modes[n] == trt.TensorIOMode.INPUT]
        outs = [n for n in names if modes[n] == trt.TensorIOMode.OUTPUT]
        for role, group, rank in (("input", ins, 4), ("output", outs, None)):
            for n in group:
                kind = engine.get_tensor_dtype(n)
                check_tensor(self.label, role, n, shapes[n], kind in dtypes, str(kind), rank)
        self.layout: str = layout or detect_layout(shapes[ins[0]])[0] or "NHWC"

        def spec_of(n: str) -> TensorSpec:
            shape = shapes[n]
            dtype = dtypes[engine.get_tensor_dtype(n)]
            return TensorSpec(n, shape, dtype, self.layout if len(shape) == 4 else None)

        self.inputs: tuple[TensorSpec, ...] = tuple(map(spec_of, ins))
        self.outputs: tuple[TensorSpec, ...] = tuple(map(spec_of, outs))
        self._input_names = {t.name: t for t in self.inputs}
        self._buffers: dict[str, Buffer] = {}
        self._stream: Any = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ shapes
    def accepted(self, name: str | None = None) -> ShapeRange:
        """The batch and tile sizes of the engine's optimization profile for an input."""
        spec = self.inputs[0] if name is None else self._input_names[name]
        lo, opt, hi = map(dims, self._live_engine().get_tensor_profile_shape(spec.name, 0))
        h, w = spatial_axes(self.layout)
        return ShapeRange(
            min_batch=lo[0],
            opt_batch=opt[0],
            max_batch=hi[0],
            min_tile=(lo[h], lo[w]),
            opt_tile=(opt[h], opt[w]),
            max_tile=(hi[h], hi[w]),
        )

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The prediction's (first output's) shape for an image batch of this shape.

        Raises:
            ModelError: If the engine has several inputs, or the shape is outside its
                optimization profile.
        """
        image = self._single_input()
        with self._lock:
            self._set_shapes({image: tuple(input_shape)})
            return dims(self._live_context().get_tensor_shape(self.outputs[0].name))

    def _set_shapes(
        self, shapes: Mapping[str, tuple[int, ...]], context: trt.IExecutionContext | None = None
    ) -> None:
        context = context or self._live_context()
        for name, shape in shapes.items():
            if not context.set_input_shape(name, shape):
                self._log.take()  # TensorRT's wording repeats ours
                accepted = self.accepted(name)
                raise ModelError(
                    f"TensorRT engine {self.label}: input {name!r} of shape {tuple(shape)} is "
                    f"outside its optimization profile (batch {accepted.min_batch} to "
                    f"{accepted.max_batch}, tiles {_size(accepted.min_tile)} to "
                    f"{_size(accepted.max_tile)}); build the engine with a larger --tile or "
                    f"--max-batch"
                )

    def _single_input(self) -> str:
        if len(self.inputs) != 1:
            raise ModelError(
                f"TensorRT engine {self.label} has {len(self.inputs)} inputs; device memory "
                f"runs need an engine with one image input"
            )
        return self.inputs[0].name

    # ------------------------------------------------------------------ running
    def run(
        self,
        feeds: Mapping[str, np.ndarray],
        out: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the engine on host arrays (see `Backend.run`): upload, execute, download
        on the backend's stream. Outputs are float32; device buffers are kept between
        calls and grown when a larger shape comes.

        Raises:
            ModelError: If a feed is missing, unknown, not 4-D or outside the profile, or
                the engine fails.
        """
        converted = check_feeds(self.label, self._input_names, feeds)
        with self._lock:
            context = self._live_context()
            self._set_shapes({n: tuple(a.shape) for n, a in converted.items()})
            if self._stream is None:
                self._stream = self._gpu.new_stream()
            stream = self._stream
            for name, array in converted.items():
                buffer = self._buffer(name, tuple(array.shape), array.dtype)
                self._gpu.upload(buffer, array, stream)
                context.set_tensor_address(name, buffer.ptr)
            downloads = []
            for spec in self.outputs:
                shape = dims(context.get_tensor_shape(spec.name))
                buffer = self._buffer(spec.name, shape, spec.dtype)
                context.set_tensor_address(spec.name, buffer.ptr)
                given = (out or {}).get(spec.name)
                direct = (
                    given is not None
                    and given.shape == shape
                    and given.dtype == spec.dtype
                    and given.flags.c_contiguous
                )
                host = given if given is not None and direct else np.empty(shape, spec.dtype)
                downloads.append((spec.name, host, buffer))
            self._execute(stream.handle, feeds)
            for _, host, buffer in downloads:
                self._gpu.download(host, buffer, stream)
            self._gpu.synchronize_stream(stream)
        result: dict[str, np.ndarray] = {}
        for name, host, _ in downloads:
            given = (out or {}).get(name)
            if given is not None and host is not given and given.shape == host.shape:
                np.copyto(given, host)  # a float16 output into the caller's float32 buffer
                host = given
            # One of another shape than its buffer is returned as is, for the caller to name.
            result[name] = host if host.dtype == np.float32 else host.astype(np.float32)
        return result

    def enqueue(
        self,
        inputs_ptr: int,
        input_shape: tuple[int, ...],
        outputs_ptr: int,
        stream_handle: int,
    ) -> None:
        """Enqueue one run on device memory (the GPU executor's path).

        Args:
            inputs_ptr: Device address of the image batch (the engine's one input).
            input_shape: Its shape, in the engine's layout.
            outputs_ptr: Device address for the prediction (the first output), of
                `output_shape` ``(input_shape)``.
            stream_handle: The ``cudaStream_t`` to run on; the call returns at once.

        Raises:
            ModelError: If the engine has several inputs, the shape is outside its
                profile, or TensorRT refuses to enqueue the run.
        """
        image = self._single_input()
        addresses = {image: inputs_ptr, self.outputs[0].name: outputs_ptr}
        self.enqueue_tensors(addresses, {image: tuple(input_shape)}, stream_handle)

    def enqueue_tensors(
        self,
        addresses: Mapping[str, int],
        input_shapes: Mapping[str, tuple[int, ...]],
        stream_handle: int,
    ) -> None:
        """Enqueue one run on device memory with tensors named (a step model's image and
        states in, prediction and new states out).

        Args:
            addresses: Device address per tensor name: every input, and the outputs that
                are read (the others get buffers of the backend's own).
            input_shapes: Shape per input name, in the engine's layout.
            stream_handle: The ``cudaStream_t`` to run on; the call returns at once.

        Raises:
            ModelError: If an input is missing or a shape is outside the profile, or
                TensorRT refuses to enqueue the run.
        """
        missing = [t.name for t in self.inputs if t.name not in input_shapes]
        if missing:
            raise ModelError(f"TensorRT engine {self.label}: no shape given for {missing}")
        with self._lock:
            context = self._stream_contexts.get(stream_handle)
            if context is None:
                context = self._live_engine().create_execution_context()
                self._stream_contexts[stream_handle] = context
            self._set_shapes({n: tuple(s) for n, s in input_shapes.items()}, context)
            for name, address in addresses.items():
                context.set_tensor_address(name, address)
            for spec in self.outputs:
                if spec.name not in addresses:  # auxiliary outputs: written, never read
                    shape = dims(context.get_tensor_shape(spec.name))
                    buffer = self._buffer(f"{spec.name}@{stream_handle}", shape, spec.dtype)
                    context.set_tensor_address(spec.name, buffer.ptr)
            self._execute(stream_handle, None, context)

    def _execute(
        self,
        stream_handle: int,
        feeds: Mapping[str, np.ndarray] | None,
        context: trt.IExecutionContext | None = None,
    ) -> None:
        if not (context or self._live_context()).execute_async_v3(stream_handle):
            where = (
                ""
                if feeds is None
                else f" on {describe_feeds(self._input_names, feeds, self.layout)}"
            )
            raise ModelError(f"TensorRT engine {self.label} failed{where}: {self._log.take()}")

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Buffer:
        """Device memory for a tensor of this shape: the tensor's buffer, grown when too
        small (freeing the old one waits for the GPU work using it)."""
        from ..gpu.device import Buffer

        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        held = self._buffers.get(name)
        if held is None or held.nbytes < nbytes:
            held = self._buffers[name] = self._gpu.alloc(shape, dtype)
        return Buffer(shape, dtype, held.ptr, None, held.owner)

    # ------------------------------------------------------------------ the rest
    def _live_engine(self) -> trt.ICudaEngine:
        if self._engine is None:
            raise RuntimeError(f"backend for {self.label} is closed")
        return self._engine

    def _live_context(self) -> trt.IExecutionContext:
        if self._context is None:
            raise RuntimeError(f"backend for {self.label} is closed")
        return self._context

    def metadata(self) -> dict[str, str]:
        """None: an engine carries no ONNX metadata (its contract is in the sidecar)."""
        return {}

    def close(self) -> None:
        """Release the context, engine and device buffers; the backend is unusable afterwards."""
        self._context = None
        self._stream_contexts.clear()
        self._engine = None
        self._buffers.clear()

    def __repr__(self) -> str:
        return (
            f"TensorRTBackend({self.label!r}, device={self.device!r}, layout={self.layout!r}, "
            f"inputs=[{', '.join(map(str, self.inputs))}])"
        )


def dims(value: trt.Dims) -> tuple[int, ...]:
    """A TensorRT ``Dims`` as a tuple (-1 for a dynamic dim)."""
    return tuple(value[i] for i in range(len(value)))


def _size(hw: tuple[int, int] | None) -> str:
    return "any" if hw is None else f"{hw[0]}x{hw[1]}"


__all__ = [
    "ENGINE_SUFFIXES",
    "TensorRTBackend",
    "check_compatible",
    "check_tensorrt",
    "dims",
    "gpu_facts",
    "tensorrt_available",
    "tensorrt_log",
    "tensorrt_major",
    "tensorrt_version",
    "version_numbers",
]
