"""``unetrt build-engine``: a model made ready for one backend, carrying its contract.

What is built, per backend and precision:

- ``onnxruntime fp32``: the model after ONNX Runtime's portable graph optimizations
  (constant folding, Conv + BatchNorm + activation fusion), saved as ONNX.
- ``onnxruntime int8``: a statically quantized QDQ model made with ONNX Runtime's
  quantization tools (``quant_pre_process`` with symbolic shape inference skipped, as it
  fails on U-Nets of dynamic size; ``quantize_static``: uint8 activations, int8
  per-channel weights, calibrated on the user's own frames).
- ``openvino fp32 | bf16``: the model as OpenVINO IR (``.xml`` + ``.bin``) with its
  precision recorded, so that ``segment`` runs it that way without flags.
- ``openvino int8``: the model quantized by NNCF's post-training quantization, calibrated
  on the same frames.
- ``tensorrt fp32 | fp16 | bf16 | int8``: a serialized TensorRT engine (``.engine``) for
  this machine's GPU and TensorRT, with one optimization profile for the batch and tile
  sizes asked for (`unetrt.tensorrt_build`; int8 calibrated on the same frames).

Calibration frames go through the same normalization and tiling as inference: they are
segmented by the float32 model, and the tensors that reach the backend are recorded and
become the calibration set. The same frames then measure what the precision costs: the
built model segments them again and its masks are compared with the float32 masks (Dice)
and its probabilities with the float32 ones (largest difference). A Dice below
``1 - max_dice_drop`` refuses the build (nothing is written) unless ``force``.

The built model carries the full contract of the float32 model (every field stated, so
the engine never re-probes a quantized model), with the overrides given here; ONNX
outputs carry it in their metadata, an IR or an engine in the sidecar
``<file>.xml.unetrt.json`` / ``<file>.engine.unetrt.json``.
Everything is written in a hidden folder beside the output and moved into place only
when the build is complete and accepted.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backends import PRECISIONS, Backend, choose_backend
from .backends.base import ShapeRange, parse_device
from .backends.tensorrt import (
    ENGINE_SUFFIXES,
    check_tensorrt,
    tensorrt_available,
    tensorrt_version,
)
from .contract import (
    CONTRACT_KEY,
    ENGINE_KEY,
    SIDECAR_SUFFIX,
    EngineInfo,
    ModelContract,
    read_engine,
    sidecar_path,
)
from .errors import ConfigError, InputError, ModelError, OutputError, require
from .io import open_frames
from .metrics import dice
from .segmenter import Segmenter, parse_tile
from .tensorrt_build import TensorRTOptions, build_tensorrt, check_precision, profile_tile

BUILD_BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt")
BUILD_PRECISIONS = PRECISIONS
#: The file suffixes a built model may have, per backend (the first is the default).
SUFFIXES = {"onnxruntime": (".onnx",), "openvino": (".xml",), "tensorrt": ENGINE_SUFFIXES}
#: How ONNX Runtime's calibration turns recorded activations into int8 ranges.
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_CALIBRATION_FRAMES = 32
#: Largest drop of the built model's mask Dice (against float32) accepted without force.
DEFAULT_MAX_DICE_DROP = 0.03


class BuildRefused(ModelError):
    """The built model lost more accuracy than allowed; nothing was written."""


@dataclass(frozen=True)
class Accuracy:
    """What the built precision costs on the calibration frames, against float32.

    Attributes:
        frames: Frames compared.
        dice: Mean over the frames of the Dice of the built model's masks against the
            float32 model's masks (1.0 for two empty masks).
        worst_dice: The lowest frame's Dice.
        max_difference: Largest absolute probability difference over all pixels.
    """

    frames: int
    dice: float
    worst_dice: float
    max_difference: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "dice": round(self.dice, 6),
            "worst_dice": round(self.worst_dice, 6),
            "max_difference": round(self.max_difference, 6),
        }

    def __str__(self) -> str:
        return (
            f"masks agree with float32 at Dice {self.dice:.4f} (worst frame "
            f"{self.worst_dice:.4f}), largest probability difference "
            f"{self.max_difference:.4f}, on {self.frames} calibration frame(s)"
        )


@dataclass(frozen=True)
class BuildReport:
    """What `build_engine` made.

    Attributes:
        output: The built model file (``.onnx``, or ``.xml`` with its ``.bin``).
        built: The backend and precision it is built for, with the details recorded.
        accuracy: The accuracy check, None without calibration frames.
        seconds: Wall time of the build, accuracy check included.
        forced: True when the accuracy check failed and ``force`` kept the model.
    """

    output: Path
    built: EngineInfo
    accuracy: Accuracy | None
    seconds: float
    forced: bool = False

    def __str__(self) -> str:
        lines = [
            f"built {self.output} for {self.built.backend} in {self.built.precision} "
            f"({self.seconds:.1f} s)"
        ]
        if self.accuracy is not None:
            lines.append(f"accuracy: {self.accuracy}")
        if self.forced:
            lines.append("kept with --force although the accuracy check failed")
        lines.append(f"use it with: unetrt segment INPUT --model {self.output}")
        return "\n".join(lines)


def build_engine(
    model: str | os.PathLike[str] | None,
    output: str | os.PathLike[str] | None = None,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    calibration: str | os.PathLike[str] | None = None,
    calibration_frames: int = DEFAULT_CALIBRATION_FRAMES,
    method: str = "minmax",
    max_dice_drop: float = DEFAULT_MAX_DICE_DROP,
    force: bool = False,
    tensorrt: TensorRTOptions | None = None,
    **options: Any,
) -> BuildReport:
    """Build ``model`` for a backend and precision (see the module docstring).

    Args:
        model: An ONNX model or a built-in model name; None is the default model.
        output: The file to write (``.onnx`` for ONNX Runtime, ``.xml`` for OpenVINO,
            ``.engine`` or ``.plan`` for TensorRT); default
            ``<model stem>.<backend>-<precision>.<suffix>`` in the current folder.
        backend: ``"auto"`` (TensorRT where it is installed and a GPU is visible, or
            when ``device`` is a GPU; else OpenVINO when installed, else ONNX Runtime),
            ``"onnxruntime"``, ``"openvino"`` or ``"tensorrt"``.
        precision: ``"fp32"``, ``"fp16"`` (TensorRT), ``"bf16"`` (OpenVINO, TensorRT
            10) or ``"int8"``.
        calibration: Frames (a stack, folder or glob) to calibrate int8 on and to measure
            the accuracy on; needed for int8.
        calibration_frames: At most this many frames are used, evenly spaced (the first
            ones, in order, for a temporal model).
        method: int8 calibration of ONNX Runtime (also TensorRT 11's, which quantizes
            with it): ``"minmax"``, ``"percentile"`` or ``"entropy"``.
        max_dice_drop: Refuse when the mean mask Dice against float32 is below
            ``1 - max_dice_drop``.
        force: Keep the model although the accuracy check failed.
        tensorrt: How a TensorRT engine is built (batch, workspace, optimization level,
            timing cache, compatibility); only for ``backend="tensorrt"``.
        **options: `Segmenter` options for the float32 model and the check (``tile``,
            ``halo``, ``normalization``, ``threshold``, ``threads``, ``nan``, ...): the
            contract overrides among them are written into the built model's contract.
            For TensorRT, ``tile`` is also the engine's largest tile (``"auto"``:
            `unetrt.tensorrt_build.DEFAULT_TILE`) and ``device`` its GPU (``"cpu"``:
            ``cuda:0``); the float32 model runs on the CPU.

    Returns:
        The report; print it for the user.

    Raises:
        ConfigError: On a bad option or a combination that cannot be built, or without
            a CUDA GPU for TensorRT.
        MissingDependencyError: Without the backend's package (OpenVINO, TensorRT).
        InputError: If the calibration frames are missing, empty or do not fit the model.
        OutputError: If the output cannot be written (or is a folder).
        BuildRefused: If the accuracy check failed and ``force`` is not set.
    """
    started = time.perf_counter()
    backend, device = _build_backend(backend, precision, options.get("device", "cpu"))
    tensorrt = tensorrt or TensorRTOptions()
    if backend != "tensorrt" and not tensorrt.is_default:
        raise ConfigError(
            "--max-batch, --workspace, --opt-level, --timing-cache, --version-compatible and "
            "--hardware-compatible are TensorRT options; add --backend tensorrt"
        )
    if method not in CALIBRATION_METHODS:
        raise ConfigError(
            f"calibration method must be one of {CALIBRATION_METHODS}, got {method!r}"
        )
    if calibration_frames < 1:
        raise ConfigError(f"calibration frames must be at least 1, got {calibration_frames}")
    if not 0 <= max_dice_drop <= 1:
        raise ConfigError(f"max Dice drop must be between 0 and 1, got {max_dice_drop}")
    if precision == "int8" and calibration is None:
        raise ConfigError(
            "int8 needs calibration frames: --calibration STACK (a few dozen frames like "
            "those you will segment)"
        )
    # A TensorRT build runs the float32 model on the CPU; the engine runs on the GPU.
    reference_backend = choose_backend("auto", "cpu")[0] if backend == "tensorrt" else backend
    tile = parse_tile(options.get("tile", "auto"))
    with Segmenter(
        model, backend=reference_backend, precision="fp32", **{**options, "device": "cpu"}
    ) as reference:
        source = reference.model.path
        if read_engine(source) is not None:
            raise ConfigError(
                f"{source} was built by unetrt build-engine already; build from the "
                f"original ONNX model"
            )
        target = _output_path(output, source, backend, precision)
        recorded = None
        contract = reference.contract
        details: dict[str, Any] = {"source": os.fspath(source), "runtime": _runtime(backend)}
        per_pixel = reference.model.activation_bytes
        if per_pixel is not None:  # for tile="auto" (the float graph's)
            details["activation_bytes"] = per_pixel
        if calibration is not None:
            recorded = _record(reference, calibration, calibration_frames)
            details["calibration"] = {
                "stack": os.fspath(calibration),
                "frames": len(recorded.frames),
                **({"method": method} if precision == "int8" and backend == "onnxruntime" else {}),
            }
        staging = target.parent / f".{target.name}.building-{os.getpid()}"
        try:
            staging.mkdir(parents=True)
        except OSError as exc:
            raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc
        try:
            built_file = staging / target.name
            feeds = None if recorded is None else recorded.feeds
            if backend == "onnxruntime":
                _build_onnxruntime(source, built_file, precision, feeds, method, staging)
            elif backend == "openvino":
                _build_openvino(source, built_file, precision, feeds)
            else:
                details.update(
                    build_tensorrt(
                        source,
                        built_file,
                        contract=contract,
                        inputs=reference.model.backend.inputs,
                        outputs=reference.model.backend.outputs,
                        precision=precision,
                        device=parse_device(device),
                        tile=tile,
                        options=tensorrt,
                        feeds=feeds,
                        method=method,
                        staging=staging,
                    )
                )
            info = EngineInfo(backend, precision, details)
            _write_contract(built_file, backend, contract, info)  # the check opens it so
            accuracy = None
            if recorded is not None:
                checked = {**options, "device": device}
                if backend == "tensorrt":  # tiles within the engine's profile
                    largest = profile_tile(tile, contract.alignment)
                    checked["tile"] = f"{largest[0]}x{largest[1]}"
                accuracy = _compare(recorded, built_file, backend, checked)
                details["accuracy"] = accuracy.to_dict()
                info = EngineInfo(backend, precision, details)
                _write_contract(built_file, backend, contract, info)
            failed = accuracy is not None and accuracy.dice < 1 - max_dice_drop
            if failed and not force:
                raise BuildRefused(
                    f"{precision} {accuracy}: below {1 - max_dice_drop:.4f} "
                    f"(1 - max Dice drop {max_dice_drop}); nothing written. Try more or other "
                    f"calibration frames"
                    + (", --calibrate percentile" if backend == "onnxruntime" else "")
                    + ", or --force to keep it anyway"
                )
            _move_into_place(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return BuildReport(target, info, accuracy, time.perf_counter() - started, failed)


# ------------------------------------------------------------------ choices and names
def _build_backend(backend: str, precision: str, device: str) -> tuple[str, str]:
    """The backend to build for, and the device it runs on (a GPU for TensorRT)."""
    if backend not in BUILD_BACKENDS:
        raise ConfigError(f"backend must be one of {BUILD_BACKENDS}, got {backend!r}")
    if precision not in BUILD_PRECISIONS:
        raise ConfigError(f"precision must be one of {BUILD_PRECISIONS}, got {precision!r}")
    on_gpu = parse_device(device).kind == "cuda"
    if backend == "auto" and (on_gpu or precision == "fp16" or tensorrt_available(device)):
        backend = "tensorrt"  # asked for a GPU, or one is there with TensorRT
    if backend == "tensorrt":
        gpu = check_tensorrt(device)  # one line each: TensorRT missing, GPU missing
        check_precision(tensorrt_version(), precision)
        return backend, str(gpu)
    if on_gpu:
        raise ConfigError(
            f"--backend {backend} builds for the CPU; leave --device out, or build a "
            f"TensorRT engine for {device} with --backend tensorrt"
        )
    if precision == "fp16":
        raise ConfigError(
            "fp16 is a TensorRT precision (--backend tensorrt, on an NVIDIA GPU); on the CPU "
            "use bf16 (--backend openvino) or int8"
        )
    backend, _ = choose_backend(backend, "cpu")
    if backend == "onnxruntime" and precision == "bf16":
        raise ConfigError(
            "ONNX Runtime computes in float32 on the CPU; bf16 is --backend openvino "
            "(unetrt[openvino])"
        )
    if backend == "openvino":
        require("openvino", "openvino")
    return backend, "cpu"


def _output_path(
    output: str | os.PathLike[str] | None, source: Path, backend: str, precision: str
) -> Path:
    suffixes = SUFFIXES[backend]
    if output is None:
        return Path(f"{source.stem}.{backend}-{precision}{suffixes[0]}").absolute()
    target = Path(output).absolute()
    if target.is_dir():
        raise OutputError(
            f"output {output} is a folder; give the file to write, e.g. model{suffixes[0]}"
        )
    if target.suffix.lower() not in suffixes:
        raise ConfigError(
            f"a model built for {backend} is a {' or '.join(suffixes)} file; got output {output}"
        )
    return target


def _runtime(backend: str) -> str:
    if backend == "openvino":
        return f"openvino {require('openvino', 'openvino').__version__}"
    if backend == "tensorrt":
        return f"tensorrt {tensorrt_version()}"
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"


# ------------------------------------------------------------------ calibration frames
class _Recorder:
    """A backend that runs another and keeps a copy of every feed (the tensors the
    pipeline made from the frames: normalized, tiled, batched)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name, self.device, self.layout = inner.name, inner.device, inner.layout
        self.inputs, self.outputs = inner.inputs, inner.outputs
        self.feeds: list[dict[str, np.ndarray]] = []

    def run(
        self, feeds: Mapping[str, np.ndarray], out: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        self.feeds.append({k: np.array(v, np.float32) for k, v in feeds.items()})
        return self.inner.run(feeds, out)

    def accepted(self, name: str | None = None) -> ShapeRange:
        return self.inner.accepted(name)

    def metadata(self) -> dict[str, str]:
        return self.inner.metadata()

    def close(self) -> None:
        self.inner.close()


@dataclass
class _Recorded:
    """The calibration frames, what the float32 model made of them, and its feeds."""

    frames: list[np.ndarray]
    stats: Any
    probabilities: list[np.ndarray]
    masks: list[np.ndarray]
    feeds: list[dict[str, np.ndarray]]


def _record(reference: Segmenter, calibration: str | os.PathLike[str], most: int) -> _Recorded:
    with open_frames(calibration) as source:
        count = len(source)
        if count == 0:
            raise InputError(f"calibration stack {calibration} holds no frames")
        if reference.temporal is not None:  # a state needs consecutive frames
            picks: Sequence[int] = range(min(most, count))
        else:
            picks = sorted({int(i) for i in np.linspace(0, count - 1, min(most, count))})
        frames = [source.read(i) for i in picks]
        stats = reference.stack_statistics(source)
    model = reference.model
    recorder = _Recorder(model.backend)
    model.backend = recorder
    try:
        stream = reference.stream(stats, name=f"calibration stack {calibration}")
        probabilities = [np.array(p) for p in reference.predict_frames(frames, stream)]
    finally:
        model.backend = recorder.inner
    masks = [reference.to_mask(p) for p in probabilities]
    return _Recorded(frames, stats, probabilities, masks, recorder.feeds)


# ------------------------------------------------------------------ builders
def _build_onnxruntime(
    source: Path,
    built: Path,
    precision: str,
    feeds: list[dict[str, np.ndarray]] | None,
    method: str,
    staging: Path,
) -> None:
    import onnxruntime as ort

    if precision == "int8":
        assert feeds is not None
        quantize_qdq(source, built, feeds, staging, method=method, target="onnxruntime")
        return
    optimized = staging / "optimized.onnx"
    so = ort.SessionOptions()
    # Extended, not all: the layout transforms of ORT_ENABLE_ALL tie a saved model to
    # this processor; they are applied again whenever the built model is loaded.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = os.fspath(optimized)
    so.log_severity_level = 3
    ort.InferenceSession(os.fspath(source), so, providers=["CPUExecutionProvider"])
    shutil.move(optimized, built)


def quantize_qdq(
    source: Path,
    built: Path,
    feeds: Sequence[Mapping[str, np.ndarray]],
    staging: Path,
    *,
    method: str,
    target: str,
) -> None:
    """Quantize an ONNX model statically into QuantizeLinear / DequantizeLinear pairs
    with ONNX Runtime's tools, calibrated on recorded feeds.

    ``quant_pre_process`` runs first, with symbolic shape inference skipped (it fails on
    U-Nets of dynamic size); weights are int8 per channel. Per target:

    - ``"onnxruntime"`` (its CPU kernels): uint8 activations with a zero point, int8
      weights; transposed convolutions stay float (no int8 kernel for them on the CPU,
      quantizing them would only add Q/DQ pairs around them).
    - ``"tensorrt"``: symmetric int8 activations and weights (zero points 0, as TensorRT
      needs), biases left float (TensorRT dequantizes no int32), every layer quantized.

    Args:
        source: The float32 model.
        built: The quantized model to write.
        feeds: The calibration feeds, per input name.
        staging: A folder for the pre-processed model.
        method: ``"minmax"``, ``"percentile"`` or ``"entropy"``.
        target: ``"onnxruntime"`` or ``"tensorrt"``.

    Raises:
        ModelError: If ONNX Runtime cannot quantize the model.
    """
    onnx = require("onnx", "build")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = staging / "prepared.onnx"
    try:
        # Symbolic shape inference fails on U-Nets whose height and width are dynamic.
        quant_pre_process(os.fspath(source), os.fspath(prepared), skip_symbolic_shape=True)
    except Exception:  # its ONNX shape inference can fail on foreign graphs: go without
        onnx.save(onnx.load(os.fspath(source)), os.fspath(prepared))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            feed = next(self._feeds, None)
            return None if feed is None else dict(feed)

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if target == "tensorrt":
        activations = QuantType.QInt8
        keep_float: list[str] = []
        extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
    else:
        activations = QuantType.QUInt8
        nodes = onnx.load(os.fspath(prepared)).graph.node
        keep_float = [n.name for n in nodes if n.op_type == "ConvTranspose"]
        extra = {"CalibTensorRangeSymmetric": False}
    try:
        quantize_static(
            os.fspath(prepared),
            os.fspath(built),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=activations,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            nodes_to_exclude=keep_float,
            extra_options={**extra, "CalibMovingAverage": False},
        )
    except Exception as exc:  # ONNX Runtime's tools raise plain exceptions
        raise ModelError(f"ONNX Runtime could not quantize {source}: {exc}") from exc


def _build_openvino(
    source: Path, built: Path, precision: str, feeds: list[dict[str, np.ndarray]] | None
) -> None:
    ov = require("openvino", "openvino")
    try:
        model = ov.Core().read_model(os.fspath(source))
    except Exception as exc:
        raise ModelError(f"OpenVINO cannot read {source}: {exc}") from exc
    if precision == "int8":
        assert feeds is not None
        nncf = require("nncf", "openvino")
        nncf.set_log_level(logging.ERROR)  # its progress and INFO lines are not ours to print
        dataset = nncf.Dataset(feeds)
        # Transposed convolutions stay float: OpenVINO's int8 ConvolutionBackpropData
        # wrecked the default model's masks (Dice 0.73 against float32; 0.998 without).
        keep_float = nncf.IgnoredScope(types=["ConvolutionBackpropData"], validate=False)
        try:
            model = nncf.quantize(model, dataset, subset_size=len(feeds), ignored_scope=keep_float)
        except Exception as exc:
            raise ModelError(f"NNCF could not quantize {source}: {exc}") from exc
    # One name per tensor, the ONNX graph's (OpenVINO may have added others), so that
    # the IR's tensors are named as the contract names them.
    from .backends.openvino import graph_names, port_name

    known = graph_names(source)
    for ports, names in ((model.inputs, known[0]), (model.outputs, known[1])):
        for port in ports:
            port.get_tensor().set_names({port_name(port, names)})
    # Weights stay float32: the precision is the runtime's choice (the recorded hint).
    ov.save_model(model, os.fspath(built), compress_to_fp16=False)


# ------------------------------------------------------------------ contract and check
def _write_onnx_contract(built: Path, contract: ModelContract, info: EngineInfo) -> None:
    onnx = require("onnx", "build")
    proto = onnx.load(os.fspath(built))
    entries = {p.key: p.value for p in proto.metadata_props}
    entries[CONTRACT_KEY] = contract.to_json()
    entries[ENGINE_KEY] = json.dumps(info.to_dict())
    del proto.metadata_props[:]
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, os.fspath(built))


