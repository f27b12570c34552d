"""TensorRT engines for ``unetrt build-engine --backend tensorrt``.

`build_tensorrt` parses the ONNX model with TensorRT's ONNX parser and builds a
serialized engine for this machine's GPU and TensorRT; `unetrt.engines.build_engine`
stages it and writes the sidecar (contract and `EngineInfo` with `build_tensorrt`'s
details) beside it.

Shapes. The engine has one optimization profile per build, derived from the model
contract (`derive_profiles`): for the image input, batch 1 to ``max_batch`` and tiles
from ``alignment x alignment`` to the requested tile (``tile="auto"``: `DEFAULT_TILE`
x `DEFAULT_TILE`), each side rounded up to a multiple of the alignment; TensorRT tunes
for the largest (opt = max). Dims the ONNX input fixes (a static batch, height or width)
stay fixed. State inputs of a temporal step model follow the image at their stride.

Precision, by TensorRT major version (from ``tensorrt.__version__``):

- TensorRT 10: the network is weakly typed and the precision a builder flag (``FP16``,
  ``BF16``, ``INT8``); int8 is calibrated by TensorRT's entropy calibrator
  (``IInt8EntropyCalibrator2``) on the feeds recorded from the user's frames, one tile a
  batch, with a calibration profile of that tile's shape.
- TensorRT 11 and later: networks are strongly typed only, so the precision is put into
  the ONNX graph before parsing: fp16 by ONNX Runtime's float16 converter (inputs and
  outputs kept float32), int8 as explicit QuantizeLinear / DequantizeLinear pairs made
  by ONNX Runtime's static quantization in its symmetric form (zero points 0, as
  TensorRT needs; `unetrt.engines.quantize_qdq`). bf16 has no well-kept ONNX converter
  and is refused.

A timing cache (``timing_cache``) is read before the build and written back after it
(under a temporary name, then renamed), so that later builds of similar models on the
same GPU skip the kernel timings they share.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .backends.base import Device, TensorSpec, spatial_axes
from .backends.tensorrt import (
    AMPERE_PLUS,
    gpu_facts,
    tensorrt_log,
    tensorrt_major,
    version_numbers,
)
from .contract import ModelContract
from .errors import ConfigError, InputError, ModelError, OutputError, require
from .io.atomic import atomic_output

if TYPE_CHECKING:
    import tensorrt as trt

#: Side of the largest (and tuned-for) tile of an engine built with ``tile="auto"``.
DEFAULT_TILE = 1024
#: TensorRT's builder optimization levels: 0 (fastest build) to 5 (most tuning).
OPT_LEVELS = range(6)
#: The first TensorRT major version without weakly typed networks.
STRONGLY_TYPED_MAJOR = 11


@dataclass(frozen=True)
class TensorRTOptions:
    """How a TensorRT engine is built (``unetrt build-engine --backend tensorrt``).

    Attributes:
        max_batch: The largest batch of tiles the engine runs (and is tuned for).
        workspace: TensorRT's workspace memory limit in MiB; None: TensorRT's default
            (the GPU's memory).
        opt_level: Builder optimization level 0-5; None: TensorRT's default (3).
        timing_cache: A timing cache file, read when it exists and written after the
            build; None: none.
        version_compatible: Build an engine that runs on later TensorRT releases of the
            same major version (``BuilderFlag.VERSION_COMPATIBLE``).
        hardware_compatible: Build an engine that runs on any GPU from Ampere on
            (compute capability 8.0+; ``HardwareCompatibilityLevel.AMPERE_PLUS``).
    """

    max_batch: int = 1
    workspace: int | None = None
    opt_level: int | None = None
    timing_cache: str | os.PathLike[str] | None = None
    version_compatible: bool = False
    hardware_compatible: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int):
            raise ConfigError(f"max batch must be a whole number, got {self.max_batch!r}")
        if self.max_batch < 1:
            raise ConfigError(f"max batch must be at least 1, got {self.max_batch}")
        if self.workspace is not None and self.workspace < 1:
            raise ConfigError(f"workspace must be at least 1 MiB, got {self.workspace}")
        if self.opt_level is not None and self.opt_level not in OPT_LEVELS:
            raise ConfigError(f"optimization level must be 0 to 5, got {self.opt_level}")

    @property
    def is_default(self) -> bool:
        """Whether every option has its default (nothing TensorRT-specific was asked)."""
        return self == TensorRTOptions()


@dataclass(frozen=True)
class Profile:
    """The shapes an optimization profile allows for one input.

    Attributes:
        min: Smallest shape.
        opt: The shape TensorRT tunes for.
        max: Largest shape.
    """

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict[str, list[int]]:
        """Plain-JSON form, as the sidecar records it."""
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


# ----------------------------------------------------------------------- shapes
def profile_tile(tile: tuple[int, int] | None, alignment: int) -> tuple[int, int]:
    """The largest tile of an engine: ``tile`` (None: `DEFAULT_TILE` square), each side
    rounded up to a multiple of ``alignment``."""
    h, w = tile or (DEFAULT_TILE, DEFAULT_TILE)
    return (-(-h // alignment) * alignment, -(-w // alignment) * alignment)


def derive_profiles(
    contract: ModelContract,
    inputs: Sequence[TensorSpec],
    tile: tuple[int, int] | None,
    max_batch: int = 1,
) -> dict[str, Profile]:
    """The optimization profile of every input (see the module docstring).

    Args:
        contract: The model's contract (layout, channels, alignment, states).
        inputs: The ONNX model's inputs; the one its states do not name is the image.
        tile: The requested largest tile, None for ``"auto"``.
        max_batch: The largest batch.

    Returns:
        Per input name, its profile.

    Raises:
        ConfigError: If the request contradicts a size the ONNX input fixes.
        ModelError: If the model has no image input besides its states, or several.
    """
    states = {s.input: s for s in contract.states}
    images = [spec for spec in inputs if spec.name not in states]
    if len(images) != 1:
        raise ModelError(
            f"a TensorRT engine needs one image input besides the states; the model has "
            f"{', '.join(repr(s.name) for s in inputs)}"
        )
    image = images[0]
    a = contract.alignment
    batch_dim = image.shape[0]
    if batch_dim is not None and max_batch not in (1, batch_dim):
        raise ConfigError(
            f"the model's input {image.name!r} has a fixed batch of {batch_dim}; leave "
            f"--max-batch out"
        )
    batch = (1, max_batch) if batch_dim is None else (batch_dim, batch_dim)
    largest = profile_tile(tile, a)
    fixed = tuple(image.shape[axis] for axis in spatial_axes(contract.layout))
    if all(d is not None for d in fixed) and tile is not None and tuple(tile) != fixed:
        raise ConfigError(
            f"the model's input {image.name!r} is fixed at {fixed[0]}x{fixed[1]}; leave "
            f"--tile out or give {fixed[0]}x{fixed[1]}"
        )
    # Per side: the fixed size, else from one alignment step to the largest tile.
    low = tuple(a if d is None else d for d in fixed)
    high = tuple(t if d is None else d for d, t in zip(fixed, largest, strict=True))
    frames = contract.time_steps if contract.temporal == "window" else 1

    def shape(n: int, hw: tuple[int, ...], channels: int, stride: int = 1) -> tuple[int, ...]:
        h, w = (side // stride for side in hw)
        return (n, h, w, channels) if contract.layout == "NHWC" else (n, channels, h, w)

    channels = contract.channels * frames
    profiles = {image.name: _profile(shape, batch, low, high, channels, 1)}
    for spec in inputs:
        if spec.name in states:
            state = states[spec.name]
            profiles[spec.name] = _profile(shape, batch, low, high, state.channels, state.stride)
    return profiles


def _profile(
    shape: Any,
    batch: tuple[int, int],
    low: tuple[int, ...],
    high: tuple[int, ...],
    channels: int,
    stride: int,
) -> Profile:
    top = shape(batch[1], high, channels, stride)
    return Profile(shape(batch[0], low, channels, stride), top, top)


# ----------------------------------------------------------------------- precision
def check_precision(version: str, precision: str) -> None:
    """Refuse a precision this TensorRT cannot build.

    Raises:
        ConfigError: For bf16 on TensorRT 11 and later.
    """
    if precision == "bf16" and tensorrt_major(version) >= STRONGLY_TYPED_MAJOR:
        raise ConfigError(
            f"TensorRT {version} builds strongly typed networks only, and bf16 would need "
            f"the ONNX model converted to bfloat16, for which there is no well-kept "
            f"converter; use --precision fp16 (or fp32, int8)"
        )


def _typed_graph(
    source: Path,
    precision: str,
    feeds: list[dict[str, np.ndarray]] | None,
    method: str,
    staging: Path,
) -> Path:
    """The ONNX model with the precision in its graph (TensorRT 11+): fp16 weights and
    compute with float32 inputs and outputs, or symmetric int8 Q/DQ; fp32 as it is."""
    if precision == "fp32":
        return source
    typed = staging / f"{precision}.onnx"
    if precision == "int8":
        from .engines import quantize_qdq  # here: engines imports this module

        assert feeds is not None
        quantize_qdq(source, typed, feeds, staging, method=method, target="tensorrt")
        return typed
    onnx = require("onnx", "build")
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        converted = convert_float_to_float16(onnx.load(os.fspath(source)), keep_io_types=True)
    except Exception as exc:  # the converter raises plain exceptions
        raise ModelError(f"ONNX Runtime could not convert {source} to float16: {exc}") from exc
    onnx.save(converted, os.fspath(typed))
    return typed


def calibration_tiles(feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The recorded feeds one tile at a time, as TensorRT's calibrator takes them
    (batches of one: the calibration profile has one shape).

    Raises:
        InputError: If the tiles are not all of one size (one stack has one frame size
            and so one tile plan; this is a bug if it happens).
    """
    tiles = [
        {name: np.ascontiguousarray(array[i : i + 1], np.float32) for name, array in feed.items()}
        for feed in feeds
        for i in range(len(next(iter(feed.values()))))
    ]
    shapes = {tuple((n, a.shape) for n, a in tile.items()) for tile in tiles}
    if len(shapes) != 1:
        raise InputError(
            f"calibration tiles come in {len(shapes)} sizes; TensorRT calibrates on one: "
            f"use frames of one size"
        )
    return tiles


def _calibrator(device: Device, tiles: list[dict[str, np.ndarray]]) -> trt.IInt8EntropyCalibrator2:
    """TensorRT 10's entropy calibrator, fed the recorded tiles through device memory."""
    import tensorrt as trt

    from .gpu import device as cuda

    gpu = cuda.CudaDevice(device.index)
    stream = gpu.new_stream()
    buffers = {name: gpu.alloc(a.shape, a.dtype) for name, a in tiles[0].items()}

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._tiles = iter(tiles)

        def get_batch_size(self) -> int:
            return 1  # explicit batch: the batch is in the calibration profile's shape

        def get_batch(self, names: list[str]) -> list[int]:
            tile = next(self._tiles, None)
            if tile is None:
                return []  # no more: calibration ends
            for name in names:
                gpu.upload(buffers[name], tile[name], stream)
            gpu.synchronize_stream(stream)
            return [buffers[name].ptr for name in names]

        def read_calibration_cache(self) -> bytes | None:
            return None  # no cache: calibrated on the user's frames at each build

        def write_calibration_cache(self, cache: Any) -> None:
            pass  # the engine keeps the scales; nothing else needs them

    return Calibrator()


# ----------------------------------------------------------------------- the build
def build_tensorrt(
    source: Path,
    built: Path,
    *,
    contract: ModelContract,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    precision: str,
    device: Device,
    tile: tuple[int, int] | None,
    options: TensorRTOptions,
    feeds: list[dict[str, np.ndarray]] | None,
    method: str,
    staging: Path,
) -> dict[str, Any]:
    """Build ``source`` into a serialized TensorRT engine at ``built``.

    Args:
        source: The float32 ONNX model.
        built: The engine file to write (in the staging folder).
        contract: The model's contract (for the profiles).
        inputs: The ONNX model's inputs.
        outputs: Its outputs (recorded).
        precision: ``"fp32"``, ``"fp16"``, ``"bf16"`` (TensorRT 10) or ``"int8"``.
        device: The GPU to build for.
        tile: The requested largest tile, None for ``"auto"``.
        options: The build options.
        feeds: The recorded calibration feeds (needed for int8).
        method: ONNX Runtime's calibration method (int8 on TensorRT 11+).
        staging: A folder for intermediate files.

    Returns:
        The details the sidecar records: TensorRT version, GPU, profiles, options,
        input and output names.

    Raises:
        ConfigError: On an option this TensorRT or GPU cannot build.
        ModelError: If TensorRT cannot parse the model or build the engine.
        OutputError: If the timing cache cannot be written.
    """
    import tensorrt as trt

    version = trt.__version__
    check_precision(version, precision)
    major = tensorrt_major(version)
    gpu = gpu_facts(device.index)
    if options.hardware_compatible and version_numbers(gpu["compute_capability"]) < AMPERE_PLUS:
        raise ConfigError(
            f"--hardware-compatible needs an Ampere or later GPU (compute capability 8.0+); "
            f"{device} is {gpu['name']} ({gpu['compute_capability']})"
        )
    profiles = derive_profiles(contract, inputs, tile, options.max_batch)
    strongly_typed = major >= STRONGLY_TYPED_MAJOR
    graph = _typed_graph(source, precision, feeds, method, staging) if strongly_typed else source
    log = tensorrt_log()
    log.take()  # forget what earlier work logged
    builder = trt.Builder(log.logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log.logger)
    if not parser.parse(graph.read_bytes(), os.fspath(graph)):
        problems = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ModelError(f"TensorRT cannot parse {source}: {'; '.join(problems) or log.take()}")
    config = builder.create_builder_config()
    if options.workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace << 20)
    if options.opt_level is not None:
        config.builder_optimization_level = options.opt_level
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if options.hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    profile = builder.create_optimization_profile()
    for name, shapes in profiles.items():
        low, opt, high = (trt.Dims(list(s)) for s in (shapes.min, shapes.opt, shapes.max))
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    calibrator = None
    if not strongly_typed and precision != "fp32":
        flags_of = {
            "fp16": trt.BuilderFlag.FP16,
            "bf16": trt.BuilderFlag.BF16,
            "int8": trt.BuilderFlag.INT8,
        }
        config.set_flag(flags_of[precision])
        if precision == "int8":
            assert feeds is not None
            tiles = calibration_tiles(feeds)
            calibration = builder.create_optimization_profile()
            for name, array in tiles[0].items():
                dims = trt.Dims(list(array.shape))
                calibration.set_shape(name, dims, dims, dims)
            config.set_calibration_profile(calibration)
            calibrator = config.int8_calibrator = _calibrator(device, tiles)
    cache_file = None if options.timing_cache is None else Path(options.timing_cache)
    if cache_file is not None:
        _use_timing_cache(config, cache_file)
    serialized = builder.build_serialized_network(network, config)
    del calibrator  # held here until the build is done: the config holds no Python reference
    if serialized is None:
        raise ModelError(f"TensorRT could not build an engine from {source}: {log.take()}")
    try:
        built.write_bytes(memoryview(serialized))
    except OSError as exc:
        raise OutputError(f"cannot write {built}: {exc.strerror or exc}") from exc
    if cache_file is not None:
        with atomic_output(cache_file) as partial:
            partial.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return {
        "tensorrt": version,
        "gpu": gpu,
        "strongly_typed": strongly_typed,
        "profiles": {name: p.to_dict() for name, p in profiles.items()},
        "version_compatible": options.version_compatible,
        "hardware_compatible": options.hardware_compatible,
        "max_batch": options.max_batch,
        "workspace_mib": options.workspace,
        "opt_level": options.opt_level,
        "inputs": [spec.name for spec in inputs],
        "outputs": [spec.name for spec in outputs],
        "quantization": _quantization(precision, strongly_typed, method),
    }


def _use_timing_cache(config: trt.IBuilderConfig, path: Path) -> None:
    """Start the build from the timing cache in ``path`` (an empty one if it does not
    exist yet)."""
    try:
        data = path.read_bytes() if path.exists() else b""
    except OSError as exc:
        raise ConfigError(f"cannot read timing cache {path}: {exc.strerror or exc}") from exc
    cache = config.create_timing_cache(data)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise ConfigError(
            f"timing cache {path} was made for another GPU or TensorRT version, or is not a "
            f"timing cache; delete it or give another --timing-cache file"
        )


def _parser_error(error: Any) -> str:
    """One ONNX parser error in words: the node, its operator, TensorRT's description."""
    where = f"node {error.node_name()!r} ({error.node_operator()}): " if error.node() >= 0 else ""
    return f"{where}{error.desc()}"


def _quantization(precision: str, strongly_typed: bool, method: str) -> str | None:
    if precision != "int8":
        return None
    if strongly_typed:
        return f"ONNX Runtime symmetric int8 Q/DQ, {method} calibration"
    return "TensorRT entropy calibration (IInt8EntropyCalibrator2)"


__all__ = [
    "DEFAULT_TILE",
    "Profile",
    "TensorRTOptions",
    "build_tensorrt",
    "calibration_tiles",
    "check_precision",
    "derive_profiles",
    "profile_tile",
]