def _write_contract(built: Path, backend: str, contract: ModelContract, info: EngineInfo) -> None:
    """The final contract and engine description: ONNX metadata, or the IR's sidecar."""
    if backend == "onnxruntime":
        _write_onnx_contract(built, contract, info)
        return
    sidecar = sidecar_path(built)
    sidecar.write_text(
        json.dumps({"contract": contract.to_dict(), "engine": info.to_dict()}, indent=2) + "\n",
        encoding="utf-8",
    )


def _compare(
    recorded: _Recorded, built: Path, backend: str, options: Mapping[str, Any]
) -> Accuracy:
    """Segment the calibration frames with the built model (its contract written);
    compare with float32."""
    checked = {k: v for k, v in options.items() if k not in ("halo", "normalization", "threshold")}
    with Segmenter(built, backend=backend, **checked) as candidate:
        stream = candidate.stream(recorded.stats, name="calibration frames")
        scores, largest = [], 0.0
        classes = candidate.classes if candidate.classes > 1 else None
        for i, probs in enumerate(candidate.predict_frames(recorded.frames, stream)):
            mask = candidate.to_mask(probs)
            scores.append(dice(mask, recorded.masks[i], classes))
            largest = max(largest, float(np.max(np.abs(probs - recorded.probabilities[i]))))
    return Accuracy(len(scores), float(np.mean(scores)), float(np.min(scores)), largest)


def _move_into_place(staging: Path, target: Path) -> None:
    """Move the built files next to ``target``; the model file itself last, so that a
    reader that finds it finds its weights and sidecar too."""
    names = sorted(p.name for p in staging.iterdir() if p.is_file())
    keep = {target.name, target.with_suffix(".bin").name, target.name + SIDECAR_SUFFIX}
    try:
        for name in sorted(set(names) & keep, key=lambda n: n == target.name):
            os.replace(staging / name, target.parent / name)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc
